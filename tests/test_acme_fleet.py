"""One order per certificate across a fleet: the Redis order lock is kept alive by its holder for a long
order, and two gateways configured for the same name on one redis-server make exactly one order at pebble."""
# -*- test-case-name: tests.test_acme_fleet -*-
from __future__ import annotations

import time

import pytest

from conftest import poll
from test_store import SECRET, open_store
from test_store_redis import redis_server  # noqa: F401 (a fixture)

SLOT = "acme/www.fleet-test.example"


def test_the_holder_refreshes_the_lock_past_its_ttl_and_removes_it_at_the_end(redis_server, tmp_path):  # noqa: F811
    from txgate.acme.service import FleetBusy, fleet_lock

    redis_server.client().flushdb()
    a = open_store(redis_server.url(), str(tmp_path / "a"), SECRET)
    b = open_store(redis_server.url(), str(tmp_path / "b"), SECRET)
    try:
        key = a._k("acme-lock", SLOT)
        with fleet_lock(a, str(tmp_path / "a"), SLOT, ttl=0.6):
            time.sleep(2.0)  # the order takes more than three TTLs
            assert a._r.pttl(key) > 0
            with pytest.raises(FleetBusy):
                with fleet_lock(b, str(tmp_path / "b"), SLOT, ttl=0.6):
                    pass
        assert a._r.get(key) is None
        with fleet_lock(b, str(tmp_path / "b"), SLOT, ttl=0.6):
            pass
    finally:
        a.close()
        b.close()


def test_a_lost_lock_is_not_taken_back(redis_server, tmp_path):  # noqa: F811
    from twisted.logger import formatEvent, globalLogPublisher

    from txgate.acme.service import fleet_lock

    redis_server.client().flushdb()
    a = open_store(redis_server.url(), str(tmp_path / "a"), SECRET)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        key = a._k("acme-lock", SLOT)
        with fleet_lock(a, str(tmp_path / "a"), SLOT, ttl=0.6):
            a._r.set(key, "someone-else")  # expired meanwhile and taken by another gateway
            poll(lambda: any("was lost" in formatEvent(e) for e in events), 5, what="the refresher noticing")
            assert a._r.pttl(key) == -1  # the refresher did not touch the other's key
        assert a._r.get(key) == "someone-else"  # the holder does not delete what is no longer its own
    finally:
        globalLogPublisher.removeObserver(events.append)
        a.close()


# -- two gateways, one name, one redis-server: exactly one order at the CA --------------------------
from acme_pebble import pebble_available  # noqa: E402
from test_acme_e2e import NAME, _config, acme_env  # noqa: E402,F401 (a fixture)


def _leaf_der(port: int) -> bytes:
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=NAME) as t:
            return t.getpeercert(binary_form=True)


def _issuer_cn(der: bytes) -> str:
    from cryptography import x509

    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


@pytest.mark.skipif(not pebble_available(), reason="pebble is not installed (apt-get install pebble)")
@pytest.mark.timeout(180)
def test_two_gateways_with_the_same_name_make_one_order_and_serve_the_same_certificate(
        acme_env, tmp_path, redis_server):  # noqa: F811
    from conftest import free_port

    redis_server.client().flushdb()
    secret = tmp_path / "store-secret"
    secret.write_bytes(SECRET)
    store = f"store = {redis_server.url()}\nstore_secret_file = {secret}"
    start_pebble, start_gateway = acme_env
    ports = {gw: (free_port(), free_port()) for gw in "ab"}
    pebble = start_pebble(*ports["a"])  # pebble validates against A; whichever orders, A answers
    gws = {gw: start_gateway(_config(pebble, *ports[gw], "http-01").replace("[gateway]\n", f"[gateway]\n{store}\n"),
                             name=gw) for gw in "ab"}
    poll(lambda: any("acme: certificate for www.acme-test.example issued" in g.output() for g in gws.values()), 90,
         0.5, "one gateway's certificate")
    ders = poll(lambda: (d := {gw: _leaf_der(ports[gw][1]) for gw in "ab"}) and d["a"] == d["b"]
                and "Pebble" in _issuer_cn(d["a"]) and d, 30, 0.3, "both gateways serving the same ACME certificate")
    assert "Pebble" in _issuer_cn(ders["a"])
    orders = sum(g.output().count("acme: ordering a certificate for") for g in gws.values())
    assert orders == 1, {gw: g.output() for gw, g in gws.items()}
    # The CA's own count of new orders. Not "POST /order-plz": pebble rejects 5% of good nonces, and the
    # acme client then posts the same new-order request again (one order, two POSTs; seen in CI).
    assert pebble.log().count("Added order") == 1, pebble.log()
