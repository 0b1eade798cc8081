"""Metrics: counters from the hot-path hooks, facade-fed gauges, the text format (parsed back with
prometheus_client's parser), and the listener hook on in-memory TLS handshakes (iosim).

`FakeFacade` stands in for the service facade; the real one is exercised in test_admin_e2e.py.
"""
from __future__ import annotations

import timeit
from datetime import timedelta
from typing import Any

import pytest
from OpenSSL import SSL
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from certs_helpers import NOW, make_ca, make_leaf
from txgate.admin.facade import HeldCertificate
from txgate.errors import UpstreamPinMismatch, UpstreamTLSError
from txgate.http.exchange import Limits
from txgate.runtime.listener import ListenerFactory, wrap_tls
from txgate.metrics import Metrics, result_for_refusal
from txgate.tls.outcomes import outcome_of as result_for_handshake_error
from txgate.tls.clientverify import ClientVerifier
from txgate.tls.server import ServerTLS


class FakeFacade:
    """Stand-in for the service facade (held certificates and upstream connection counts)."""

    def __init__(self, held=(), upstreams=None, fail=False) -> None:
        self.held = list(held)
        self.upstreams = upstreams or {}
        self.fail = fail

    def held_certificates(self):
        if self.fail:
            raise RuntimeError("facade broken")
        return self.held

    def upstream_connections(self):
        if self.fail:
            raise RuntimeError("facade broken")
        return self.upstreams


class Handler:
    def __init__(self, api, last_error=None) -> None:
        self.api = api
        self.last_error = last_error


def families(metrics: Metrics) -> dict[str, Any]:
    body, ctype = metrics.exposition()
    assert ctype.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def samples(metrics: Metrics, family: str, suffix: str = "") -> dict[tuple, float]:
    fam = families(metrics)[family]
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples if s.name == family + suffix}


def test_requests_counted_by_api_and_status():
    m = Metrics()
    for _ in range(3):
        m.request_done(Handler("billing"), 200)
    m.request_done(Handler("billing"), 503)
    m.request_done(Handler(None), 404)
    m.request_done(None, 400)
    got = samples(m, "txgate_requests", "_total")
    assert got == {
        (("api", "billing"), ("status", "200")): 3,
        (("api", "billing"), ("status", "503")): 1,
        (("api", "-"), ("status", "404")): 1,
        (("api", "-"), ("status", "400")): 1,
    }


def test_upstream_pin_mismatch_counts_as_an_upstream_handshake_failure():
    m = Metrics()
    m.request_done(Handler("billing", UpstreamPinMismatch("pin mismatch")), 502)
    m.request_done(Handler("billing", UpstreamTLSError("other tls")), 502)
    m.request_done(Handler("billing", UpstreamPinMismatch("stale")), 200)  # answered by a retry: not a failure
    got = samples(m, "txgate_tls_handshakes", "_total")
    assert got == {(("listener", "upstream:billing"), ("result", "pin_mismatch"), ("version", "unknown")): 1}


def test_handshakes_counted_by_listener_version_result():
    m = Metrics()
    m.handshake("main", "TLSv1.3", "ok")
    m.handshake("main", "TLSv1.3", "ok")
    m.handshake("main", None, "unknown_ca")
    got = samples(m, "txgate_tls_handshakes", "_total")
    assert got[(("listener", "main"), ("result", "ok"), ("version", "TLSv1.3"))] == 2
    assert got[(("listener", "main"), ("result", "unknown_ca"), ("version", "unknown"))] == 1


def test_expiry_and_upstream_gauges_come_from_the_facade_at_scrape_time():
    m = Metrics()
    assert samples(m, "txgate_certificate_expiry_timestamp_seconds") == {}
    facade = FakeFacade()
    m.attach(facade)
    na = NOW + timedelta(days=40)
    facade.held = [
        HeldCertificate("listener:main", "listener", "aa" * 32, na, "CN=a"),
        HeldCertificate("store:web", "store", "bb" * 32, NOW - timedelta(days=1), "CN=b"),
        HeldCertificate("listener:main", "listener", "aa" * 32, na, "CN=a"),  # duplicates collapse
    ]
    facade.upstreams = {"billing": 2, "search": 0}
    got = samples(m, "txgate_certificate_expiry_timestamp_seconds")
    assert got == {
        (("fingerprint", "aa" * 32), ("name", "listener:main"), ("role", "listener")): na.timestamp(),
        (("fingerprint", "bb" * 32), ("name", "store:web"), ("role", "store")): (NOW - timedelta(days=1)).timestamp(),
    }
    assert samples(m, "txgate_upstream_connections") == {(("api", "billing"),): 2, (("api", "search"),): 0}
    facade.held = []  # a certificate no longer held disappears at the next scrape
    assert samples(m, "txgate_certificate_expiry_timestamp_seconds") == {}


def test_a_broken_facade_does_not_break_the_scrape():
    m = Metrics()
    m.attach(FakeFacade(fail=True))
    m.request_done(Handler("a"), 200)
    fams = families(m)
    assert fams["txgate_requests"].samples
    assert not fams["txgate_upstream_connections"].samples


def test_each_metrics_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.request_done(Handler("x"), 200)
    assert samples(b, "txgate_requests", "_total") == {}


@pytest.mark.parametrize("code, result", [
    ("client_certificate_untrusted", "unknown_ca"),
    ("client_certificate_expired", "expired"),
    ("client_certificate_not_yet_valid", "not_yet_valid"),
    ("client_certificate_revoked", "revoked"),
    ("client_certificate_required", "no_certificate"),
    ("client_certificate_not_allowed", "not_allowed"),
    ("client_certificate_wrong_purpose", "invalid_certificate"),
    ("client_crl_expired", "invalid_certificate"),
    ("something_new", "failed"),
])
def test_refusal_codes_map_to_results(code, result):
    assert result_for_refusal(code) == result


@pytest.mark.parametrize("why, result", [
    ("wrong version number", "protocol_error"),
    ("http request", "protocol_error"),
    ("no shared cipher", "protocol_error"),
    ("unsupported protocol", "protocol_error"),
    ("ConnectionDone: Connection was closed cleanly.", "aborted"),
    ("tlsv1 alert unknown ca", "failed"),
])
def test_other_handshake_errors_map_to_kinds(why, result):
    assert result_for_handshake_error(why) == result


def test_request_done_is_cheap():
    """The hot-path hook: a dict update, no formatting (generous bound: shared CI machines are noisy)."""
    m = Metrics()
    h = Handler("billing")
    m.request_done(h, 200)
    per_call = min(timeit.repeat(lambda: m.request_done(h, 200), number=20000, repeat=5)) / 20000
    assert per_call < 5e-6, per_call


# -- the listener hook, on in-memory handshakes ---------------------------------------------------


class _Dispatcher:
    """Just enough of ListenerDispatcher for a connection that sends no request."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def dispatch(self, stream, head):  # pragma: no cover - no request is sent
        raise AssertionError("no request expected")

    def log_request(self, *args):
        pass


class _Quiet(Protocol):
    pass


@pytest.fixture(scope="module")
def pki():
    ca = make_ca("metrics test CA")
    return {
        "ca": ca,
        "server": make_leaf(ca, ["localhost"]),
        "client": make_leaf(ca, ["alice"], client=True),
        "expired": make_leaf(ca, ["old"], client=True, not_before=NOW - timedelta(days=10),
                             not_after=NOW - timedelta(days=1)),
        "stranger": make_leaf(make_ca("stranger"), ["eve"], client=True),
    }


def _handshake(pki, client_cert, *, mode="require", tls=True, raw: bytes | None = None) -> Metrics:
    metrics = Metrics()
    clock = Clock()
    verifier = ClientVerifier(listener="main", mode=mode, anchors=[pki["ca"].leaf])
    factory = ListenerFactory("main", _Dispatcher(metrics), Limits(), clock, tls=True, max_connections=10,
                              client_certs=verifier, metrics=metrics)
    server_tls = ServerTLS(default=pki["server"], client_verifier=verifier)
    sp = wrap_tls(factory, server_tls, clock).buildProtocol(None)
    if raw is not None:
        transport = iosim.FakeTransport(sp, isServer=True)
        sp.makeConnection(transport)
        sp.dataReceived(raw)
        sp.connectionLost(None)
        return metrics
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_alpn_protos([b"http/1.1"])
    if client_cert is not None:
        ctx.use_certificate(client_cert.leaf)
        ctx.use_privatekey(client_cert.key)

    class Creator:
        def clientConnectionForTLS(self, proto):
            return SSL.Connection(ctx, None)

    from zope.interface import directlyProvides
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

    creator = Creator()
    directlyProvides(creator, IOpenSSLClientConnectionCreator)
    cp = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(_Quiet), clock=clock).buildProtocol(None)
    pump = iosim.connect(sp, iosim.makeFakeServer(sp), cp, iosim.makeFakeClient(cp), greet=False)
    pump.flush()
    cp.write(b"GET")  # TLS 1.3: the server judges the client certificate after the client's Finished
    pump.flush()
    return metrics


def _results(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {(dict(k)["version"], dict(k)["result"]): v
            for k, v in samples(metrics, "txgate_tls_handshakes", "_total").items()}


def test_listener_counts_a_completed_handshake_with_its_version(pki):
    assert _results(_handshake(pki, pki["client"])) == {("TLSv1.3", "ok"): 1}


@pytest.mark.parametrize("cert, result", [("stranger", "unknown_ca"), ("expired", "expired"),
                                          (None, "no_certificate")])
def test_listener_counts_refused_client_certificates_by_reason(pki, cert, result):
    metrics = _handshake(pki, pki[cert] if cert else None)
    assert _results(metrics) == {("unknown", result): 1}


def test_listener_counts_plain_http_on_a_tls_port_as_protocol_error(pki):
    metrics = _handshake(pki, None, raw=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _results(metrics) == {("unknown", "protocol_error"): 1}
