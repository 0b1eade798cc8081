# -*- test-case-name: tests.test_eventloop -*-
"""The epoll reactor's event dispatch, lean for txgate's own TCP connections.

Twisted's ``EPollReactor.doPoll`` hands every event to ``log.callWithLogger(selectable,
_doReadOrWrite, ...)``: per read, the transport's ``logPrefix()``, a copy of the legacy log context
with ``system`` set, and three more frames of ``twisted.python.context``, ~12 Python calls around
each read of every connection. That context only reaches legacy ``twisted.python.log`` events (txgate
logs through ``twisted.logger``, which never reads it), i.e. Twisted's own error lines.

`install` replaces the running reactor's ``doIteration`` (the same poll) with one that, for a
read event (``EPOLLIN``, with or without a hang-up or error flag, not ``EPOLLOUT``) on a selectable
of a class marked ``_txgate_lean`` (txgate's TCP transports: accepted connections on the listeners,
upstream connections, see ``txgate.directwrite``; and txgate's listening ports, whose accept loop
handles its own errors, see ``txgate.runtime.accept``), calls ``doRead`` directly, with
``_doReadOrWrite``'s checks and error handling: an exception from the read is logged with
``log.err`` inside the connection's log context, exactly as before. A disconnection runs in it too,
except an accepted connection's (``_txgate_lost``, see ``txgate.runtime.accept``): nothing on its
way (the TLS protocol, the listener's, HTTP's, Twisted's TCP teardown) logs through the legacy
log, so it runs without the context (~10 calls and the log prefix's strings less per connection),
and an exception escaping it is logged in that context, as ``callWithLogger`` logs it, and the
loop goes on. Every other event (writes, hang-ups alone, other protocols' sockets) goes through
Twisted's own path unchanged. It also counts its polls (``_txgate_polls``), which the listening
ports read to tell a burst of connections from one at a time.

Around each poll, Twisted's main loop calls ``runUntilCurrent`` and ``timeout``: two passes over the
new timed calls, two clock reads, ``min`` and ``max``, ~8 calls per loop (a new TLS connection takes
~5 loops). `install` also gives the reactor a ``runUntilCurrent`` that hands over to Twisted's
whenever there is anything to run (calls from threads, a timed call due, a stop, the clean-up of
cancelled calls) and otherwise only reads the clock once, and a ``timeout`` that reuses that read;
that ``runUntilCurrent`` also ends the accepted connections whose ``loseConnection`` had nothing left
to send (``txgate.runtime.accept``) instead of a poll for writability and Twisted's write dispatch;
and, when it is not running yet, a ``mainLoop`` whose failure handler (log, go on) wraps the turns
instead of each turn.

Only an ``EPollReactor`` whose
``doIteration`` is Twisted's own gets it; any other reactor is left alone.
"""
from __future__ import annotations

import errno
import sys
from types import MethodType

from twisted.python import log

try:
    from twisted.internet.epollreactor import EPollReactor
    from select import EPOLLIN, EPOLLOUT

    _run_until_current = EPollReactor.runUntilCurrent
    _reactor_timeout = EPollReactor.timeout
    try:  # what ReactorBase.mainLoop logs with
        from twisted.internet.base import _log as _base_log, _topHandler as _top_handler
    except ImportError:  # pragma: no cover - another Twisted: its own main loop
        _top_handler = None
except ImportError:  # pragma: no cover - not Linux
    EPollReactor = None
    EPOLLIN, EPOLLOUT = 1, 4

_READ_ONLY = EPOLLIN | EPOLLOUT  # (event & _READ_ONLY) == EPOLLIN: a read, no write


def _lean_do_poll(self, timeout) -> None:
    """``EPollReactor.doPoll``, with a read on a lean transport dispatched without the log context."""
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    self._txgate_polls += 1  # listening ports tell a burst (readable poll after poll) by it
    selectables = self._selectables
    drdw = self._doReadOrWrite
    call_with_logger = log.callWithLogger
    lean = _LEAN
    for fd, event in events:
        try:
            selectable = selectables[fd]
        except KeyError:
            continue
        # EPOLLIN with or without EPOLLHUP/EPOLLERR (a reset): _doReadOrWrite would only doRead too.
        if (event & _READ_ONLY) != EPOLLIN or (selectable.__class__ not in lean and not _learn(selectable)) \
                or selectable.fileno() == -1:
            call_with_logger(selectable, drdw, selectable, fd, event)
            continue
        in_read = False  # as in _doReadOrWrite: True only once doRead has returned
        try:
            why = selectable.doRead()
            in_read = True
        except BaseException:
            why = sys.exc_info()[1]
            call_with_logger(selectable, log.err)  # in the connection's log context, as Twisted logs it
        if why:
            lost = getattr(selectable, "_txgate_lost", None)  # an accepted connection's own, leaner
            if lost is None:
                call_with_logger(selectable, self._disconnectSelectable, selectable, why, in_read)
                continue
            try:  # (no log context: see the module's docstring)
                lost(why, in_read)
            except KeyboardInterrupt:
                raise
            except BaseException:
                call_with_logger(selectable, log.err)  # as callWithLogger logs it: in the connection's context


_LEAN: set[type] = set()  # the classes marked _txgate_lean seen so far (a set lookup per event, no getattr)


def _learn(selectable) -> bool:
    """Is ``selectable``'s class marked ``_txgate_lean``? (Remembered when it is.)"""
    if getattr(selectable.__class__, "_txgate_lean", False):
        _LEAN.add(selectable.__class__)
        return True
    return False


_LONGEST = 2147483  # ReactorBase.timeout's cap: epoll_wait's timeout is an int of milliseconds


def _run_due(self) -> None:
    """``ReactorBase.runUntilCurrent`` when there is something to run (calls from threads, a timed call
    due, a stop, the heap's clean-up of cancelled calls); else one clock read, kept for `_timeout`."""
    if self._newTimedCalls:
        self._insertNewDelayedCalls()
    pending = self._pendingTimedCalls
    now = self.seconds()
    cancelled = self._cancellations
    if self.threadCallQueue or self._justStopped or (pending and pending[0].time <= now) \
            or (cancelled > 50 and cancelled > len(pending) >> 1):
        self._txgate_now = None  # the calls take time: timeout() reads the clock again
        _run_until_current(self)
    else:
        self._txgate_now = now
    if self._txgate_closing:
        self._txgate_now = None
        _end_closed(self)


def _end_closed(self) -> None:
    """End the accepted connections whose ``loseConnection`` had nothing left to send, since the last
    turn (txgate.runtime.accept): before the next poll, as their end would have come from it; an
    exception is logged in the connection's log context, as Twisted's write dispatch logs it."""
    while self._txgate_closing:
        closing, self._txgate_closing = self._txgate_closing, []
        for transport in closing:
            try:
                transport._txgate_closed()
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.callWithLogger(transport, log.err)


def _timeout(self) -> float | None:
    """``ReactorBase.timeout`` right after `runUntilCurrent` found nothing to do: from the clock read it
    made (a few microseconds old), and without a second pass over the new timed calls (none came)."""
    now, self._txgate_now = self._txgate_now, None
    if now is None or self._newTimedCalls:
        return _reactor_timeout(self)
    pending = self._pendingTimedCalls
    if not pending:
        return None
    delay = pending[0].time - now
    return 0 if delay < 0 else (delay if delay < _LONGEST else _LONGEST)


def _main_loop(self) -> None:
    """``ReactorBase.mainLoop`` with its failure handler around the turns rather than around each turn
    (two calls less per turn; the same outcome: an exception is logged and the loop goes on)."""
    while self._started:
        with _top_handler:
            while self._started:
                self.runUntilCurrent()
                t2 = self.timeout()
                t = self.running and t2
                self.doIteration(t)
    _base_log.info("Main loop terminated.")


def install(reactor) -> bool:
    """Give ``reactor`` the lean dispatch when it is Twisted's epoll reactor; True when installed."""
    if EPollReactor is None or not isinstance(reactor, EPollReactor):
        return False
    current = getattr(reactor, "doIteration", None)
    if getattr(current, "__func__", None) is _lean_do_poll:
        return True
    if getattr(current, "__func__", None) is not EPollReactor.doPoll:
        return False  # someone else's loop: leave it
    reactor._txgate_polls = 0
    reactor._txgate_now = None
    reactor._txgate_closing = []  # accepted connections that end at the end of the turn (txgate.runtime.accept)
    reactor.doIteration = MethodType(_lean_do_poll, reactor)
    reactor.runUntilCurrent = MethodType(_run_due, reactor)
    reactor.timeout = MethodType(_timeout, reactor)
    if _top_handler is not None and not reactor.running:  # (a loop already running keeps its own)
        reactor.mainLoop = MethodType(_main_loop, reactor)
    return True


def uninstall(reactor) -> None:
    """Back to Twisted's own dispatch (tests)."""
    if getattr(getattr(reactor, "doIteration", None), "__func__", None) is _lean_do_poll:
        del reactor.doIteration
        del reactor.runUntilCurrent
        del reactor.timeout
        reactor.__dict__.pop("mainLoop", None)
        _end_closed(reactor)
        del reactor._txgate_closing  # lean transports close Twisted's way again


__all__ = ["install", "uninstall"]
