# -*- test-case-name: tests.test_accept -*-
"""The accept loop of txgate's listening ports and the TCP transport of what they accept, lean.

Per new connection, Twisted's ``tcp.Port.doRead`` runs in the port's legacy log context
(``callWithLogger``), makes a buffering Logger (``_BuffersLogs``), accepts through a generator and
``socket.accept()`` (which re-reads the listening socket's family and type as enums), and accepts
until ``EAGAIN``: a listener that gets connections one at a time pays a failed ``accept4`` every
other readiness. The ``tcp.Server`` it builds formats a log prefix and a repr nobody reads, and
registers with the reactor (and leaves it) through four layers of calls.

`lean_listen` switches a listening port, once, to `_LeanPort`'s loop (only on the epoll reactor
with txgate's event dispatch, `txgate.runtime.eventloop`, which calls it without the log context):

- one connection per readiness event, as nginx does by default; while the listener is readable poll
  after poll (a burst) the batch doubles, up to `MAX_BATCH`, and it falls back to what was accepted
  once the backlog runs dry. Every error but ``EAGAIN`` (``EMFILE`` and its reserved descriptor,
  ``EPERM``, ``ECONNABORTED``...) goes to Twisted's own loop, which handles and logs it as before;
- the accepted socket is the C socket object (``_socket.socket``, what ``socket.socket`` wraps in
  Python for ``makefile``, ``dup`` and enum-valued ``family``/``type``, none of which a transport
  uses); it gets txgate's transport class (`txgate.directwrite`) with a lean constructor (the same
  state; the log prefix and repr made when asked) and a lean ``connectionLost`` (the same steps; the
  reactor's bookkeeping in one step instead of two trips through ``removeReader`` and
  ``removeWriter``, also when the reactor's dispatch ends the connection: ``_txgate_lost``), a lean
  ``loseConnection`` (nothing left to write: the end comes at the end of the reactor's turn, not
  after a poll for writability), and no ``shutdown()`` before ``close()`` (the socket is
  close-on-exec and never shared: the close alone ends the connection, as Twisted's own comment on
  it says).
"""
from __future__ import annotations

import _socket
import socket

from twisted.internet import address, error, tcp
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python import log as legacy
from twisted.python.failure import Failure

from txgate.directwrite import derived_class

MAX_BATCH = 64  # connections accepted per readiness event at most (a burst)


# -- the accepted connection's transport -------------------------------------------------------------
def _init(self, skt, protocol, client, server, sessionno, reactor) -> None:
    """``tcp.Server.__init__`` (with ``Connection``'s and ``FileDescriptor``'s), strings made on demand."""
    self.reactor = reactor
    self._tempDataBuffer = []
    self._tempDataLen = 0
    self.socket = skt
    skt.setblocking(False)
    self.fileno = fileno = skt.fileno
    self.protocol = protocol
    if len(client) != 2:
        self._addressType = address.IPv6Address
    self.server = server
    self.client = client
    self.sessionno = sessionno
    self.hostname = client[0]
    fd = fileno()
    reads = reactor._reads
    if fd in reads or fd in reactor._writes:  # pragma: no cover - a stale registration: Twisted's path
        reactor.addReader(self)
    else:
        reactor._poller.register(fd, _EPOLLIN)
        reads.add(fd)
        reactor._selectables[fd] = self
    self.connected = 1


def _connection_lost(self, reason) -> None:
    """``tcp.Connection.connectionLost`` (with ``FileDescriptor``'s): the same steps, fewer calls."""
    if "socket" not in self.__dict__:
        return  # never twice (e.g. an abort, then an exception reaching the reactor)
    self.disconnected = 1
    self.connected = 0
    producer = self.producer
    if producer is not None:
        producer.stopProducing()
        self.producer = None
    skt = self.socket
    fd = skt.fileno()
    reactor = self.reactor
    reads, writes = reactor._reads, reactor._writes
    if fd in reads or fd in writes:
        reactor._poller.unregister(fd)
        reads.discard(fd)
        writes.discard(fd)
        reactor._selectables.pop(fd, None)
    if issubclass(reason.type, error.ConnectionAborted):
        self._closeSocket(False)  # SO_LINGER 0: a reset, as Twisted aborts
    else:
        try:
            skt.close()
        except OSError:  # pragma: no cover - as Twisted's _closeSocket
            pass
    protocol = self.protocol
    del self.protocol
    del self.socket
    del self.fileno
    try:
        protocol.connectionLost(reason)
    except BaseException:
        _log_prefix(self, protocol)  # the line that logs it names the protocol, as Twisted's prefix does
        raise


_LOST = {error.ConnectionDone: Failure(error.ConnectionDone()), error.ConnectionLost: Failure(error.ConnectionLost())}


def _lost(self, why, in_read: bool) -> None:
    """The reactor's ``_disconnectSelectable`` for this transport (``txgate.runtime.eventloop`` calls it,
    without the log context): the same outcome, the reactor's bookkeeping left to the one-step
    ``connectionLost``, also after the peer's clean end of a read when the protocol does not want
    half-closes (what ``readConnectionLost`` would find, after a trip through ``removeReader``)."""
    f = _LOST.get(why.__class__)
    if f is None:
        f = Failure(why)
    elif in_read and why.__class__ is error.ConnectionDone \
            and IHalfCloseableProtocol(self.__dict__.get("protocol"), None):
        # A protocol that wants half-closes keeps writing (Twisted's path).
        self.reactor.removeReader(self)
        self.readConnectionLost(f)
        return
    self.connectionLost(f)


def _lose_connection(self) -> None:
    """``loseConnection``: with nothing left to write and no producer (the usual case: writes go straight
    to the socket, `txgate.directwrite`), the connection ends once this reactor turn's work is done
    (``txgate.runtime.eventloop`` runs `_closed` then), with Twisted's outcome (a FIN, ``ConnectionDone``)
    but without asking epoll for writability, a poll for it and Twisted's write dispatch; else
    Twisted's way."""
    if not self.connected or self.disconnecting:
        return
    closing = getattr(self.reactor, "_txgate_closing", None)
    if closing is None or self.TLS or self._writeDisconnected or self.producer is not None \
            or self._tempDataBuffer or len(self.dataBuffer) != self.offset:
        self.__class__.__bases__[0].loseConnection(self)
        return
    self.disconnecting = 1
    closing.append(self)


def _closed(self) -> None:
    """The end `_lose_connection` left for the end of the turn: the connection is lost, unless it is
    gone or aborted meanwhile, or was written to (then Twisted's way: the rest is sent first)."""
    if "socket" not in self.__dict__ or self._aborting:
        return
    if self.producer is not None or self._tempDataBuffer or len(self.dataBuffer) != self.offset:
        self.stopReading()
        self.startWriting()
        return
    self.connectionLost(_LOST[error.ConnectionDone])


def _log_prefix(self, protocol=None) -> str:
    prefix = self.__dict__.get("logstr")
    if prefix is None:
        if protocol is None:
            protocol = self.__dict__.get("protocol")
        name = self._getLogPrefix(protocol) if protocol is not None else "-"
        prefix = self.logstr = f"{name},{self.sessionno},{self.hostname}"
    return prefix


def _repr(self) -> str:
    protocol = self.__dict__.get("protocol")
    return f"<{protocol.__class__.__name__ if protocol is not None else '-'} #{self.sessionno} on " \
           f"{self.server._realPortNumber if self.server is not None else '?'}>"


_ACCEPTED: dict[type, type] = {}


def accepted_class(cls: type) -> type:
    """The lean subclass of a listening port's transport class (txgate's direct-write ``tcp.Server``)."""
    if cls.__dict__.get("_txgate_accepted"):
        return cls
    return _ACCEPTED.get(cls) or derived_class(_ACCEPTED, cls, {
        "__init__": _init, "connectionLost": _connection_lost, "_txgate_lost": _lost, "logPrefix": _log_prefix,
        "loseConnection": _lose_connection, "_txgate_closed": _closed, "__repr__": _repr,
        "_txgate_accepted": True})


# -- the listening port --------------------------------------------------------------------------------
def _do_read(self) -> None:
    """Accept this readiness event's connections (see the module's docstring); never raises."""
    polls = self.reactor._txgate_polls
    if polls == self._txgate_seen + 1:  # readable in the previous poll too: a burst
        batch = min(self._txgate_batch * 2, MAX_BATCH)
    else:
        batch = 1
    self._txgate_seen = polls
    listener = self.socket
    family, kind, proto = self._txgate_sockargs
    factory = self.factory
    accepted = 0
    while accepted < batch:
        try:
            fd, addr = listener._accept()
        except BlockingIOError:
            break
        except OSError:
            # EMFILE, EPERM, ECONNABORTED...: Twisted's loop meets it again, handles it and logs it (in the
            # port's log context, as Twisted's dispatch runs it).
            self._txgate_batch = 1
            legacy.callWithLogger(self, self.__class__.__bases__[0].doRead, self)
            return
        accepted += 1
        try:
            skt = _socket.socket(family, kind, proto, fd)
        except OSError:  # pragma: no cover - the descriptor vanished meanwhile
            continue
        try:
            if len(addr) == 4:  # IPv6: with its scope id
                host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                addr = (host[0], *addr[1:])
            protocol = factory.buildProtocol(self._addressType("TCP", *addr))
            if protocol is None:  # refused (max_connections)
                skt.close()
                continue
            s = self.sessionno
            self.sessionno = s + 1
            protocol.makeConnection(self.transport(skt, protocol, addr, self, s, self.reactor))
        except Exception:
            legacy.callWithLogger(self, legacy.err)  # as Twisted's loop logs it (log.deferr), in the port's context
            break
    self._txgate_batch = max(accepted, 1)


_PORTS: dict[type, type] = {}


def lean_listen(port) -> bool:
    """Give a listening ``tcp.Port`` the lean accept loop and its connections the lean transport (once per
    port, on the epoll reactor with txgate's dispatch installed); True when it has them."""
    reactor = getattr(port, "reactor", None)
    if not isinstance(port, tcp.Port) or getattr(reactor, "_txgate_polls", None) is None:
        return False
    cls = port.__class__
    if not cls.__dict__.get("_txgate_lean"):
        sock = port.socket
        port._txgate_sockargs = (int(sock.family), int(sock.type), sock.proto)
        port._txgate_seen = -2
        port._txgate_batch = 1
        port.__class__ = _PORTS.get(cls) or derived_class(_PORTS, cls, {"doRead": _do_read, "_txgate_lean": True})
    port.transport = accepted_class(port.transport)
    return True


try:
    from select import EPOLLIN as _EPOLLIN
except ImportError:  # pragma: no cover - not Linux: lean_listen never applies (no epoll reactor)
    _EPOLLIN = 1

__all__ = ["MAX_BATCH", "accepted_class", "lean_listen"]
