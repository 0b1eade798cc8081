"""txgate.tls.serverconn: the server-side TLS protocol of the listeners, in memory (no sockets)."""
from __future__ import annotations

import pytest
from OpenSSL import SSL
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from certs_helpers import make_ca, make_leaf
from txgate.tls.outcomes import represents_eof
from txgate.tls.server import ServerTLS
from txgate.tlswrap import DirectTLSFactory
from txgate.tls.serverconn import TLSServerFactory, read_app_data, read_tls_output


@pytest.fixture(scope="module", params=[False, True], ids=["openssl-records", "records13"])
def server_tls(request):
    """Every behaviour twice: records by OpenSSL throughout, and handed over to txgate.tls.records13
    after a TLS 1.3 handshake (the gateway's default)."""
    ca = make_ca("serverconn test CA")
    return ServerTLS(default=make_leaf(ca, ["localhost"]), hand_over=request.param)


class App(Protocol):
    """Records what the TLS protocol hands up; answers 'ping' with 'pong'."""

    def __init__(self) -> None:
        self.received = []
        self.handshakes = 0
        self.lost = None
        self.inner = None

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if data == b"ping":
            self.transport.write(b"pong")

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class _Factory:
    def __init__(self) -> None:
        self.apps = []

    def buildProtocol(self, addr):
        app = App()
        self.apps.append(app)
        return app


class Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


def _pair(server_tls, alpn=(b"http/1.1",), max_version=None):
    f = _Factory()
    sp = TLSServerFactory(server_tls, f).buildProtocol(None)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_alpn_protos(list(alpn))
    if max_version is not None:
        ctx.set_max_proto_version(max_version)

    @implementer(IOpenSSLClientConnectionCreator)
    class Creator:
        def clientConnectionForTLS(self, proto):
            return SSL.Connection(ctx, None)

    client = Client()
    cp = DirectTLSFactory(Creator(), True, Factory.forProtocol(lambda: client), clock=Clock()).buildProtocol(None)
    pump = iosim.connect(sp, iosim.makeFakeServer(sp), cp, iosim.makeFakeClient(cp), greet=False)
    pump.flush()
    return sp, f.apps[0], cp, client, pump


def test_handshake_then_data_both_ways(server_tls):
    sp, app, cp, client, pump = _pair(server_tls)
    assert app.handshakes == 1
    assert sp.negotiatedProtocol == b"http/1.1"
    if server_tls.hand_over:
        # TLS 1.3: OpenSSL's connection is freed once the handshake is done; records13 carries on.
        assert sp.getHandle() is None and sp._rec is not None
    else:
        assert sp.getHandle().get_protocol_version_name() == "TLSv1.3"
    _ping_pong(app, cp, client, pump)


def _ping_pong(app, cp, client, pump) -> None:
    cp.write(b"ping")
    pump.flush()
    assert app.received == [b"ping"]
    assert client.received == b"pong"


def test_tls12_handshake_then_data_both_ways(server_tls):
    """TLS 1.2 stays with OpenSSL whatever the setting: its last flight must still reach the client."""
    sp, app, cp, client, pump = _pair(server_tls, max_version=SSL.TLS1_2_VERSION)
    assert app.handshakes == 1
    assert sp.getHandle().get_protocol_version_name() == "TLSv1.2"
    _ping_pong(app, cp, client, pump)


def test_data_goes_straight_to_the_inner_protocol_once_chosen(server_tls):
    sp, app, cp, client, pump = _pair(server_tls)
    inner = App()
    app.inner = inner  # as the negotiator does in handshakeCompleted; picked up at the next handshake
    sp.sink = inner
    cp.write(b"hello")
    pump.flush()
    assert inner.received == [b"hello"] and app.received == []


def test_writes_before_the_handshake_wait_for_it(server_tls):
    f = _Factory()
    sp = TLSServerFactory(server_tls, f).buildProtocol(None)
    sp.makeConnection(iosim.FakeTransport(sp, isServer=True))
    sp.write(b"early")
    assert sp._pending == [b"early"]


def test_close_notify_both_ways(server_tls):
    sp, app, cp, client, pump = _pair(server_tls)
    sp.loseConnection()
    pump.flush()
    assert app.lost is not None and client.lost is not None
    assert sp.getHandle() is None  # released once the connection is gone


def test_the_peers_close_notify_is_answered(server_tls):
    sp, app, cp, client, pump = _pair(server_tls)
    cp.loseConnection()
    pump.flush()
    assert app.lost is not None and client.lost is not None


def test_abort_drops_what_follows(server_tls):
    sp, app, cp, client, pump = _pair(server_tls)
    sp.abortConnection()
    cp.write(b"ping")
    pump.flush()
    assert app.received == []
    assert app.lost is not None


def test_garbage_fails_the_handshake_with_the_openssl_error(server_tls):
    f = _Factory()
    sp = TLSServerFactory(server_tls, f).buildProtocol(None)
    sp.makeConnection(iosim.FakeTransport(sp, isServer=True))
    # Not an HTTP request (those get a 400 in clear: the next test): OpenSSL's own verdict.
    sp.dataReceived(b"\x00\x01 not a TLS record\r\n\r\n")
    sp.connectionLost(None)
    app = f.apps[0]
    assert app.handshakes == 0
    assert isinstance(app.lost.value, SSL.Error)


def test_plain_http_gets_a_400_in_clear_and_fails_the_handshake(server_tls):
    from twisted.internet.testing import StringTransport

    from txgate.tls.outcomes import HandshakeOutcome, PlainHTTPRequest, classify_handshake_failure
    from txgate.tls.serverconn import PLAIN_HTTP_HINT

    f = _Factory()
    sp = TLSServerFactory(server_tls, f).buildProtocol(None)
    tcp = StringTransport()
    sp.makeConnection(tcp)
    sp.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    assert tcp.value().startswith(b"HTTP/1.1 400 Bad Request\r\n") and tcp.value().endswith(PLAIN_HTTP_HINT)
    assert tcp.disconnecting
    sp.connectionLost(None)
    app = f.apps[0]
    assert app.handshakes == 0
    assert isinstance(app.lost.value, PlainHTTPRequest)
    assert classify_handshake_failure(app.lost).outcome is HandshakeOutcome.PROTOCOL_ERROR


def _client_hello() -> bytes:
    c = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    c.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        c.do_handshake()
    return c.bio_read(65536)


def test_a_truncated_handshake_is_connection_lost(server_tls):
    f = _Factory()
    sp = TLSServerFactory(server_tls, f).buildProtocol(None)
    sp.makeConnection(iosim.FakeTransport(sp, isServer=True))
    hello = _client_hello()
    sp.dataReceived(hello[: len(hello) // 2])
    sp.connectionLost(None)
    assert f.apps[0].lost.check(ConnectionLost)


def test_refused_by_the_listener_builds_nothing(server_tls):
    class Full:
        def buildProtocol(self, addr):
            return None

    assert TLSServerFactory(server_tls, Full()).buildProtocol(None) is None


def test_represents_eof():
    assert represents_eof(SSL.Error([]))
    assert represents_eof(SSL.Error([("SSL routines", "", "unexpected eof while reading")]))
    assert not represents_eof(SSL.Error([("SSL routines", "", "wrong version number")]))
    assert represents_eof(SSL.SysCallError(-1, "Unexpected EOF"))


def test_reads_report_no_data_without_raising(server_tls):
    conn = SSL.Connection(server_tls.default_context, None)
    conn.set_accept_state()
    assert read_tls_output(conn) == b""
    assert read_app_data(conn) is None  # waiting for the ClientHello
    conn.bio_write(_client_hello())
    assert read_app_data(conn) is None  # the handshake goes on: the server's flight is ready
    assert read_tls_output(conn)[:1] == b"\x16"
    assert read_tls_output(conn) == b""


def test_server_contexts_release_idle_buffers(server_tls):
    from OpenSSL._util import lib

    conn = SSL.Connection(server_tls.default_context, None)
    assert lib.SSL_set_mode(conn._ssl, 0) & SSL.MODE_RELEASE_BUFFERS


class BigGreeter(App):
    """Writes more than one record's worth while the handshake completes (as a protocol may)."""

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        self.transport.write(b"G" * 40_000)


def test_a_large_write_during_handshake_completed_keeps_the_sequence_numbers(server_tls, monkeypatch):
    """What OpenSSL wrote under the application key before the hand-over (tickets, then the greeting,
    three records of it) must all be counted: a record of ours under an already used sequence number
    reuses an AEAD nonce (and the client fails to decrypt it)."""
    monkeypatch.setattr(_Factory, "buildProtocol", lambda self, addr: self.apps.append(BigGreeter()) or self.apps[-1])
    sp, app, cp, client, pump = _pair(server_tls)
    assert client.received == b"G" * 40_000
    client.received = b""
    _ping_pong(app, cp, client, pump)
    assert client.lost is None


def test_writes_of_any_bytes_like_object_are_sent(server_tls):
    """As OpenSSL's send() takes any buffer, so does the record layer after the hand-over."""
    sp, app, cp, client, pump = _pair(server_tls)
    for data in (bytearray(b"ba"), memoryview(b"xmvx")[1:3], memoryview(b"L" * 20_000)):
        sp.write(data)
    pump.flush()
    assert client.received == b"bamv" + b"L" * 20_000 and client.lost is None


class Refuser(App):
    """Closes the connection from handshakeCompleted (as the negotiator does for acme-tls/1 or a refusal)."""

    close = "loseConnection"

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        self.handle = self.transport.getHandle()
        self.secrets_seen = self.handle.traffic is not None and None not in self.handle.traffic
        getattr(self.transport, self.close)()


@pytest.mark.parametrize("close", ["loseConnection", "abortConnection"])
def test_a_connection_closed_from_handshake_completed_keeps_no_traffic_secret(server_tls, monkeypatch, close):
    """Not handed over (the application is closing it): the TLS 1.3 traffic secrets are dropped all the
    same, not left on OpenSSL's connection object for as long as the close takes."""
    monkeypatch.setattr(Refuser, "close", close)
    monkeypatch.setattr(_Factory, "buildProtocol", lambda self, addr: self.apps.append(Refuser()) or self.apps[-1])
    sp, app, cp, client, pump = _pair(server_tls)
    assert app.handshakes == 1
    assert app.secrets_seen == server_tls.hand_over  # recorded (hand-over on), then dropped
    kept = app.handle.traffic is not None  # (not compared directly: a failure would print the secrets)
    assert not kept
    assert app.lost is not None
