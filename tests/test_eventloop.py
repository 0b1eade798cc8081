"""txgate.runtime.eventloop: reads on txgate's transports dispatched without the legacy log context,
errors and disconnections still logged and handled in it; everything else as Twisted does it."""
from __future__ import annotations

import select
import socket

import pytest
from twisted.internet import abstract, main
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python import context, log

from txgate.directwrite import _direct_class, lean_accepts
from txgate.runtime import eventloop


class Probe(abstract.FileDescriptor):
    """A readable end of a socketpair that records the log context of each read."""

    def __init__(self, reactor, sock, result=None) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.systems: list[str] = []
        self.result = result
        self.lost = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "probe-prefix"

    def doRead(self):
        self.systems.append(context.get(log.ILogContext)["system"])
        self.sock.recv(100)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result

    def connectionLost(self, reason) -> None:
        self.lost.append((reason, context.get(log.ILogContext)["system"]))
        super().connectionLost(reason)


class LeanProbe(Probe):
    _txgate_lean = True


@pytest.fixture
def reactor():
    r = EPollReactor()
    yield r
    for s in list(r.getReaders()) + list(r.getWriters()):
        r.removeReader(s)
        r.removeWriter(s)
    r._poller.close()


def _pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _read_once(reactor, cls, result=None):
    a, b = _pair()
    probe = cls(reactor, a, result)
    reactor.addReader(probe)
    b.send(b"x")
    reactor.doIteration(0)
    return probe, (a, b)


def test_installs_on_twisteds_epoll_reactor_once_and_uninstalls(reactor):
    assert eventloop.install(reactor) is True
    assert eventloop.install(reactor) is True
    assert reactor.doIteration.__func__ is eventloop._lean_do_poll
    eventloop.uninstall(reactor)
    assert reactor.doIteration.__func__ is EPollReactor.doPoll


def test_other_reactors_are_left_alone():
    r = MemoryReactorClock()
    assert eventloop.install(r) is False


def test_someone_elses_loop_is_left_alone(reactor):
    def theirs(timeout):
        return None

    reactor.doIteration = theirs
    assert eventloop.install(reactor) is False
    assert reactor.doIteration is theirs


def test_a_read_on_a_lean_transport_skips_the_log_context(reactor):
    eventloop.install(reactor)
    probe, socks = _read_once(reactor, LeanProbe)
    assert probe.systems == ["-"]


def test_a_read_on_any_other_selectable_keeps_twisteds_log_context(reactor):
    eventloop.install(reactor)
    probe, socks = _read_once(reactor, Probe)
    assert probe.systems == ["probe-prefix"]


def test_a_failing_read_is_logged_in_the_connections_context_and_disconnects_it(reactor):
    eventloop.install(reactor)
    seen = []
    log.addObserver(seen.append)
    try:
        probe, socks = _read_once(reactor, LeanProbe, ValueError("boom"))
    finally:
        log.removeObserver(seen.append)
    errors = [e for e in seen if e.get("isError")]
    assert len(errors) == 1
    assert errors[0]["system"] == "probe-prefix" and errors[0]["failure"].check(ValueError)
    [(reason, system)] = probe.lost
    assert reason.check(ValueError) and system == "probe-prefix"
    assert probe not in reactor.getReaders()


def test_a_read_that_ends_the_connection_disconnects_it_in_its_context(reactor):
    eventloop.install(reactor)
    probe, socks = _read_once(reactor, LeanProbe, main.CONNECTION_DONE)
    [(reason, system)] = probe.lost
    assert reason.check(type(main.CONNECTION_DONE)) and system == "probe-prefix"
    assert probe not in reactor.getReaders()


def test_listening_ports_accept_connections_of_txgates_transport_class():
    class Port:
        from twisted.internet.tcp import Server as transport

    port = Port()
    lean_accepts(port)
    assert port.transport is _direct_class(Port.transport)
    assert port.transport._txgate_lean and port.transport._txgate_direct
    lean_accepts(port)  # idempotent: the same class, not a subclass of it
    assert port.transport is _direct_class(Port.transport)


def test_accepted_connections_inherit_nodelay_from_the_listening_socket_and_skip_setting_it():
    from twisted.internet.tcp import Server

    from txgate.directwrite import no_delay

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()

    class Port:
        transport = Server
        socket = listening

    port = Port()
    lean_accepts(port)
    assert listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert port.transport._txgate_nodelay and issubclass(port.transport, _direct_class(Server))
    client = socket.create_connection(listening.getsockname())
    accepted, _ = listening.accept()
    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1  # what lets no_delay skip it

    calls = []
    t = port.transport.__new__(port.transport)  # no reactor: only the class matters to no_delay
    t.setTcpNoDelay = calls.append
    no_delay(t)
    assert calls == []
    plain = _direct_class(Server).__new__(_direct_class(Server))
    plain.setTcpNoDelay = calls.append
    no_delay(plain)
    assert calls == [True]
    for s in (client, accepted, listening):
        s.close()


def test_a_read_with_a_reset_on_a_lean_transport_skips_the_log_context_too(reactor):
    import struct

    eventloop.install(reactor)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    peer = socket.create_connection(listening.getsockname())
    ours, _ = listening.accept()
    ours.setblocking(False)
    probe = LeanProbe(reactor, ours)
    reactor.addReader(probe)
    peer.send(b"x")
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # a reset: EPOLLIN | EPOLLHUP | EPOLLERR
    [(fd, event)] = reactor._poller.poll(1)
    assert event & select.EPOLLIN and event & (select.EPOLLHUP | select.EPOLLERR)
    reactor.doIteration(0)
    assert probe.systems == ["-"]
    reactor.removeReader(probe)
    ours.close()
    listening.close()


def test_timed_calls_run_when_due_and_the_timeout_counts_down_to_the_next(reactor):
    eventloop.install(reactor)
    now = [1000.0]
    reactor.seconds = lambda: now[0]
    ran = []
    reactor.callLater(2.0, ran.append, "a")
    reactor.callLater(5.0, ran.append, "b")
    reactor.runUntilCurrent()
    assert ran == [] and reactor.timeout() == 2.0
    now[0] += 1.5
    reactor.runUntilCurrent()
    assert ran == [] and reactor.timeout() == pytest.approx(0.5)
    now[0] += 0.5
    reactor.runUntilCurrent()
    assert ran == ["a"] and reactor.timeout() == pytest.approx(3.0)
    reactor.callLater(1.0, ran.append, "c")  # a new one, sooner: seen by the next timeout
    assert reactor.timeout() == pytest.approx(1.0)
    reactor.runUntilCurrent()
    assert reactor.timeout() == pytest.approx(1.0)
    now[0] += 10
    reactor.runUntilCurrent()
    assert ran == ["a", "c", "b"] and reactor.timeout() is None


def test_calls_from_threads_a_stop_and_the_clean_up_of_cancelled_calls_still_run(reactor):
    eventloop.install(reactor)
    ran = []
    reactor.threadCallQueue.append((ran.append, ("thread",), {}))
    reactor.runUntilCurrent()
    assert ran == ["thread"]
    calls = [reactor.callLater(100 + i, ran.append, i) for i in range(60)]
    reactor.runUntilCurrent()
    for c in calls[:55]:
        c.cancel()
    reactor.runUntilCurrent()  # more than 50 cancelled, more than half the heap: compacted as Twisted does
    assert len(reactor._pendingTimedCalls) == 5 and reactor._cancellations == 0
    assert reactor.timeout() == pytest.approx(155, abs=1)
    for c in calls[55:]:
        c.cancel()


def test_the_main_loop_logs_a_failing_turn_and_goes_on_until_stopped(reactor):
    from twisted.logger import globalLogPublisher

    assert eventloop.install(reactor)
    assert reactor.mainLoop.__func__ is eventloop._main_loop
    lean_poll = reactor.doIteration
    turns = []

    def poll(timeout):  # the first turn fails (as a poll error would), the others poll
        turns.append(timeout)
        if len(turns) == 1:
            raise ValueError("a turn failed")
        lean_poll(timeout)

    reactor.doIteration = poll
    events = []
    globalLogPublisher.addObserver(events.append)
    ran = []
    try:
        reactor.callLater(0.01, ran.append, "after")
        reactor.callLater(0.02, reactor.stop)
        reactor.run(installSignalHandlers=False)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert ran == ["after"] and len(turns) > 2
    failures = [e for e in events if e.get("log_failure") is not None]
    assert [f["log_failure"].check(ValueError) for f in failures] == [ValueError]
    assert failures[0]["log_format"].startswith("Unexpected error in main loop")
    assert any(e.get("log_format") == "Main loop terminated." for e in events)
    reactor.doIteration = lean_poll
    eventloop.uninstall(reactor)
    assert "mainLoop" not in reactor.__dict__


def _read_outcomes(cls):
    """What doRead of a ``cls`` connection returns, and what its protocol got, for: nothing to read,
    data, the peer's end; then for a reset on a second connection."""
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol
    import struct

    class Got(Protocol):
        def __init__(self) -> None:
            self.data = []

        def dataReceived(self, data: bytes) -> None:
            self.data.append(data)

    outcomes = []
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    for reset in (False, True):
        peer = socket.create_connection(listening.getsockname())
        ours, _ = listening.accept()
        proto = Got()
        t = cls(ours, proto, MemoryReactorClock())
        outcomes.append(t.doRead())  # EAGAIN
        peer.sendall(b"abc")
        select.select([ours], [], [], 5)
        outcomes.append(t.doRead())
        if reset:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        select.select([ours], [], [], 5)
        why = t.doRead()
        outcomes.append(type(why).__name__)
        outcomes.append(proto.data)
        ours.close()
    listening.close()
    assert issubclass(cls, tcp.Connection)
    return outcomes


def test_txgates_transports_read_in_one_frame_with_twisteds_outcomes():
    from twisted.internet import tcp

    from txgate import directwrite

    lean = _direct_class(tcp.Connection)
    assert lean.doRead is directwrite._read
    assert _read_outcomes(lean) == _read_outcomes(tcp.Connection) == [
        None, None, "ConnectionDone", [b"abc"], None, None, "ConnectionLost", [b"abc"]]


def test_a_transport_with_its_own_read_keeps_it():
    from twisted.internet import unix

    assert _direct_class(unix.Server).doRead is unix.Server.doRead  # (file descriptors passed with the data)
