# -*- test-case-name: tests.test_h1_unit -*-
"""Closing a downstream connection so that a hostile peer cannot keep it open.

`loseConnection()` on a TLS transport sends close_notify and then waits for the peer's, with the
TCP connection (and its slot under `max_connections`) held meanwhile: a client that never answers
keeps it forever, and keeps being read (and decrypted) all that time. `Closer` gives the peer a
short grace period once everything we wrote has reached it, then aborts; while our own data is still
draining to a slow reader it waits, as long as the reader makes progress. "Reached" counts the
kernel's send queue too: an abort is a reset, and a reset drops what the peer has not acknowledged.

A connection keeps one timer from its accept to its end: the close takes over the connection's
timer when it is due by the end of the grace (it then fires early and is re-armed for the rest),
which the listener makes likely by arming it first at most `GRACE` after the accept. Moving a
Twisted timer sooner is a linear search of the reactor's heap; a second timer is a second
``callLater``, its heap push and its cancel.
"""
from __future__ import annotations

import sys

from txgate.directwrite import _tcp_transport

try:
    from fcntl import ioctl
    from termios import TIOCOUTQ as _OUTQ  # SIOCOUTQ on a TCP socket (Linux): unsent + unacknowledged
except ImportError:  # pragma: no cover - not POSIX
    _OUTQ = None

GRACE = 2.0  # seconds for the peer's close_notify once our data has left
STALL = 30.0  # seconds without draining progress before a slow reader is cut


def _unsent(transport) -> int:
    """What we wrote that the peer has not received yet: the transport's buffer and the kernel's
    send queue (sent bytes not acknowledged yet: an abort's reset would drop them too)."""
    t = _tcp_transport(transport)
    if t is None:
        return 0
    return len(t.dataBuffer) - t.offset + t._tempDataLen + _kernel_unacked(getattr(t, "socket", None))


def _kernel_unacked(skt) -> int:
    if skt is None or _OUTQ is None:
        return 0
    try:
        return int.from_bytes(ioctl(skt.fileno(), _OUTQ, bytes(4)), sys.byteorder, signed=True)
    except (OSError, ValueError):
        return 0


def abort_connection(transport, fallback=None) -> None:
    """Drop a connection now: abortConnection where the transport has it, else ``fallback``
    (default: loseConnection)."""
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        (fallback or transport.loseConnection)()


class Closer:
    """Close now, abort later: one per connection, cancelled when the connection is gone."""

    __slots__ = ("transport", "clock", "grace", "call", "due", "last_unsent", "stalled_for")

    def __init__(self, transport, clock, grace: float = GRACE) -> None:
        self.transport = transport
        self.clock = clock
        self.grace = grace
        self.call = None  # None, or a timer not yet run nor cancelled (ours alone)
        self.due = 0.0  # the end of the grace: a taken-over timer due before it is re-armed
        self.last_unsent = -1
        self.stalled_for = 0.0

    def close(self, timer=None) -> None:
        """Send close_notify after what is written; abort if the peer does not finish it.

        ``timer``: the connection's own timer (a DelayedCall, its other deadlines now over), taken
        over when it is due by the end of the grace, else cancelled."""
        t = self.transport
        try:
            # TLS waits for a registered producer before closing: unregister it first.
            if getattr(t, "producer", None) is not None or getattr(t, "_producer", None) is not None:
                t.unregisterProducer()
        except Exception:
            pass
        t.loseConnection()
        if timer is not None and timer.active():
            if self.call is None:
                due = self.due = self.clock.seconds() + self.grace
                if timer.getTime() <= due:
                    timer.func = self._check
                    self.call = timer
                    return
            timer.cancel()
        if self.call is None:
            self.call = self.clock.callLater(self.grace, self._check)

    def abort(self) -> None:
        """Drop the connection now."""
        self.cancel()
        abort_connection(self.transport)

    def _check(self) -> None:
        self.call = None
        clock = self.clock
        left = self.due - clock.seconds()
        if left > 0:  # the connection's timer, taken over: due before the grace's end
            self.call = clock.callLater(left, self._check)
            return
        unsent = _unsent(self.transport)
        if unsent == 0:
            self.abort()
            return
        if self.last_unsent >= 0 and unsent >= self.last_unsent:
            self.stalled_for += self.grace
            if self.stalled_for >= STALL:
                self.abort()
                return
        else:
            self.stalled_for = 0.0
        self.last_unsent = unsent
        self.call = clock.callLater(self.grace, self._check)

    def cancel(self) -> None:
        """The connection is gone: nothing left to do."""
        call, self.call = self.call, None
        if call is not None:  # (not run: _check clears it first)
            call.cancel()
