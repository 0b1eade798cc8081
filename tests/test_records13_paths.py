# -*- test-case-name: tests.test_records13_paths -*-
"""The TLS 1.3 hand-over (txgate.tls.handover) on every handshake shape, in memory through
`TLSServerProtocol`: HelloRetryRequest, PSK resumption, client certificates, stateful tickets, an SNI
context switch, each suite, and an application that writes while the handshake completes. A client
(pyOpenSSL) must decrypt every record of ours, under the sequence number it expects, and we must
decrypt each of its records: a miscounted sequence number is a reused nonce and shows as
bad_record_mac on one side or the other."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from OpenSSL import SSL
from OpenSSL._util import lib
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from certs_helpers import make_ca, make_leaf
from test_serverconn import Client
from txgate.tls.records13 import SUITES, expand_label
from txgate.tls.server import ServerTLS
from txgate.tls.serverconn import TLSServerFactory
from txgate.tlswrap import DirectTLSFactory

HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


class App(Protocol):
    """Echoes every read as 'echo:' + data; writes ``greeting`` in handshakeCompleted."""

    greeting = b""

    def __init__(self) -> None:
        self.received = []
        self.lost = None

    def handshakeCompleted(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.transport.write(b"echo:" + data)

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


@pytest.fixture(scope="module")
def ca():
    return make_ca("records13 paths CA")


@pytest.fixture(scope="module")
def leaf(ca):
    return make_leaf(ca, ["localhost"])


def client_context(*, groups: bytes | None = None, cert=None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_alpn_protos([b"h2", b"http/1.1"])
    if groups is not None:
        assert lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1
    if cert is not None:
        ctx.use_certificate(cert.leaf)
        ctx.use_privatekey(cert.key)
    return ctx


class Conn:
    """One in-memory connection: the server's TLSServerProtocol and a pyOpenSSL client."""

    def __init__(self, server_tls: ServerTLS, cctx: SSL.Context, *, session=None, sni: bytes | None = None,
                 greeting: bytes = b"") -> None:
        apps = []

        class F:
            def buildProtocol(self, addr):
                app = App()
                app.greeting = greeting
                apps.append(app)
                return app

        self.sp = TLSServerFactory(server_tls, F()).buildProtocol(None)
        self.client_conn = None
        outer = self

        @implementer(IOpenSSLClientConnectionCreator)
        class Creator:
            def clientConnectionForTLS(self, proto):
                c = SSL.Connection(cctx, None)
                if session is not None:
                    c.set_session(session)
                if sni is not None:
                    c.set_tlsext_host_name(sni)
                outer.client_conn = c
                return c

        self.client = Client()
        self.cp = DirectTLSFactory(Creator(), True, Factory.forProtocol(lambda: self.client),
                                   clock=Clock()).buildProtocol(None)
        server_io = iosim.makeFakeServer(self.sp)
        self.wire = []  # everything the server wrote, in order
        write = server_io.write
        server_io.write = lambda data: (self.wire.append(data), write(data))[1]
        self.pump = iosim.connect(self.sp, server_io, self.cp, iosim.makeFakeClient(self.cp), greet=False)
        self.pump.flush()
        self.app = apps[0]

    def exchange(self, rounds: int = 20) -> None:
        """Data both ways, small and over a record, with the sequence numbers in step or not at all."""
        for i in range(rounds):
            self.client.received = b""
            msg = b"m%d-" % i + b"x" * (i * 997 % 40_000)
            self.cp.write(msg)
            self.pump.flush()
            assert self.client.lost is None and self.app.lost is None
            assert b"".join(self.app.received) == msg
            self.app.received.clear()
            assert self.client.received.startswith(b"echo:m%d-" % i)


def _handed_over(conn: Conn) -> None:
    assert conn.sp._rec is not None and conn.sp.getHandle() is None, "the connection stayed with OpenSSL"


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_each_suite(leaf, suite):
    c = Conn(ServerTLS(default=leaf, tls13_ciphersuites=suite, hand_over=True), client_context())
    _handed_over(c)
    assert c.client_conn.get_cipher_name() == suite
    c.exchange()


def test_hello_retry_request(leaf):
    # The client's key share is X25519 only; the listener takes P-256 only: it must ask again.
    c = Conn(ServerTLS(default=leaf, groups="P-256", hand_over=True), client_context(groups=b"X25519:P-256"))
    assert HRR_RANDOM in b"".join(c.wire), "no HelloRetryRequest was sent"
    _handed_over(c)
    c.exchange()


@pytest.mark.parametrize("tickets", [True, False], ids=["stateless-tickets", "stateful-tickets"])
def test_psk_resumption(leaf, tickets):
    tls = ServerTLS(default=leaf, session_tickets=tickets, hand_over=True)
    cctx = client_context()
    first = Conn(tls, cctx)
    _handed_over(first)
    first.exchange(3)  # the tickets have arrived
    session = first.client_conn.get_session()
    second = Conn(tls, cctx, session=session)
    assert lib.SSL_session_reused(second.client_conn._ssl) == 1
    _handed_over(second)
    second.exchange()


def test_client_certificate(ca, leaf):
    seen = []

    def verify(conn, cert, errno, depth, ok):
        seen.append(depth)
        return True  # what is checked here is the record layer after a client Certificate/CertificateVerify

    tls = ServerTLS(default=leaf, verify=(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify), hand_over=True)
    c = Conn(tls, client_context(cert=make_leaf(ca, ["client"], client=True)))
    assert seen
    _handed_over(c)
    c.exchange()


def test_sni_context_switch(ca, leaf):
    other = make_leaf(ca, ["other.test"])
    tls = ServerTLS(default=leaf, sni=[("other.test", other)], hand_over=True)
    c = Conn(tls, client_context(), sni=b"other.test")
    assert c.client_conn.get_peer_certificate(as_cryptography=True) == other.leaf
    _handed_over(c)
    c.exchange()


@pytest.mark.parametrize("size", [6, 16_384, 16_385, 50_000])
def test_application_writes_while_the_handshake_completes(leaf, size):
    """As h2's SETTINGS are written from handshakeCompleted: they leave with OpenSSL, counted."""
    greeting = b"SETTINGS" + b"s" * (size - 8) if size > 8 else b"hello!"
    c = Conn(ServerTLS(default=leaf, hand_over=True), client_context(), greeting=greeting)
    _handed_over(c)
    assert c.client.received == greeting
    c.exchange()


# -- the peer's bytes as TCP delivers them, through TLSServerProtocol ---------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from twisted.internet.error import ConnectionDone, ConnectionLost  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from txgate.tls.records13 import RecordError, Records  # noqa: E402


class Raw:
    """A TLSServerProtocol on a StringTransport and a pyOpenSSL client on memory BIOs: the test says
    which bytes reach the server, in which pieces."""

    def __init__(self, server_tls: ServerTLS, cctx: SSL.Context | None = None) -> None:
        app = self.app = App()
        self.sp = TLSServerFactory(server_tls, type("F", (), {"buildProtocol": lambda s, a: app})()).buildProtocol(None)
        self.tcp = StringTransport()
        self.sp.makeConnection(self.tcp)
        self.c = SSL.Connection(cctx or client_context(), None)
        self.c.set_connect_state()
        self.c.set_tlsext_host_name(b"localhost")
        self._step()  # ClientHello
        self.sp.dataReceived(self.c.bio_read(1 << 16))
        self.c.bio_write(self.server_output())
        self._step()  # the client's Finished is now in its output BIO, not yet sent

    def _step(self) -> None:
        try:
            self.c.do_handshake()
        except SSL.WantReadError:
            pass

    def server_output(self) -> bytes:
        out = self.tcp.value()
        self.tcp.clear()
        return out

    def client_read(self) -> bytes:
        self.c.bio_write(self.server_output())
        got = b""
        while True:
            try:
                got += self.c.recv(1 << 16)
            except SSL.WantReadError:
                return got

    def client_wire(self) -> bytes:
        try:
            return self.c.bio_read(1 << 20)
        except SSL.WantReadError:
            return b""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 1 << 16), max_size=12), sizes=st.lists(st.integers(1, 20_000), min_size=1, max_size=4))
def test_the_client_finished_and_its_requests_split_anywhere(leaf, cuts, sizes):
    """Finished and application records in any pieces: part of it read by OpenSSL, the rest by records13."""
    r = Raw(ServerTLS(default=leaf, hand_over=True))
    msgs = [bytes([65 + i]) * n for i, n in enumerate(sizes)]
    for m in msgs:
        while m:  # pyOpenSSL's writes are partial (a record at a time)
            m = m[r.c.send(m):]
    wire = r.client_wire()
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in zip(points, points[1:]):
        r.sp.dataReceived(wire[a:b])
    assert r.sp._rec is not None
    assert b"".join(r.app.received) == b"".join(msgs)
    assert r.client_read() == b"".join(b"echo:" + d for d in r.app.received)
    assert r.app.lost is None and not r.tcp.disconnecting


def _mirror(r: Raw) -> Records:
    """The client's side of the records after the hand-over (for records pyOpenSSL will not make)."""
    rec = r.sp._rec
    suite_name = next(n for n, s in SUITES.items() if s is rec.suite)
    return Records(suite_name, rec.write.secret, rec.read.secret, read_seq=rec.write.seq, write_seq=rec.read.seq)


def _handed(leaf) -> Raw:
    r = Raw(ServerTLS(default=leaf, hand_over=True))
    r.sp.dataReceived(r.client_wire())
    assert r.sp._rec is not None
    r.client_read()  # the tickets
    return r


def test_a_truncated_record_at_eof_is_connection_lost(leaf):
    r = _handed(leaf)
    r.c.send(b"cut short")
    wire = r.client_wire()
    r.sp.dataReceived(wire[:-3])
    r.sp.connectionLost(Failure(ConnectionDone()))
    assert r.app.received == [] and r.app.lost.check(ConnectionLost)


def test_the_peers_close_notify_is_answered_and_what_follows_is_ignored(leaf):
    r = _handed(leaf)
    client = _mirror(r)
    client.protect(b"last")
    client.alert(0)
    client.closed_by_us = False
    client.protect(b"after close_notify")
    r.sp.dataReceived(client.take_output())
    assert r.app.received == [b"last"]
    assert r.tcp.disconnecting
    out = r.server_output()
    assert client.unprotect(out) == [b"echo:last"] and client.closed_by_peer  # echo, then our close_notify
    r.sp.connectionLost(Failure(ConnectionDone()))
    assert r.app.lost.check(ConnectionDone)


@pytest.mark.parametrize("description", [40, 90])
def test_an_alert_ends_the_connection_with_the_record_error(leaf, description):
    r = _handed(leaf)
    client = _mirror(r)
    client._protect_one(bytes((2, description)), 21)
    r.sp.dataReceived(client.take_output())
    assert r.tcp.disconnecting and r.server_output() == b""  # nothing is answered to an alert
    r.sp.connectionLost(Failure(ConnectionDone()))
    assert r.app.lost.check(RecordError)


def test_a_bad_record_gets_a_bad_record_mac_alert(leaf):
    r = _handed(leaf)
    client = _mirror(r)
    client.protect(b"x")
    wire = bytearray(client.take_output())
    wire[-1] ^= 1
    r.sp.dataReceived(bytes(wire))
    assert r.tcp.disconnecting
    with pytest.raises(SSL.Error, match="bad record mac"):
        r.client_read()


def test_a_key_update_flood_queues_nothing_and_requests_go_on(leaf):
    r = _handed(leaf)
    client = _mirror(r)
    for _ in range(2000):
        client._protect_one(b"\x18\x00\x00\x01\x01", 22)
        client.write.update(client.suite)
    r.sp.dataReceived(client.take_output())
    assert r.server_output() == b""
    client.protect(b"ping")
    r.sp.dataReceived(client.take_output())
    assert client.unprotect(r.server_output()) == [b"echo:ping"]


def _ccm_record(secret: bytes, seq: int, content: bytes, ctype: int) -> bytes:
    """A TLS_AES_128_CCM_SHA256 record under ``secret`` (records13 does not do that suite)."""
    key = expand_label(secret, b"key", 16, "sha256")
    iv = int.from_bytes(expand_label(secret, b"iv", 12, "sha256"), "big")
    header = bytes((23, 3, 3)) + (len(content) + 1 + 16).to_bytes(2, "big")
    return header + AESCCM(key).encrypt((iv ^ seq).to_bytes(12, "big"), content + bytes((ctype,)), header)


def test_a_connection_kept_by_openssl_keeps_no_secret_of_its_key_updates(leaf):
    """A suite records13 does not do stays with OpenSSL, whose keylog callback (OpenSSL 4.0) reports the
    next traffic secrets at each KeyUpdate: none of them may stay on the connection (until it closes)."""
    suite = "TLS_AES_128_CCM_SHA256"
    cctx = client_context()
    cctx.set_tls13_ciphersuites(suite.encode())
    logged = []
    cctx.set_keylog_callback(lambda conn, line: logged.append(line))
    r = Raw(ServerTLS(default=leaf, tls13_ciphersuites=suite, hand_over=True), cctx)
    r.sp.dataReceived(r.client_wire())  # the client's Finished
    tls = r.sp.getHandle()
    assert r.sp._rec is None and tls.get_cipher_name() == suite
    assert tls.traffic is None
    r.client_read()  # the tickets
    secret = next(bytes.fromhex(line.split()[2].decode()) for line in logged
                  if line.startswith(b"CLIENT_TRAFFIC_SECRET_0 "))
    # pyOpenSSL has no KeyUpdate call: the client's next records are made here, under its key.
    seq = 0
    for i in range(3):
        r.sp.dataReceived(_ccm_record(secret, seq, b"\x18\x00\x00\x01\x01", 22))  # KeyUpdate(update_requested)
        secret = expand_label(secret, b"traffic upd", 32, "sha256")
        r.sp.dataReceived(_ccm_record(secret, 0, b"after %d" % i, 23))
        seq = 1
        assert r.app.received[-1] == b"after %d" % i
        # OpenSSL's own KeyUpdate goes first, then its data: the client reads both.
        assert r.client_read() == b"echo:after %d" % i
        assert tls.traffic is None
    assert r.app.lost is None
