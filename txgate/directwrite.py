# -*- test-case-name: tests.test_h1_unit -*-
"""Send on the socket at once when nothing is queued (Twisted defers every write a turn).

Twisted's TCP transport queues each write and sends it on the next reactor turn, after an
epoll re-registration for writability and another one to unregister: four syscalls and two
event dispatches per response on a keep-alive connection. When the transport's buffer is
empty, sending right away is equivalent (same bytes, same order); whatever the kernel does
not take goes through Twisted's normal buffered path, with its producer flow control.

The subclass is also the mark of txgate's own TCP transports: their reads skip Twisted's per-event
log context (``txgate.runtime.eventloop``), and a read is one frame (`_read`: ``doRead`` and
``_dataReceived`` of ``tcp.Connection`` in one, with their outcomes). Listening ports make accepted
connections of it directly (`lean_accepts`).
"""
from __future__ import annotations

import socket
import sys
from errno import EWOULDBLOCK

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST


def _tcp_transport(transport):
    """The TCP transport under a protocol's transport (through TLS wrappers), or None."""
    t = transport
    for _ in range(4):
        if isinstance(t, tcp.Connection):
            return t
        t = getattr(t, "transport", None)
        if t is None:
            return None
    return None


def no_delay(transport) -> None:
    """Responses go out at once: no Nagle (it would hold one behind unacknowledged TLS
    tickets), and a send on the socket right away when nothing is queued."""
    try:
        if transport.transport._txgate_nodelay:  # the TCP transport under TLS, in its two attribute reads
            return
    except AttributeError:
        pass
    t = _tcp_transport(transport)
    if getattr(t, "_txgate_nodelay", False):
        return  # accepted from a listening socket with TCP_NODELAY (inherited), direct writes already
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except (OSError, AttributeError):
            pass
    enable_direct_writes(transport)


def _direct_write(self, data: bytes) -> None:
    """The TCP transport's write: straight to the socket when nothing is queued, else buffered."""
    if (
        self.connected
        and not self.disconnecting
        and not self._writeDisconnected
        and not self._tempDataBuffer
        # nothing queued: Twisted empties dataBuffer once it is all sent (a sent one is b"" or offset at its end)
        and (not self.dataBuffer or len(self.dataBuffer) == self.offset)
        and data.__class__ is bytes
    ):
        try:
            sent = self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # let the buffered path meet the error and report it as Twisted does
        if sent == len(data):
            return
        data = data[sent:]
    self._buffered_write(data)


def _read(self):
    """``tcp.Connection.doRead`` and its ``_dataReceived`` in one frame, with their outcomes: nothing on
    ``EAGAIN``, ``ConnectionLost`` on any other socket error (a reset), ``ConnectionDone`` at the peer's
    end, else the bytes to the protocol."""
    try:
        data = self.socket.recv(self.bufferSize)
    except OSError as se:
        if se.args[0] == EWOULDBLOCK:
            return None
        return CONNECTION_LOST
    if data:
        self.protocol.dataReceived(data)
        return None
    return CONNECTION_DONE


_DIRECT: dict[type, type] = {}  # TCP transport class -> its subclass with _direct_write


def derived_class(cache: dict, base: type, attrs: dict) -> type:
    """Make the subclass of ``base`` with ``attrs`` and keep it in ``cache`` (one class per base: callers
    look there first, so a connection never builds one)."""
    sub = cache[base] = type(base.__name__, (base,), {**attrs, "__module__": base.__module__,
                                                      "__doc__": base.__doc__})
    return sub


def _direct_class(cls: type) -> type:
    if cls.__dict__.get("_txgate_direct"):
        return cls
    sub = _DIRECT.get(cls)
    if sub is not None:
        return sub
    # Reads dispatched without Twisted's log context (txgate.runtime.eventloop): _txgate_lean.
    attrs = {"write": _direct_write, "_buffered_write": cls.write, "_txgate_direct": True, "_txgate_lean": True}
    if cls.doRead is tcp.Connection.doRead and cls._dataReceived is tcp.Connection._dataReceived:
        attrs["doRead"] = _read  # (not over a subclass's own read, e.g. a UNIX socket's with descriptors)
    return derived_class(_DIRECT, cls, attrs)


def _nodelay_class(cls: type) -> type:
    """The direct-write class of ``cls`` whose sockets have TCP_NODELAY already (inherited at accept)."""
    direct = _direct_class(cls)
    return _NODELAY.get(direct) or derived_class(_NODELAY, direct, {"_txgate_nodelay": True})


_NODELAY: dict[type, type] = {}


def lean_accepts(port) -> None:
    """Connections a listening port accepts get the direct-write transport class from the start
    (no class switch per connection; their reads are dispatched lean by ``txgate.runtime.eventloop``),
    and TCP_NODELAY from the listening socket (Linux copies it to accepted sockets: no setsockopt each)."""
    cls = getattr(port, "transport", None)
    if not (isinstance(cls, type) and issubclass(cls, tcp.Connection)):
        return
    if cls.__dict__.get("_txgate_nodelay"):
        return
    sock = getattr(port, "socket", None)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Linux copies it to the sockets accept() returns (elsewhere they still get it one by one).
        inherited = sys.platform.startswith("linux") and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    except (AttributeError, OSError):
        inherited = False
    port.transport = _nodelay_class(cls) if inherited else _direct_class(cls)


def enable_direct_writes(transport) -> None:
    """Make writes on this connection's TCP transport try the socket first.

    The transport's class is switched to a subclass with that write (no closure per connection)."""
    t = _tcp_transport(transport)
    if t is None or getattr(t, "_txgate_direct", False):
        return
    t.__class__ = _direct_class(t.__class__)
