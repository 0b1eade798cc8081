"""ACME end to end against a real pebble: issuance via HTTP-01 and TLS-ALPN-01, then renewal."""
# -*- test-case-name: tests.test_acme_e2e -*-
from __future__ import annotations

import pytest

from acme_pebble import Pebble, pebble_available
from conftest import Gateway, curl, free_port, poll

pytestmark = pytest.mark.skipif(not pebble_available(), reason="pebble is not installed (apt-get install pebble)")

NAME = "www.acme-test.example"


def _config(pebble: Pebble, http_port: int, tls_port: int, challenges: str, extra_acme: str = "") -> str:
    return f"""
[gateway]
state_dir = ./txgate-state
access_log = off

[admin]
bind = off

[acme]
directory = {pebble.directory}
ca_bundle = {pebble.ca_bundle}
email = ops@acme-test.example
agree_tos = yes
challenges = {challenges}
{extra_acme}

[listener:http]
bind = 127.0.0.1:{http_port}
tls = off

[listener:https]
bind = 127.0.0.1:{tls_port}
certificate = acme

[api:echo]
listeners = https
hosts = {NAME}
path = /
upstream = builtin:echo
"""


@pytest.fixture
def acme_env(tmp_path):
    """(pebble factory, gateway factory); everything started is stopped at the end."""
    started = []

    def pebble(http_port, tls_port, **kw):
        p = Pebble(tmp_path / "pebble", http_port=http_port, tls_port=tls_port, **kw)
        started.append(p)
        return p.start()

    def gateway(text, name="gw", **kw):
        gw = Gateway(tmp_path / name, text, **kw)
        started.append(gw)
        return gw.start()

    yield pebble, gateway
    for thing in reversed(started):
        try:
            thing.stop()
        except AssertionError:
            pass


def _served_by_pebble(gw, tls_port: int, root: str) -> bool:
    r = curl("--cacert", root, "--resolve", f"{NAME}:{tls_port}:127.0.0.1", f"https://{NAME}:{tls_port}/hello")
    return r.returncode == 0 and b'"path": "/hello"' in r.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_issuance_then_curl_verifies_against_pebble_root(acme_env, tmp_path, challenge):
    start_pebble, start_gateway = acme_env
    http_port, tls_port = free_port(), free_port()
    pebble = start_pebble(http_port, tls_port)
    gw = start_gateway(_config(pebble, http_port, tls_port, challenge))
    gw.wait_log(r"no ACME certificate for www.acme-test.example yet")
    # Meanwhile the local CA's placeholder serves.
    r = curl("--cacert", gw.ca, "--resolve", f"{NAME}:{tls_port}:127.0.0.1", f"https://{NAME}:{tls_port}/x")
    assert r.returncode == 0, r.stderr
    gw.wait_log(r"acme: certificate for www.acme-test.example issued", timeout=60)
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    poll(lambda: _served_by_pebble(gw, tls_port, str(root)), 20, 0.2, "the ACME certificate being served")
    if challenge == "http-01":
        # The plain listener has no API: anything but a challenge is redirected to https.
        r = curl("-i", f"http://127.0.0.1:{http_port}/some/path?q=1", "-H", f"Host: {NAME}")
        assert b"308" in r.stdout.split(b"\r\n")[0]
        assert f"location: https://{NAME}/some/path?q=1".encode() in r.stdout.lower()


@pytest.mark.timeout(150)
def test_short_lived_certificate_is_renewed_and_store_keeps_both_versions(acme_env, tmp_path):
    start_pebble, start_gateway = acme_env
    http_port, tls_port = free_port(), free_port()
    pebble = start_pebble(http_port, tls_port, validity=20)
    gw = start_gateway(_config(pebble, http_port, tls_port, "tls-alpn-01 http-01", "renew_ratio = 0.7"))
    gw.wait_log(r"acme: certificate for www.acme-test.example issued", timeout=60)
    poll(lambda: gw.output().count("acme: certificate for www.acme-test.example issued") >= 2, 60, 0.2,
         "a renewal")
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    poll(lambda: _served_by_pebble(gw, tls_port, str(root)), 20, 0.2, "the renewed certificate being served")
    gw.stop()
    from conftest import txgate_cli

    r = txgate_cli("store", "list", "--config", str(gw.config_path), cwd=gw.workdir)
    line = next(x for x in r.stdout.splitlines() if x.startswith("acme/www.acme-test.example@"))
    assert "versions=1,2" in line, r.stdout + r.stderr


def _issued_and_served(acme_env, tmp_path, challenges: str, extra_acme: str = "", **pebble_kw):
    """pebble and a gateway; returns once the ACME certificate is served: (gateway, a served() check)."""
    start_pebble, start_gateway = acme_env
    http_port, tls_port = free_port(), free_port()
    pebble = start_pebble(http_port, tls_port, **pebble_kw)
    gw = start_gateway(_config(pebble, http_port, tls_port, challenges, extra_acme))
    gw.wait_log(r"acme: certificate for www.acme-test.example issued", timeout=90)
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())

    def served() -> bool:
        return _served_by_pebble(gw, tls_port, str(root))

    poll(served, 20, 0.2, "the ACME certificate being served")
    return gw, served


@pytest.mark.timeout(150)
def test_issuance_succeeds_when_the_ca_rejects_half_the_nonces(acme_env, tmp_path):
    gw, _ = _issued_and_served(acme_env, tmp_path, "http-01", env={"PEBBLE_WFE_NONCEREJECT": "50"})
    assert "acme: order for" not in gw.output()  # badNonce was retried within the order, not by a backed-off re-order


@pytest.mark.timeout(150)
def test_renewal_under_continuous_load_fails_no_request(acme_env, tmp_path):
    import threading

    gw, served = _issued_and_served(acme_env, tmp_path, "tls-alpn-01", "renew_ratio = 0.7", validity=30)
    results: list[bool] = []
    stop = threading.Event()

    def load():  # a new connection (and handshake) per request, verified against pebble's root
        while not stop.is_set():
            results.append(served())

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        poll(lambda: gw.output().count("acme: certificate for www.acme-test.example issued") >= 2, 60, 0.2,
             "the renewal")
        poll(lambda: gw.output().count("reloaded (store change: acme/www.acme-test.example)") >= 2, 20, 0.2,
             "the reload onto the renewed certificate")
        n = len(results)
        poll(lambda: len(results) >= n + 20, 30, 0.1, "20 requests after the swap")
    finally:
        stop.set()
        worker.join(30)
    assert results and all(results), f"{results.count(False)} of {len(results)} requests failed"
