"""txgate.runtime.accept: the lean accept loop of txgate's listening ports and the transport it builds,
over real sockets on Twisted's epoll reactor driven one poll at a time."""
from __future__ import annotations

import errno
import socket

import pytest
from twisted.internet import error
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from txgate.directwrite import lean_accepts
from txgate.runtime import eventloop
from txgate.runtime.accept import MAX_BATCH, lean_listen


class Recorder(Protocol):
    def __init__(self, factory) -> None:
        self.factory = factory
        self.data = b""
        self.reason = None

    def connectionMade(self) -> None:
        self.factory.made.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.reason = reason


class Recording(Factory):
    def __init__(self, refuse: bool = False) -> None:
        self.made: list[Recorder] = []
        self.addrs = []
        self.refuse = refuse

    def buildProtocol(self, addr):
        self.addrs.append(addr)
        return None if self.refuse else Recorder(self)


class CountingSocket:
    """The listening socket, with every accept's outcome recorded (and errors to raise first)."""

    def __init__(self, sock, errors=()) -> None:
        self.sock = sock
        self.calls: list[str] = []
        self.errors = list(errors)

    def _accept(self):
        if self.errors:
            self.calls.append("error")
            raise self.errors.pop(0)
        try:
            pair = self.sock._accept()
        except BlockingIOError:
            self.calls.append("EAGAIN")
            raise
        self.calls.append("ok")
        return pair

    def accept(self):  # Twisted's own loop (the fallback on errors)
        self._accept_via_python = True
        fd, addr = self._accept()
        return socket.socket(self.sock.family, self.sock.type, self.sock.proto, fd), addr

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.fixture
def reactor():
    r = EPollReactor()
    eventloop.install(r)
    yield r
    for s in list(r.getReaders()) + list(r.getWriters()):
        r.removeReader(s)
        r.removeWriter(s)
    r._poller.close()


def _listen(reactor, factory, errors=()):
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    lean_accepts(port)
    assert lean_listen(port) is True
    port.socket = CountingSocket(port.socket, errors)
    return port


def _poll(reactor, times: int = 1) -> None:
    for _ in range(times):
        reactor.runUntilCurrent()
        reactor.doIteration(0.5)


def _client(port) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port.getHost().port))


def _settle(reactor, until, limit: int = 50) -> None:
    for _ in range(limit):
        if until():
            return
        reactor.runUntilCurrent()  # abortConnection's callLater(0)
        reactor.doIteration(0.05)
    raise AssertionError("not reached")


def test_connections_one_at_a_time_are_accepted_without_a_failed_accept(reactor):
    factory = Recording()
    port = _listen(reactor, factory)
    clients = []
    for i in range(5):
        clients.append(_client(port))
        _settle(reactor, lambda: len(factory.made) == i + 1)
        _poll(reactor)  # an idle poll in between: the next connection is not a burst
    assert port.socket.calls == ["ok"] * 5  # never an accept4 that hears EAGAIN
    for c in clients:
        c.close()
    port.stopListening()


def test_a_burst_is_accepted_in_growing_batches(reactor):
    factory = Recording()
    port = _listen(reactor, factory)
    clients = [_client(port) for _ in range(12)]
    _settle(reactor, lambda: len(factory.made) == 12)
    calls = port.socket.calls
    assert calls.count("ok") == 12 and calls.count("EAGAIN") <= 1
    assert calls[:3] == ["ok", "ok", "ok"]  # 1, then 2 (readable again), then 4...
    for c in clients:
        c.close()
    port.stopListening()
    assert MAX_BATCH >= 8


def _accepted(reactor, factory=None):
    """A listening port, a client connected to it and the protocol of the accepted connection."""
    factory = factory or Recording()
    port = _listen(reactor, factory)
    client = _client(port)
    _settle(reactor, lambda: factory.made)
    return factory, port, client, factory.made[0]


def test_an_accepted_connection_reads_and_is_lost_like_twisteds(reactor):
    factory, port, client, proto = _accepted(reactor)
    t = proto.transport
    assert t._txgate_accepted and t._txgate_direct and t.connected
    assert factory.addrs[0].host == "127.0.0.1" and factory.addrs[0].port == client.getsockname()[1]
    assert t.getPeer().port == client.getsockname()[1] and t.getHost().port == port.getHost().port
    assert t.logPrefix() == f"Recorder,0,127.0.0.1" and repr(t) == f"<Recorder #0 on {port.getHost().port}>"
    assert t in reactor.getReaders()
    client.sendall(b"hello")
    _settle(reactor, lambda: proto.data == b"hello")
    t.write(b"back")
    assert client.recv(10) == b"back"
    client.close()
    _settle(reactor, lambda: proto.reason is not None)
    assert proto.reason.check(error.ConnectionDone, error.ConnectionLost)
    assert t not in reactor.getReaders() and t not in reactor.getWriters()
    assert not t.connected and t.disconnected and t.fileno() == -1
    assert t.logPrefix() == "Recorder,0,127.0.0.1"  # still there for late log lines
    t.connectionLost(proto.reason)  # a second time: nothing
    port.stopListening()


def test_a_lost_connection_closes_its_socket_with_a_fin_and_an_aborted_one_with_a_reset(reactor):
    factory = Recording()
    port = _listen(reactor, factory)
    closing, aborting = _client(port), _client(port)
    _settle(reactor, lambda: len(factory.made) == 2)
    by_port = {p.transport.client[1]: p for p in factory.made}
    by_port[closing.getsockname()[1]].transport.loseConnection()
    by_port[aborting.getsockname()[1]].transport.abortConnection()
    _settle(reactor, lambda: all(p.reason is not None for p in factory.made))
    assert closing.recv(10) == b""  # orderly: FIN
    with pytest.raises(ConnectionResetError):
        aborting.recv(10)
    assert by_port[aborting.getsockname()[1]].reason.check(error.ConnectionAborted)
    closing.close()
    aborting.close()
    port.stopListening()


def test_a_refused_connection_is_closed(reactor):
    factory = Recording(refuse=True)
    port = _listen(reactor, factory)
    client = _client(port)
    client.settimeout(5)
    _settle(reactor, lambda: factory.addrs)
    assert client.recv(10) == b""
    assert not factory.made and not [s for s in reactor.getReaders() if hasattr(s, "protocol")]
    client.close()
    port.stopListening()


def test_an_accept_error_goes_to_twisteds_loop_which_handles_it(reactor):
    factory = Recording()
    port = _listen(reactor, factory, errors=[OSError(errno.EPERM, "netfilter said no")])
    client = _client(port)
    _settle(reactor, lambda: factory.made)
    # The lean loop met EPERM, Twisted's loop skipped it (as it does) and accepted the connection.
    assert port.socket.calls[:2] == ["error", "ok"] and port.socket._accept_via_python
    client.close()
    port.stopListening()


def test_only_twisteds_epoll_reactor_with_txgates_dispatch_gets_it():
    r = EPollReactor()
    try:
        port = r.listenTCP(0, Recording(), interface="127.0.0.1")
        assert lean_listen(port) is False  # no lean dispatch installed: Twisted's loop
        assert not getattr(port, "_txgate_lean", False)
        port.stopListening()
    finally:
        r._poller.close()
    m = MemoryReactorClock()
    assert lean_listen(m.listenTCP(0, Recording())) is False


def test_a_reset_ends_the_connection_in_one_step(reactor):
    import struct

    factory, port, client, proto = _accepted(reactor)
    t = proto.transport
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    _settle(reactor, lambda: proto.reason is not None)
    assert proto.reason.check(error.ConnectionLost)
    assert t not in reactor.getReaders() and t not in reactor.getWriters() and not t.connected
    port.stopListening()


def test_a_half_closing_protocol_still_writes_after_the_peers_end(reactor):
    from zope.interface import implementer
    from twisted.internet.interfaces import IHalfCloseableProtocol

    @implementer(IHalfCloseableProtocol)
    class HalfClose(Recorder):
        def readConnectionLost(self) -> None:
            self.transport.write(b"bye")
            self.transport.loseConnection()

        def writeConnectionLost(self) -> None:
            pass

    class Factory_(Recording):
        def buildProtocol(self, addr):
            return HalfClose(self)

    factory, port, client, proto = _accepted(reactor, Factory_())
    client.shutdown(socket.SHUT_WR)
    _settle(reactor, lambda: proto.reason is not None)
    assert client.recv(10) == b"bye"
    assert proto.reason.check(error.ConnectionDone)
    client.close()
    port.stopListening()


def test_a_clean_end_reaches_the_protocol_as_done_without_the_legacy_log_context(reactor):
    from twisted.python import context, log

    systems = []

    class Recording_(Recording):
        def buildProtocol(self, addr):
            proto = Recorder(self)
            lost = proto.connectionLost

            def connection_lost(reason=None):
                systems.append(context.get(log.ILogContext)["system"])
                lost(reason)

            proto.connectionLost = connection_lost
            return proto

    factory, port, client, proto = _accepted(reactor, Recording_())
    t = proto.transport
    client.shutdown(socket.SHUT_WR)  # a FIN; the protocol does not want half-closes
    _settle(reactor, lambda: proto.reason is not None)
    assert proto.reason.check(error.ConnectionDone) and systems == ["-"]
    assert t not in reactor.getReaders() and t not in reactor.getWriters() and not t.connected
    assert client.recv(10) == b""  # closed on our side too
    client.close()
    port.stopListening()


class Failing(Recorder):
    def connectionLost(self, reason=None) -> None:
        Recorder.connectionLost(self, reason)
        raise ValueError("teardown failed")


class FailingFactory(Recording):
    def buildProtocol(self, addr):
        return Failing(self)


def _legacy_errors(end) -> list[dict]:
    """The legacy log's error events while ``end()`` runs."""
    from twisted.python import log

    seen = []
    log.addObserver(seen.append)
    try:
        end()
    finally:
        log.removeObserver(seen.append)
    return [e for e in seen if e.get("isError")]


def test_an_error_ending_a_connection_is_logged_with_its_prefix_and_the_loop_goes_on(reactor):
    factory, port, client, proto = _accepted(reactor, FailingFactory())
    client.close()
    errors = _legacy_errors(lambda: (_settle(reactor, lambda: proto.reason is not None), _poll(reactor)))
    assert len(errors) == 1 and errors[0]["failure"].check(ValueError)
    assert errors[0]["system"] == "Failing,0,127.0.0.1"
    assert proto.transport not in reactor.getReaders()
    second = _client(port)  # the loop goes on
    _settle(reactor, lambda: len(factory.made) == 2)
    second.sendall(b"more")
    _settle(reactor, lambda: factory.made[1].data == b"more")
    second.close()
    port.stopListening()


@pytest.mark.parametrize("late", [b"", b"late"])
def test_a_close_with_nothing_left_to_write_ends_within_the_turn(reactor, late):
    factory, port, client, proto = _accepted(reactor)
    t = proto.transport
    t.write(b"bye")  # nothing queued: straight to the socket
    t.loseConnection()
    t.write(late)  # Twisted sends what is written after a close before the close takes effect
    assert proto.reason is None  # never from inside loseConnection
    reactor.runUntilCurrent()  # the end of the turn: no poll for writability first, unless written to
    assert (proto.reason is None) == bool(late)
    _settle(reactor, lambda: proto.reason is not None)
    assert proto.reason.check(error.ConnectionDone)
    assert t not in reactor.getReaders() and t not in reactor.getWriters() and not t.connected
    client.settimeout(5)
    received = b""
    while chunk := client.recv(10):
        received += chunk
    assert received == b"bye" + late  # then a FIN
    client.close()
    port.stopListening()


def test_an_abort_after_a_close_resets_the_connection(reactor):
    factory, port, client, proto = _accepted(reactor)
    t = proto.transport
    t.loseConnection()
    t.abortConnection()
    _settle(reactor, lambda: proto.reason is not None)
    assert proto.reason.check(error.ConnectionAborted)
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    client.close()
    port.stopListening()


def test_an_error_ending_a_closed_connection_is_logged_with_its_prefix(reactor):
    factory, port, client, proto = _accepted(reactor, FailingFactory())
    proto.transport.loseConnection()
    errors = _legacy_errors(reactor.runUntilCurrent)
    assert len(errors) == 1 and errors[0]["failure"].check(ValueError)
    assert errors[0]["system"] == "Failing,0,127.0.0.1" and proto.reason.check(error.ConnectionDone)
    client.close()
    port.stopListening()


def test_uninstalling_the_dispatch_ends_the_pending_closes_and_closes_twisteds_way_after(reactor):
    factory, port, client, proto = _accepted(reactor)
    proto.transport.loseConnection()
    eventloop.uninstall(reactor)
    assert proto.reason.check(error.ConnectionDone)
    second = _client(port)
    _settle(reactor, lambda: len(factory.made) == 2)
    t = factory.made[1].transport
    t.loseConnection()
    assert t in reactor.getWriters()  # Twisted's: the end after a poll for writability
    _settle(reactor, lambda: factory.made[1].reason is not None)
    for c in (client, second):
        c.close()
    port.stopListening()
