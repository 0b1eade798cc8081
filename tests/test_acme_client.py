"""The ACME client's error handling, without a CA: Retry-After kept on errors, badNonce retried, rate limits
logged with the CA's detail (the service honours the Retry-After in its backoff)."""
# -*- test-case-name: tests.test_acme_client -*-
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import requests
from acme import messages
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from txgate.acme.client import NONCE_RETRIES, AcmeFailure, Network, _failure, parse_retry_after

RATE_LIMIT_DETAIL = "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s"


def _problem(status: int, typ: str, detail: str, **headers) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = json.dumps({"type": f"urn:ietf:params:acme:error:{typ}", "detail": detail}).encode()
    r.headers.update({"Content-Type": "application/problem+json", **headers})
    return r


@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0), (" 7 ", 7.0), ("Thu, 01 Jan 2026 00:02:00 GMT", 120.0), ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),
    (None, None), ("", None), ("soon", None), ("-5", None),
])
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value, now=datetime(2026, 1, 1, tzinfo=timezone.utc)) == seconds


def test_a_rate_limit_error_keeps_the_cas_detail_and_retry_after():
    with pytest.raises(messages.Error) as e:
        Network._check_response(_problem(429, "rateLimited", RATE_LIMIT_DETAIL, **{"Retry-After": "3600"}))
    failure = _failure(e.value)
    assert (failure.code, failure.detail, failure.retry_after) == ("rateLimited", RATE_LIMIT_DETAIL, 3600.0)
    with pytest.raises(messages.Error) as e:
        Network._check_response(_problem(400, "malformed", "bad"))
    assert _failure(e.value).retry_after is None


def test_bad_nonce_is_retried_more_than_once_then_given_up():
    net = Network.__new__(Network)
    calls = []

    def post_once(url, obj, **kw):
        calls.append(url)
        if len(calls) <= 4:
            raise messages.Error.with_code("badNonce", detail="JWS has an invalid anti-replay nonce")
        return "ok"

    net._post_once = post_once
    assert net.post("https://ca/new-order", None) == "ok" and len(calls) == 5
    calls.clear()
    net._post_once = lambda *a, **k: (calls.append(1), (_ for _ in ()).throw(
        messages.Error.with_code("badNonce", detail="again")))[1]
    with pytest.raises(messages.Error):
        net.post("https://ca/new-order", None)
    assert len(calls) == NONCE_RETRIES + 1
    net._post_once = lambda *a, **k: (_ for _ in ()).throw(messages.Error.with_code("unauthorized", detail="no"))
    with pytest.raises(messages.Error):
        net.post("https://ca/new-order", None)


def test_the_service_logs_a_rate_limit_with_the_cas_detail_and_waits_its_retry_after(monkeypatch, tmp_path):
    from test_acme_unit import FakeStore, _nolock, _service
    from txgate.acme import service as service_mod

    monkeypatch.setattr(service_mod, "fleet_lock", lambda *a, **k: _nolock())
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = Clock()

        def order(names, board, log=None):
            raise AcmeFailure("rateLimited", RATE_LIMIT_DETAIL, 3 * 3600.0)

        svc, names = _service(clock, FakeStore(), order, tmp_path)
        svc.startService()
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    st = svc.states[names]
    assert st.call.getTime() >= 3 * 3600  # the first backoff would be about a minute
    assert st.last_error == f"rateLimited: {RATE_LIMIT_DETAIL}"
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "txgate.acme"]
    assert any(RATE_LIMIT_DETAIL in x and "Retry-After: 10800s" in x for x in lines), lines
    svc.stopService()


def test_new_order_json_carries_replaces_and_the_cert_id_matches_rfc_9773():
    from acme import client as acme_client

    from certs_helpers import make_ca, make_leaf, pem_chain
    from txgate.acme.client import AcmeClient, NewOrderReplacing, ari_cert_id

    leaf = make_leaf(make_ca("ari test CA"), ["www.example.com"])
    chain = pem_chain(leaf)
    cert_id = ari_cert_id(chain)
    assert cert_id == acme_client._renewal_info_path_component(leaf.chain[0])  # the library's ARI URL component
    order = NewOrderReplacing(identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="www.example.com")],
                              replaces=cert_id)
    assert json.loads(order.json_dumps())["replaces"] == cert_id

    posted = []

    class FakeV2:
        directory = {"newOrder": "https://ca/new-order"}

        def _post(self, url, obj):
            posted.append((url, json.loads(obj.json_dumps())))
            r = requests.Response()
            r.status_code, r._content = 201, json.dumps({"status": "pending", "authorizations": []}).encode()
            r.headers["Location"] = "https://ca/order/1"
            return r

        def new_order(self, csr_pem):
            posted.append(("plain", csr_pem))
            return "plain order"

    orderr = AcmeClient._new_order(FakeV2(), b"CSR", ("www.example.com",), cert_id)
    assert orderr.uri == "https://ca/order/1"
    assert posted == [("https://ca/new-order", {"identifiers": [{"type": "dns", "value": "www.example.com"}],
                                                "replaces": cert_id})]
    posted.clear()
    assert AcmeClient._new_order(FakeV2(), b"CSR", ("www.example.com",), None) == "plain order"
