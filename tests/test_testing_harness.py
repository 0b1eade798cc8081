"""txgate.testing itself: the in-memory wire, the network, upstream doubles, TestPKI and the gateway harness."""
from __future__ import annotations

import os
import stat

import pytest
from twisted.internet import error
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from memory_fixtures import pki  # noqa: F401 (fixture)
from txgate.testing import Connect, Link, MemoryGateway, MemoryNetwork, Respond, gateway_ini
from txgate.testing.network import address
from txgate.testing.wire import HIGH_WATER


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def link() -> tuple[Link, Recorder, Recorder]:
    a, b = Recorder(), Recorder()
    pair = Link(a, b, address("127.0.0.1", 1), address("127.0.0.1", 2))
    pair.start()
    return pair, a, b


def test_graceful_close_delivers_written_bytes_first():
    pair, a, b = link()
    a.transport.write(b"last words")
    a.transport.loseConnection()
    b.transport.pauseProducing()
    pair.pump()
    assert b.data == b"" and b.lost is None
    b.transport.resumeProducing()
    pair.pump()
    pair.pump()
    assert b.data == b"last words"
    assert b.lost.check(error.ConnectionDone) and a.lost.check(error.ConnectionDone)


def test_abort_is_a_reset_for_the_peer():
    pair, a, b = link()
    a.transport.abortConnection()
    pair.pump()
    assert b.lost.check(error.ConnectionLost) and a.lost.check(error.ConnectionDone)
    a.transport.write(b"too late")
    assert pair.pump() is False and b.data == b""


def test_unread_bytes_pause_the_writers_producer_and_reading_resumes_it():
    pair, a, b = link()
    producer = Producer()
    a.transport.registerProducer(producer, True)
    b.transport.pauseProducing()
    a.transport.write(b"x" * (HIGH_WATER + 1))
    assert producer.events == ["pause"]
    b.transport.resumeProducing()
    while pair.pump():
        pass
    assert producer.events == ["pause", "resume"] and len(b.data) == HIGH_WATER + 1


def test_network_refuses_unregistered_addresses_and_times_out_silent_ones():
    reactor = MemoryReactorClock()
    net = MemoryNetwork(reactor)

    class Answer:
        def connection_attempt(self, network, factory, connector, timeout):
            from txgate.testing.network import never_answer

            never_answer(network, factory, connector, timeout)

    failures = []

    class Factory(ClientFactory):
        def clientConnectionFailed(self, connector, reason):
            failures.append((reactor.seconds(), reason.type))

    net.register("silent.internal", 80, Answer())
    reactor.connectTCP("nobody.internal", 80, Factory(), timeout=5)
    reactor.connectTCP("silent.internal", 80, Factory(), timeout=5)
    net.flush()
    assert failures == [(0, error.ConnectionRefusedError)]
    net.advance(5)
    assert failures == [(0, error.ConnectionRefusedError), (5, error.TimeoutError)]


def test_advance_fires_timers_in_order_with_the_network_flushed_between():
    reactor = MemoryReactorClock()
    net = MemoryNetwork(reactor)
    seen = []
    reactor.callLater(2, lambda: (seen.append(reactor.seconds()), reactor.callLater(1, seen.append, "chained")))
    reactor.callLater(1, seen.append, 1.0)
    net.advance(3)
    assert seen == [1.0, 2.0, "chained"] and reactor.seconds() == 3


def test_test_pki_writes_usable_files_with_a_private_key(pki):
    leaf = pki.issue("localhost", "127.0.0.1")
    assert os.path.exists(leaf.cert_path) and os.path.exists(pki.ca_path)
    assert stat.S_IMODE(os.stat(leaf.key_path).st_mode) == 0o600
    assert pki.issue("localhost").cert_path != leaf.cert_path


def test_upstream_double_records_requests_and_follows_its_handler(pki):
    gw = MemoryGateway(gateway_ini(pki.issue("localhost"), "[api:a]\npath = /a\nupstream = http://a.internal:80\n"), pki=pki)
    try:
        up = gw.upstream("http://a.internal", handler=lambda r: Respond.json({"got": r.path}, status=201))
        response = gw.client().fetch("PUT", "/a/thing", headers=[("x-test", "1")], body=b"hello")
        assert (response.status, response.json()) == (201, {"got": "/a/thing"})
        (seen,) = up.requests
        assert (seen.method, seen.body, seen.complete, seen.header("x-test")) == ("PUT", b"hello", True, "1")
    finally:
        gw.stop()


def test_connect_mode_can_change_between_requests(pki):
    gw = MemoryGateway(gateway_ini(pki.issue("localhost"), "[api:a]\npath = /a\nupstream = http://a.internal:80\n"
                                   "connect_timeout = 1\n"), pki=pki)
    try:
        up = gw.upstream("http://a.internal:80", connect=Connect.REFUSE)
        assert gw.get("/a/x").status == 502
        up.connect = Connect.ACCEPT
        assert gw.get("/a/x").status == 200
    finally:
        gw.stop()


def test_stop_drains_and_removes_the_log_observer(pki):
    observers = len(globalLogPublisher._observers)
    gw = MemoryGateway(gateway_ini(pki.issue("localhost"), "[api:e]\npath = /e\nupstream = builtin:echo\n"), pki=pki)
    assert gw.logs.matching(r"listener main on https://")
    gw.stop()
    assert gw.logs.matching(r"txgate stopped")
    assert len(globalLogPublisher._observers) == observers


def test_bad_config_raises_the_config_error_and_leaves_no_observer():
    from txgate.config import ConfigError

    observers = len(globalLogPublisher._observers)
    with pytest.raises(ConfigError, match=r"\[listener:main\] colour"):
        MemoryGateway("[listener:main]\nbind = 127.0.0.1:0\ncolour = blue\n")
    assert len(globalLogPublisher._observers) == observers
