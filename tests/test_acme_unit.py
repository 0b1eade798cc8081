"""ACME decisions and answers without a CA: scheduling, backoff, the RFC 8737 certificate, the challenge
board, TLS-ALPN-01 in an in-memory handshake, HTTP-01/redirect dispatch, the service's retries on a clock."""
from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.task import Clock

from txgate.acme import schedule
from txgate.acme.challenges import ACME_IDENTIFIER_OID, ChallengeBoard, tls_alpn_certificate
from txgate.http.static import https_location

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def info(days_before: float, days_after: float, sans=("www.example.com",)):
    return SimpleNamespace(not_before=T0 - timedelta(days=days_before), not_after=T0 + timedelta(days=days_after),
                           sans=sans, issuer="CN=test")


# -- scheduling ---------------------------------------------------------------------------------
def test_renewal_time_is_the_ratio_of_the_lifetime_before_expiry():
    assert schedule.renewal_at(T0, T0 + timedelta(days=90), 1 / 3) == T0 + timedelta(days=60)
    assert schedule.renewal_at(T0, T0 + timedelta(seconds=60), 0.5) == T0 + timedelta(seconds=30)


@pytest.mark.parametrize("current, order, reason", [
    (None, True, "missing"),
    (info(10, 80, sans=("other.example.com",)), True, "names"),
    (info(100, -1), True, "expired"),
    (info(10, 80), False, "ratio"),
    (info(70, 20), True, "ratio"),
])
def test_decide(current, order, reason):
    d = schedule.decide(T0, ("www.example.com",), current, 0.33)
    assert (d.order, d.reason) == (order, reason)


def test_ari_window_wins_over_the_ratio():
    d = schedule.decide(T0, ("www.example.com",), info(10, 80), 0.33, ari_at=T0 - timedelta(minutes=1))
    assert (d.order, d.reason) == (True, "ari")
    d = schedule.decide(T0, ("www.example.com",), info(70, 20), 0.33, ari_at=T0 + timedelta(days=5))
    assert (d.order, d.reason, d.renew_at) == (False, "ari", T0 + timedelta(days=5))


def test_next_check_is_at_most_ten_minutes_with_jitter_and_never_negative():
    rng = random.Random(1)
    far = schedule.next_check(T0, T0 + timedelta(days=30), rng=rng)
    assert 540 <= far <= 600
    assert schedule.next_check(T0, T0 + timedelta(seconds=42), rng=rng) == 42
    assert schedule.next_check(T0, T0 - timedelta(seconds=5), rng=rng) == 0


def test_backoff_doubles_is_capped_and_honours_retry_after():
    rng = SimpleNamespace(random=lambda: 0.0)
    assert [schedule.backoff(n, base=60, rng=rng) for n in (1, 2, 3)] == [60, 120, 240]
    assert schedule.backoff(30, base=60, rng=rng) == schedule.BACKOFF_CAP
    assert schedule.backoff(1, retry_after=900, base=60, rng=rng) == 900
    jittered = schedule.backoff(2, base=60, rng=SimpleNamespace(random=lambda: 1.0))
    assert 96 <= jittered < 120


def test_ari_choice_is_inside_the_window():
    end = T0 + timedelta(days=2)
    assert T0 <= schedule.ari_choice(T0, end, random.Random(3)) <= end
    assert schedule.ari_choice(end, T0) == end


# -- challenge answers ---------------------------------------------------------------------------
def test_tls_alpn_certificate_has_the_critical_acme_identifier():
    cert, _key = tls_alpn_certificate("www.example.com", "tok.thumb")
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.com"]


def test_board_answers_pending_http_tokens_only():
    board = ChallengeBoard()
    board.add_http("tok", "tok.thumb")
    assert board.http_answer("/.well-known/acme-challenge/tok") == "tok.thumb"
    assert board.http_answer("/.well-known/acme-challenge/other") is None
    assert board.http_answer("/tok") is None
    board.remove_http("tok")
    assert board.http_answer("/.well-known/acme-challenge/tok") is None


def _handshake(server_tls, alpn: list[bytes], sni: bytes):
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(sni)
    client.set_alpn_protos(alpn)
    server = server_tls.serverConnectionForTLS(None)
    server.set_accept_state()
    for _ in range(20):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                data = a.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                b.bio_write(data)
    return client


@pytest.fixture
def server_tls():
    from certs_helpers import make_ca, make_leaf

    from txgate.tls.server import ServerTLS

    return ServerTLS(default=make_leaf(make_ca(), ["www.example.com"]))


def test_tls_alpn_01_presents_the_challenge_certificate_only_for_acme_tls_1(server_tls):
    board = ChallengeBoard()
    board.add_alpn("www.example.com", "tok.thumb")
    server_tls.challenges = board
    c = _handshake(server_tls, [b"acme-tls/1"], b"www.example.com")
    assert c.get_alpn_proto_negotiated() == b"acme-tls/1"
    leaf = c.get_peer_certificate(as_cryptography=True)
    assert leaf.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID).critical
    # An ordinary client for the same name gets the normal certificate and protocol.
    c = _handshake(server_tls, [b"h2", b"http/1.1"], b"www.example.com")
    assert c.get_alpn_proto_negotiated() == b"h2"
    with pytest.raises(x509.ExtensionNotFound):
        c.get_peer_certificate(as_cryptography=True).extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    # acme-tls/1 for a name with no pending challenge is not negotiated.
    c = _handshake(server_tls, [b"acme-tls/1"], b"other.example.com")
    assert c.get_alpn_proto_negotiated() == b""


@pytest.mark.parametrize("authority, target, location", [
    (b"www.example.com", b"/a?b=1", b"https://www.example.com/a?b=1"),
    (b"www.example.com:8080", b"/", b"https://www.example.com/"),
    (b"[::1]:80", b"/x", b"https://[::1]/x"),
])
def test_https_location(authority, target, location):
    assert https_location(authority, target) == location


# -- the service on a clock ----------------------------------------------------------------------
class FakeStore:
    def __init__(self):
        self.entries = {}

    def get(self, slot):
        from txgate.store import StoreError

        if slot not in self.entries:
            raise StoreError("not_found", slot)
        return self.entries[slot]


def _service(clock, store, order, state_dir):
    from txgate.acme.service import AcmeService

    names = ("www.example.com",)
    cfg = SimpleNamespace(acme_certificates=lambda: [names], acme=SimpleNamespace(renew_ratio=0.33),
                          gateway=SimpleNamespace(state_dir=str(state_dir)))
    svc = AcmeService(lambda: cfg, store, ChallengeBoard(), clock, secret=b"s" * 32,
                      run_blocking=lambda fn, *a: defer.maybeDeferred(fn, *a), now=lambda: T0 + timedelta(
                          seconds=clock.seconds()), backoff_base=10)
    svc._acme_client = lambda: SimpleNamespace(order=order)
    return svc, names


def test_failed_orders_back_off_and_are_reported(monkeypatch, tmp_path):
    from txgate.acme import service as service_mod
    from txgate.acme.client import AcmeFailure

    monkeypatch.setattr(service_mod, "fleet_lock", lambda *a, **k: _nolock())
    clock, store = Clock(), FakeStore()
    calls = []

    def order(names, board, log=None):
        calls.append(clock.seconds())
        raise AcmeFailure("connection_failed", "pebble is down")

    svc, names = _service(clock, store, order, tmp_path)
    svc.startService()
    clock.advance(0)
    assert calls == [0]
    st = svc.states[names]
    assert st.failures == 1 and st.last_error == "connection_failed: pebble is down"
    for _ in range(3):
        clock.advance(st.call.getTime() - clock.seconds())
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert len(calls) == 4 and all(later > earlier for earlier, later in zip(gaps, gaps[1:]))
    assert svc.status()[0]["failures"] == 4
    # What `txgate acme status` reads: the failures, the last error and the next attempt.
    from txgate.acme.status import read_status

    saved = read_status(str(tmp_path))["certificates"][0]
    assert saved["failures"] == 4 and saved["last_error"] == "connection_failed: pebble is down"
    assert saved["next_check"] == svc.status()[0]["next_check"]
    svc.stopService()


def test_a_renewed_certificate_by_another_gateway_is_picked_up_without_ordering(monkeypatch, tmp_path):
    from txgate.acme import service as service_mod

    monkeypatch.setattr(service_mod, "fleet_lock", lambda *a, **k: _nolock())
    clock, store = Clock(), FakeStore()
    store.entries["acme/www.example.com"] = SimpleNamespace(info=info(1, 89), chain_pem=b"")
    svc, names = _service(clock, store, lambda *a, **k: pytest.fail("ordered"), tmp_path)
    svc.startService()
    clock.advance(0)
    st = svc.states[names]
    assert st.reason == "ratio" and st.orders == 0 and st.failures == 0
    assert 0 < (st.next_check - T0).total_seconds() <= 600
    svc.stopService()


def test_fleet_lock_is_exclusive(tmp_path):
    from txgate.acme.service import FleetBusy, fleet_lock

    with fleet_lock(None, str(tmp_path), "acme/www.example.com"):
        with pytest.raises(FleetBusy):
            with fleet_lock(None, str(tmp_path), "acme/www.example.com"):
                pass
    with fleet_lock(None, str(tmp_path), "acme/www.example.com"):
        pass


class _nolock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_directory_store_keeps_namespaced_names_in_one_file(tmp_path):
    from certs_helpers import make_ca, make_leaf, pem_chain, pem_key

    from txgate.store.directory import DirectoryStore

    store = DirectoryStore(str(tmp_path / "store"), b"s" * 32)
    ck = make_leaf(make_ca(), ["www.example.com"])
    store.put("acme/www.example.com", pem_chain(ck), pem_key(ck))
    assert [i.name for i in store.list()] == ["acme/www.example.com"]
    assert store.get("acme/www.example.com").key is not None
    assert (tmp_path / "store" / "names" / "acme%2Fwww.example.com.json").exists()
