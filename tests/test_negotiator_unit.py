"""The listener's negotiator in memory (txgate.testing): ALPN choice, handshake failures, their logs and metrics."""
from __future__ import annotations

import pytest

from memory_fixtures import make, other_pki, pki  # noqa: F401 (fixtures)
from txgate.testing import MemoryGateway


def handshakes(gw: MemoryGateway) -> dict:
    return {(version, result): n for (_listener, version, result), n in gw.metrics.handshakes.items()}


# -- ALPN ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("offered, expected", [
    (("h2", "http/1.1"), "h2"),
    (("http/1.1", "h2"), "h2"),  # the server's preference decides
    (("h2",), "h2"),
    (("http/1.1",), "http/1.1"),
])
def test_alpn_chooses_the_protocol(make, offered, expected):
    gw = make(upstream="builtin:echo")
    client = gw.client(alpn=offered)
    assert client.alpn == expected
    response = client.get("/a/x")
    assert response.status == 200 and response.json()["path"] == "/a/x"
    assert (response.stream_id is not None) == (expected == "h2")


def test_no_alpn_is_http11(make):
    gw = make(upstream="builtin:echo")
    client = gw.client(alpn=None)
    assert client.alpn is None
    response = client.get("/a/x")
    assert response.status == 200 and response.stream_id is None


def test_listener_without_h2_answers_http11_to_h2_capable_clients(make):
    gw = make(upstream="builtin:echo", listener="alpn = http/1.1\n")
    client = gw.client(alpn=("h2", "http/1.1"))
    assert client.alpn == "http/1.1"
    assert client.get("/a/x").status == 200


def test_successful_handshake_is_counted_with_its_version(make):
    gw = make(upstream="builtin:echo")
    gw.client().get("/a/x")
    assert handshakes(gw) == {("TLSv1.3", "ok"): 1}


# -- handshake failures --------------------------------------------------------------------------------
def test_plain_http_on_the_tls_port_is_a_protocol_error(make):
    gw = make(upstream="builtin:echo")
    client = gw.client(tls=False)
    client.request("GET", "/a/x")
    gw.flush()
    assert client.closed
    lines = gw.logs.matching(r"TLS handshake with 127\.0\.0\.1 on main failed: ")
    assert len(lines) == 1 and "http request" in lines[0].lower()
    assert handshakes(gw) == {("unknown", "protocol_error"): 1}


def test_client_that_distrusts_the_certificate_is_logged_with_the_alert(make, other_pki):
    gw = make(upstream="builtin:echo")
    client = gw.client(ca=other_pki)
    assert client.closed and client.alpn is None
    lines = gw.logs.matching(r"TLS handshake with 127\.0\.0\.1 on main failed: ")
    assert len(lines) == 1 and "unknown ca" in lines[0].lower()
    assert handshakes(gw) == {("unknown", "failed"): 1}


def test_client_leaving_before_the_handshake_is_aborted_without_a_log_line(make):
    gw = make(upstream="builtin:echo")
    client = gw.client(tls=False)
    client.close()
    assert gw.logs.matching(r"TLS handshake") == []
    assert handshakes(gw) == {("unknown", "aborted"): 1}


def test_handshake_not_finished_within_header_timeout_is_closed(make):
    gw = make(upstream="builtin:echo", listener="header_timeout = 3\n")
    client = gw.client(tls=False)  # connects and never sends a ClientHello
    gw.advance(2.9)
    assert not client.closed
    gw.advance(0.2)
    assert client.closed
    assert gw.logs.matching(r"TLS handshake from 127\.0\.0\.1 not completed within 3(\.0)?s; closing")
    assert handshakes(gw) == {("unknown", "timeout"): 1}


def test_missing_client_certificate_is_refused_with_its_code(make, pki):
    gw = make(upstream="builtin:echo", listener=f"client_auth = require\nclient_ca = {pki.ca_path}\n")
    client = gw.client()
    gw.flush()
    assert client.closed
    assert gw.logs.matching(r"TLS handshake with 127\.0\.0\.1 on main refused: client_certificate_required: no client certificate sent")
    assert gw.logs.matching(r"TLS handshake with .* failed") == []
    assert handshakes(gw) == {("unknown", "no_certificate"): 1}


def test_client_certificate_is_accepted_and_the_request_served(make, pki):
    gw = make(upstream="builtin:echo", listener=f"client_auth = require\nclient_ca = {pki.ca_path}\n")
    client = gw.client(certificate=pki.issue(client=True, common_name="client-a"))
    response = client.get("/a/x")
    assert response.status == 200
    assert handshakes(gw) == {("TLSv1.3", "ok"): 1}


def test_connections_above_max_connections_are_refused_with_a_warning(make):
    gw = make(upstream="builtin:echo", listener="max_connections = 1\n")
    first = gw.client()
    second = gw.client()
    assert not first.closed and second.closed
    assert gw.logs.matching(r"listener main: 1 connections open \(max_connections\); refusing new ones")
    assert first.get("/a/x").status == 200


# -- one timer per connection ------------------------------------------------------------------------
def _count_timers(gw: MemoryGateway) -> list[str]:
    """The names of the callbacks the gateway (txgate's code; not the in-memory client's TLS) schedules from now on."""
    names = []
    real = gw.reactor.callLater

    def call_later(delay, f, *args, **kw):
        if getattr(f, "__module__", "").startswith("txgate."):
            names.append(f.__qualname__)
        return real(delay, f, *args, **kw)

    gw.reactor.callLater = call_later
    return names


@pytest.mark.parametrize("header_timeout, idle_timeout", [(3, 30), (50, 5), (1, 30)])
def test_an_http11_connection_reuses_the_handshake_timer(make, header_timeout, idle_timeout):
    gw = make(upstream="builtin:echo", listener=f"header_timeout = {header_timeout}\nidle_timeout = {idle_timeout}\n")
    gw.flush()
    timers = _count_timers(gw)
    client = gw.client(alpn=("http/1.1",))
    assert client.get("/a/x").status == 200
    # The handshake timer is first due within the close's grace: HTTP/1.1 takes it over, no second callLater.
    assert timers == ["Negotiator._handshake_timeout"]
    # Either way the idle connection gets its whole idle_timeout, then is closed.
    gw.advance(idle_timeout - 1)
    assert not client.closed
    gw.advance(2)
    assert client.closed


def test_a_connection_closed_after_its_request_keeps_its_one_timer(make):
    gw = make(upstream="builtin:echo")
    gw.flush()
    timers = _count_timers(gw)
    client = gw.client(alpn=("http/1.1",))
    assert client.get("/a/x", headers=[("connection", "close")]).status == 200
    gw.flush()
    assert client.closed
    assert timers == ["Negotiator._handshake_timeout"]  # the close's grace went on it, then it was cancelled
    assert not [c for c in gw.reactor.getDelayedCalls() if getattr(c.func, "__module__", "").startswith("txgate.")]


def test_a_slow_handshake_gets_its_whole_header_timeout(make):
    gw = make(upstream="builtin:echo", listener="header_timeout = 7\n")
    gw.flush()
    timers = _count_timers(gw)
    client = gw.client(tls=False)  # connects and never sends a ClientHello
    gw.advance(6.9)
    assert not client.closed
    gw.advance(0.2)
    assert client.closed
    assert timers == ["Negotiator._handshake_timeout"] * 2  # first due within the grace, then re-armed once
    assert handshakes(gw) == {("unknown", "timeout"): 1}


# -- ACME TLS-ALPN-01 ----------------------------------------------------------------------------------
def _acme_creator(server_name: str):
    """A TLS client offering only acme-tls/1 for ``server_name``, as a CA's validator does (no verification:
    the challenge certificate is self-signed)."""
    from OpenSSL import SSL
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from zope.interface import implementer

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_alpn_protos([b"acme-tls/1"])

    @implementer(IOpenSSLClientConnectionCreator)
    class Creator:
        def clientConnectionForTLS(self, proto):
            conn = SSL.Connection(ctx, None)
            conn.set_tlsext_host_name(server_name.encode("ascii"))
            return conn

    return Creator()


@pytest.mark.parametrize("answers", [True, False], ids=["answers-close-notify", "never-answers"])
def test_an_acme_tls_alpn_connection_closes_on_its_one_timer(make, monkeypatch, answers):
    """The acme-tls/1 handshake is the answer (RFC 8737); then the close is any connection's: close_notify,
    then abort after the grace, on the connection's one timer (tests/test_deadlines_e2e.py over sockets)."""
    from txgate.http.closing import GRACE
    from txgate.testing.client import GatewayClient

    gw = make(upstream="builtin:echo")
    gw.service.challenges.add_alpn("acme.example", "token.thumbprint")
    gw.flush()
    timers = _count_timers(gw)
    if not answers:  # the client stops reading once its handshake is done: it never sees the close_notify
        done = GatewayClient._handshake_done
        monkeypatch.setattr(GatewayClient, "_handshake_done", lambda self: (done(self), self.wire.pauseProducing()))
    client = gw.client(creator=_acme_creator("acme.example"))
    assert client.alpn == "acme-tls/1"
    if not answers:
        gw.advance(GRACE - 0.1)
        assert not client.closed
        gw.advance(0.2)
    assert client.closed
    assert handshakes(gw) == {("TLSv1.3", "ok"): 1}
    assert timers == ["Negotiator._handshake_timeout"]  # the close's grace went on it
    assert not [c for c in gw.reactor.getDelayedCalls() if getattr(c.func, "__module__", "").startswith("txgate.")]
