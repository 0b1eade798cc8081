"""OCSP without sockets: response verification, the refresh schedule, staple refreshers and client checks on a
clock, the ocsp config keys and the plan's stapling decisions."""
from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import defer
from twisted.internet.task import Clock

from ocsp_helpers import NOW, build_response, make_cert
from txgate.config import ConfigError
from txgate.config.ini import parse_text
from txgate.ocsp import cache
from txgate.ocsp.check import OCSPError, build_request, cert_key, must_staple, responder_url, verify_response
from txgate.ocsp.client import Answer, ClientStatusChecker, decide
from txgate.ocsp.fetch import FetchError, request_target
from txgate.ocsp.schedule import MIN_REFRESH, RETRY_FIRST, RETRY_MAX, refresh_delay, retry_delay
from txgate.ocsp.staple import Refresher, StapleHolder, StapleTarget, Stapling, load_cached


@pytest.fixture(scope="module")
def pki():
    root = make_cert(None, "ocsp unit root", ca=True)
    leaf = make_cert(root, "leaf", names=("leaf.example",), ocsp_url="http://ocsp.example/", must_staple=True)
    delegated = make_cert(root, "ocsp signer", eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    no_eku = make_cert(root, "not a signer", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    stranger = make_cert(None, "stranger", ca=True)
    return dict(root=root, leaf=leaf, delegated=delegated, no_eku=no_eku, stranger=stranger)


def verify(pki, der, now=None):
    return verify_response(der, pki["leaf"].leaf, pki["root"].leaf, now or NOW)


# -- response checking --------------------------------------------------------------------------
def test_good_response_signed_by_the_issuer(pki):
    st = verify(pki, build_response(pki["leaf"].leaf, pki["root"]))
    assert st.status == "good" and st.current(NOW)


def test_revoked_response_is_verified_as_revoked(pki):
    st = verify(pki, build_response(pki["leaf"].leaf, pki["root"], status="revoked"))
    assert st.status == "revoked" and st.revocation_time is not None


def test_delegated_responder_with_ocsp_signing_eku_is_trusted(pki):
    assert verify(pki, build_response(pki["leaf"].leaf, pki["root"], signer=pki["delegated"])).status == "good"


def test_delegated_responder_without_ocsp_signing_eku_is_not_trusted(pki):
    with pytest.raises(OCSPError) as e:
        verify(pki, build_response(pki["leaf"].leaf, pki["root"], signer=pki["no_eku"]))
    assert e.value.reason == "untrusted_responder"


def test_responder_not_issued_by_the_issuer_is_not_trusted(pki):
    signer = make_cert(pki["stranger"], "foreign signer", eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    with pytest.raises(OCSPError) as e:
        verify(pki, build_response(pki["leaf"].leaf, pki["root"], signer=signer))
    assert e.value.reason == "untrusted_responder"


def test_response_for_another_serial_is_refused(pki):
    with pytest.raises(OCSPError) as e:
        verify(pki, build_response(pki["leaf"].leaf, pki["root"], serial="other"))
    assert e.value.reason == "wrong_certificate"


def test_expired_and_future_responses_are_refused(pki):
    old = build_response(pki["leaf"].leaf, pki["root"], this_update=NOW - timedelta(days=3))
    with pytest.raises(OCSPError) as e:
        verify(pki, old)
    assert e.value.reason == "expired"
    future = build_response(pki["leaf"].leaf, pki["root"], this_update=NOW + timedelta(hours=1))
    with pytest.raises(OCSPError) as e:
        verify(pki, future)
    assert e.value.reason == "not_yet_valid"


def test_tampered_or_garbage_responses_are_refused(pki):
    der = bytearray(build_response(pki["leaf"].leaf, pki["root"]))
    der[-5] ^= 0xFF  # inside the signature
    with pytest.raises(OCSPError) as e:
        verify(pki, bytes(der))
    assert e.value.reason in ("bad_signature", "malformed")
    with pytest.raises(OCSPError) as e:
        verify(pki, b"not ocsp")
    assert e.value.reason == "malformed"


def test_certificate_facts(pki):
    leaf, root = pki["leaf"].leaf, pki["root"].leaf
    assert responder_url(leaf) == "http://ocsp.example/"
    assert responder_url(root) is None
    assert must_staple(leaf) and not must_staple(root)
    assert cert_key(leaf, root).endswith(f"-{leaf.serial_number:x}")
    assert build_request(leaf, root)


def test_small_requests_use_get_and_large_ones_post():
    method, url, body = request_target("http://r.example", b"x" * 50)
    assert method == b"GET" and url.startswith(b"http://r.example/") and body is None
    method, url, body = request_target("http://r.example/", b"x" * 400)
    assert (method, url, body) == (b"POST", b"http://r.example/", b"x" * 400)


# -- scheduling ---------------------------------------------------------------------------------
def test_refresh_at_half_the_window_with_jitter():
    this, nxt = NOW, NOW + timedelta(hours=10)
    assert refresh_delay(this, nxt, NOW, 0.5) == pytest.approx(5 * 3600)
    assert refresh_delay(this, nxt, NOW, 0.0) == pytest.approx(4 * 3600)
    assert refresh_delay(this, nxt, NOW, 0.999) == pytest.approx(6 * 3600, rel=1e-3)


def test_refresh_past_half_way_is_soon_but_not_a_loop():
    this, nxt = NOW - timedelta(hours=9), NOW + timedelta(hours=1)
    assert 1.0 <= refresh_delay(this, nxt, NOW, 0.5) <= MIN_REFRESH


def test_retry_backs_off_and_never_lets_a_good_staple_lapse():
    assert retry_delay(1, 0.5) == RETRY_FIRST
    assert retry_delay(3, 0.5) == RETRY_FIRST * 4
    assert retry_delay(50, 0.5) == RETRY_MAX
    assert retry_delay(50, 0.5, expires_in=400) == 100


# -- refreshers on a clock ----------------------------------------------------------------------
class FakeResponder:
    """fetch(url, request, timeout): answers from a queue of DER bytes or exceptions; counts calls."""

    def __init__(self):
        self.answers = []
        self.calls = 0

    def __call__(self, url, request, timeout):
        self.calls += 1
        a = self.answers.pop(0) if self.answers else FetchError("unreachable", "connection refused")
        return defer.fail(a) if isinstance(a, Exception) else defer.succeed(a)


class Counting:
    def __init__(self):
        self.failures = {}
        self.ocsp_source = None

    def ocsp_fetch_failed(self, reason):
        self.failures[reason] = self.failures.get(reason, 0) + 1


def target(pki):
    leaf, root = pki["leaf"].leaf, pki["root"].leaf
    return StapleTarget(cert_key(leaf, root), leaf, root, "http://ocsp.example/", True, ["listener:main"])


def clock_now():
    c = Clock()
    c.advance(NOW.timestamp())
    return c


def test_refresher_staples_a_verified_response_and_refreshes_at_half_window(pki):
    fetch, clock, saved = FakeResponder(), clock_now(), {}
    fetch.answers.append(build_response(pki["leaf"].leaf, pki["root"], this_update=NOW, next_update=timedelta(hours=2)))
    t = target(pki)
    r = Refresher(t, clock, fetch, save=saved.__setitem__, rnd=lambda: 0.5)
    r.start()
    clock.advance(0)
    assert t.holder.status.status == "good" and t.holder.current()
    assert t.key in saved and fetch.calls == 1
    assert r.call.getTime() - clock.seconds() == pytest.approx(3600, abs=1)
    r.stop()


def test_bad_response_is_never_stapled_and_previous_good_one_is_kept(pki):
    fetch, clock, metrics = FakeResponder(), clock_now(), Counting()
    good = build_response(pki["leaf"].leaf, pki["root"], this_update=NOW, next_update=timedelta(hours=2))
    fetch.answers += [good, build_response(pki["leaf"].leaf, pki["root"], signer=pki["no_eku"])]
    t = target(pki)
    r = Refresher(t, clock, fetch, metrics=metrics, rnd=lambda: 0.5)
    r.start()
    clock.advance(0)
    clock.advance(3600)  # the refresh gets a response from an untrusted signer
    assert fetch.calls == 2
    assert t.holder.status.der == good
    assert metrics.failures == {"untrusted_responder": 1}
    r.stop()


def test_responder_down_means_no_staple_and_retries_with_backoff(pki):
    fetch, clock, metrics = FakeResponder(), clock_now(), Counting()
    t = target(pki)
    r = Refresher(t, clock, fetch, metrics=metrics, rnd=lambda: 0.5)
    r.start()
    clock.advance(0)
    assert t.holder.current() == b"" and fetch.calls == 1
    delays = []
    for _ in range(3):
        delays.append(r.call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [RETRY_FIRST, RETRY_FIRST * 2, RETRY_FIRST * 4]
    assert metrics.failures == {"unreachable": 4}
    r.stop()
    assert not clock.getDelayedCalls()


def test_stapling_carries_refreshers_across_reloads_and_stops_unused_ones(pki):
    fetch, clock = FakeResponder(), clock_now()
    fetch.answers.append(build_response(pki["leaf"].leaf, pki["root"], this_update=NOW))
    st = Stapling(clock, fetch, metrics=Counting())
    first = target(pki)
    st.use({first.key: first}, "/nonexistent")
    clock.advance(0)
    second = target(pki)  # a reload builds new contexts and a new holder
    st.use({second.key: second}, "/nonexistent")
    assert second.holder.current() == first.holder.current() != b""
    assert fetch.calls == 1
    (name, age, missing), = st.report()
    assert name == "listener:main" and age is not None and not missing
    st.use({}, "/nonexistent")
    assert not st.refreshers and not clock.getDelayedCalls()


def test_cached_response_is_loaded_only_if_it_verifies(pki, tmp_path):
    t = target(pki)
    cache.save(str(tmp_path), t.key, build_response(pki["leaf"].leaf, pki["root"], signer=pki["no_eku"]))
    assert load_cached(t, str(tmp_path), NOW) is None and t.holder.current() == b""
    cache.save(str(tmp_path), t.key, build_response(pki["leaf"].leaf, pki["root"]))
    assert load_cached(t, str(tmp_path), NOW).status == "good" and t.holder.current()


def test_holder_stops_stapling_an_expired_response(pki):
    clock = [NOW.timestamp()]
    h = StapleHolder(now=lambda: clock[0])
    h.set(verify(pki, build_response(pki["leaf"].leaf, pki["root"], this_update=NOW, next_update=timedelta(hours=1))))
    assert h.callback(None, None)
    clock[0] += 3601
    assert h.callback(None, None) == b""


# -- client checks ------------------------------------------------------------------------------
def test_client_decisions():
    assert decide(Answer("good"), "hard") is None
    assert decide(Answer("revoked"), "soft").code == "client_certificate_revoked"
    assert decide(Answer("unknown"), "soft") is None
    assert decide(Answer("unknown"), "hard").code == "client_certificate_status_unknown"


def test_client_checker_caches_and_asks_once_for_concurrent_connections(pki):
    clock = clock_now()
    pending = []

    def fetch(url, request, timeout):
        d = defer.Deferred()
        pending.append(d)
        return d

    checker = ClientStatusChecker(clock, fetch, max_entries=1)
    leaf, root = pki["leaf"].leaf, pki["root"].leaf
    got = []
    checker.check(leaf, root, None, 2).addCallback(got.append)
    checker.check(leaf, root, None, 2).addCallback(got.append)
    assert len(pending) == 1 and got == []
    pending[0].callback(build_response(leaf, pki["root"], status="revoked"))
    assert [a.status for a in got] == ["revoked", "revoked"]
    checker.check(leaf, root, None, 2).addCallback(got.append)  # cached
    assert len(pending) == 1 and got[-1].status == "revoked"
    other = make_cert(pki["root"], "other", client=True).leaf
    checker.check(other, root, "http://r.example", 2)
    pending[1].errback(FetchError("timeout", "no answer within 2s"))
    assert len(checker.cache) == 1  # bounded; the failure is not cached


def test_client_checker_without_responder_answers_unknown(pki):
    checker = ClientStatusChecker(clock_now(), FakeResponder())
    got = []
    checker.check(pki["root"].leaf, pki["root"].leaf, None, 2).addCallback(got.append)
    assert got[0].status == "unknown"


# -- config and plan ----------------------------------------------------------------------------
BASE = "[listener:main]\nbind = 127.0.0.1:0\n"


def test_ocsp_keys_defaults():
    ln = parse_text(BASE, "gw.ini").listeners[0]
    assert (ln.ocsp_stapling, ln.ocsp_responder, ln.client_ocsp, ln.client_ocsp_timeout) == ("auto", None, "off", 2.0)


@pytest.mark.parametrize("text, key, why", [
    ("ocsp_stapling = always", "ocsp_stapling", "expected one of auto, on, off"),
    ("ocsp_responder = ldap://x", "ocsp_responder", "http:// or https:// URL"),
    ("ocsp_stapling = off\nocsp_responder = http://r/", "ocsp_responder", "no effect"),
    ("client_ocsp = maybe", "client_ocsp", "expected one of off, soft, hard"),
    ("client_ocsp_timeout = 5", "client_ocsp_timeout", "no effect with client_ocsp = off"),
    ("client_ocsp = soft\nclient_ocsp_timeout = 0", "client_ocsp_timeout", ""),
    ("tls = off\nocsp_stapling = on", "ocsp_stapling", "needs TLS"),
])
def test_ocsp_key_errors_name_file_section_key(text, key, why):
    with pytest.raises(ConfigError) as e:
        parse_text(BASE + text + "\n", "gw.ini")
    assert (e.value.path, e.value.section, e.value.key) == ("gw.ini", "listener:main", key)
    assert why in e.value.message


def test_cert_show_prints_the_cached_status(pki, tmp_path):
    from txgate.ocsp.show import cached_status_line

    chain = [pki["leaf"].leaf, pki["root"].leaf]
    assert cached_status_line(chain, str(tmp_path)) is None
    t = target(pki)
    cache.save(str(tmp_path), t.key, build_response(pki["leaf"].leaf, pki["root"], status="revoked"))
    line = cached_status_line(chain, str(tmp_path))
    assert line.startswith("OCSP (cached, ") and ": revoked, thisUpdate " in line
    cache.save(str(tmp_path), t.key, build_response(pki["leaf"].leaf, pki["root"], signer=pki["no_eku"]))
    assert "not usable: untrusted_responder" in cached_status_line(chain, str(tmp_path))
    assert cached_status_line(chain[:1], str(tmp_path)) is None


# -- client checks in the in-memory gateway --------------------------------------------------------
@pytest.mark.parametrize("alpn", [("http/1.1",), ("h2",)])
def test_requests_wait_for_the_client_status_then_revoked_gets_403(tmp_path, alpn):
    from txgate.testing import MemoryGateway, TestPKI, gateway_ini
    from txgate.tls.certs import CertifiedKey

    pki = TestPKI(tmp_path)
    ini = gateway_ini(pki.issue("localhost"), "[api:a]\npath = /a\nupstream = builtin:echo\nmtls = require\n",
                      listener=f"client_auth = require\nclient_ca = {pki.ca_path}\nclient_ocsp = soft\n"
                               "client_ocsp_responder = http://ocsp.example/\n")
    gw = MemoryGateway(ini, pki=pki)
    try:
        pending = []
        checker = gw.service.ocsp.clients
        checker.clock = clock_now()
        checker.fetch = lambda url, request, timeout: pending.append(defer.Deferred()) or pending[-1]
        app = pki.issue(client=True, common_name="app")
        client = gw.client(alpn=alpn, certificate=app)
        first = client.request("GET", "/a/x")
        gw.flush()
        assert len(pending) == 1 and first.status is None  # held until the answer
        ca = CertifiedKey(chain=(pki.ca.certificate,), key=pki.ca.key)
        pending[0].callback(build_response(app.leaf, ca, status="revoked"))
        gw.flush()
        assert first.status == 403 and first.code == "client_certificate_revoked"
        if alpn == ("h2",):  # (HTTP/1.1 closes after a refusal) every request of the connection is refused
            assert client.get("/a/y").code == "client_certificate_revoked"
        # A second connection with the same certificate: answered from the cache, no new query.
        assert gw.client(alpn=alpn, certificate=app).get("/a/z").status == 403 and len(pending) == 1
        # A client that leaves while its status is asked: nothing breaks.
        other = gw.client(alpn=alpn, certificate=pki.issue(client=True, common_name="other"))
        other.request("GET", "/a/x")
        gw.flush()
        other.close()
        gw.flush()
        pending[1].errback(FetchError("timeout", "no answer within 2s"))
        gw.flush()
        assert not gw.logs.matching(r"client OCSP check failed|Unhandled|Traceback")
        assert len(gw.service.connections["main"]) == (2 if alpn == ("h2",) else 0)  # "other" is gone
    finally:
        gw.stop()
