"""OCSP end to end: a real gateway, a real `openssl ocsp` responder, `openssl s_client -status` and curl.

Stapling (good, revoked, responder down, restart from the state_dir cache) and client-certificate
checks (good 200, revoked 403, responder down soft 200 / hard 403, a delegated responder without the
OCSP-signing EKU not trusted, a stalled responder that does not stop other clients being served).
"""
from __future__ import annotations

import shutil
import signal
import socket
import threading
import time

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import ADMIN_EPHEMERAL, curl, free_port, poll, txgate_cli
from ocsp_helpers import Responder, make_cert, write_key, write_pem
from test_listener_e2e import s_client

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("curl") is None,
                                reason="needs openssl and curl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("ocsp-pki")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = make_cert(None, "ocsp e2e root", ca=True)
    certs = {
        "signer": make_cert(root, "ocsp responder", eku=[ExtendedKeyUsageOID.OCSP_SIGNING]),
        "no_eku": make_cert(root, "not a responder", eku=[ExtendedKeyUsageOID.SERVER_AUTH]),
        "server": make_cert(root, "localhost", names=("localhost",), ocsp_url=url),
        "revoked": make_cert(root, "revoked.example", names=("revoked.example",), ocsp_url=url),
        "plain": make_cert(root, "plain.example", names=("plain.example",)),  # no AIA
        # Must-Staple, naming a responder nobody runs.
        "must": make_cert(root, "localhost", names=("localhost",), must_staple=True,
                          ocsp_url=f"http://127.0.0.1:{free_port()}/"),
        "client": make_cert(root, "good client", client=True, ocsp_url=url),
        "client_revoked": make_cert(root, "revoked client", client=True, ocsp_url=url),
        # Never asked about while its responder is up (answers are cached per issuer and serial).
        "client_unasked": make_cert(root, "unasked client", client=True, ocsp_url=url),
    }
    paths = {}
    for name, ck in certs.items():
        paths[name] = (write_pem(d / f"{name}.pem", *ck.chain), write_key(d / f"{name}-key.pem", ck))
    responder = Responder(d / "responder", root, certs["signer"], port)
    responder.set_index(good=[certs["server"].leaf, certs["client"].leaf, certs["plain"].leaf],
                        revoked=[certs["revoked"].leaf, certs["client_revoked"].leaf])
    responder.start()
    yield dict(dir=d, root=root, certs=certs, paths=paths, responder=responder,
               root_pem=write_pem(d / "root.pem", root.leaf))
    responder.stop()


def listener(pki, name="main", extra="", cert="server"):
    c, k = pki["paths"][cert]
    return f"\n[listener:{name}]\nbind = 127.0.0.1:0\ncertificate = {c} {k}\n{extra}"


ECHO = "\n[api:echo]\npath = /echo\nupstream = builtin:echo\n"


def status_of(gw, servername="localhost", listener=None) -> str:
    port = gw.ports[listener] if listener else gw.port
    _rc, out = s_client(port, "-status", "-servername", servername)
    return out


def wait_staple(gw, servername="localhost", status="good", listener=None) -> str:
    def stapled():
        out = status_of(gw, servername, listener)
        return out if f"Cert Status: {status}" in out else None
    return poll(stapled, 20, interval=0.2, what=f"a {status} staple")


def test_s_client_and_curl_see_a_good_staple(pki, gateway_factory):
    gw = gateway_factory(ADMIN_EPHEMERAL + listener(pki) + ECHO)
    out = wait_staple(gw)
    assert "OCSP Response Status: successful" in out
    gw.wait_log(r"OCSP: stapling a good response for listener:main")
    r = curl("--cert-status", "--cacert", pki["root_pem"], gw.url("/echo"))
    assert r.returncode == 0, r.stderr
    metrics = metrics_text(gw)
    assert 'txgate_ocsp_staple_age_seconds{certificate="listener:main"}' in metrics
    assert 'txgate_ocsp_must_staple_missing{certificate="listener:main"} 0.0' in metrics


def metrics_text(gw) -> str:
    return curl(f"http://127.0.0.1:{gw.admin_port}/metrics").stdout.decode()


def test_revoked_certificate_is_stapled_as_revoked_and_logged(pki, gateway_factory):
    c, k = pki["paths"]["revoked"]
    gw = gateway_factory(ADMIN_EPHEMERAL + listener(pki, extra=f"sni =\n    revoked.example = {c} {k}\n") + ECHO)
    out = wait_staple(gw, "revoked.example", "revoked")
    assert "OCSP Response Status: successful" in out
    gw.wait_log(r"OCSP: certificate of listener:main sni:revoked.example .* is REVOKED")
    wait_staple(gw, "localhost", "good")  # the default certificate of the same listener


def test_responder_down_at_start_means_no_staple_and_the_gateway_serves(pki, gateway_factory):
    dead = f"http://127.0.0.1:{free_port()}/"
    gw = gateway_factory(ADMIN_EPHEMERAL + listener(pki, extra=f"ocsp_responder = {dead}\n") + ECHO)
    gw.wait_log(r"OCSP: fetching the status of listener:main from .* failed .*no staple; retrying in")
    out = status_of(gw)
    assert "OCSP response: no response sent" in out
    r = curl("--cacert", pki["root_pem"], gw.url("/echo"))
    assert r.returncode == 0 and b"/echo" in r.stdout
    assert 'txgate_ocsp_fetch_failures_total{reason="unreachable"}' in metrics_text(gw)


def test_must_staple_without_a_response_is_an_error_and_a_metric(pki, gateway_factory):
    gw = gateway_factory(ADMIN_EPHEMERAL + listener(pki, cert="must") + ECHO)
    gw.wait_log(r"\[txgate.ocsp#error\] OCSP: listener:main is Must-Staple and has no valid response to staple")
    assert 'txgate_ocsp_must_staple_missing{certificate="listener:main"} 1.0' in metrics_text(gw)
    r = curl("--cacert", pki["root_pem"], gw.url("/echo"))
    assert r.returncode == 0


def test_restart_staples_from_the_cache_with_the_responder_down(pki, tmp_path, gateway_factory):
    root, signer = pki["root"], pki["certs"]["signer"]
    own = Responder(tmp_path / "own-responder", root, signer, free_port())
    own.set_index(good=[pki["certs"]["server"].leaf])
    own.start()
    try:
        text = ADMIN_EPHEMERAL + f"[gateway]\nstate_dir = {tmp_path / 'state'}\n" + \
            listener(pki, extra=f"ocsp_responder = {own.url}\n") + ECHO
        first = gateway_factory(text, name="first")
        wait_staple(first)
        poll(lambda: list((tmp_path / "state" / "ocsp").glob("*.der")), 10, what="the cached response")
        first.stop()
    finally:
        own.stop()
    second = gateway_factory(text, name="second")
    out = status_of(second)  # at once: no poll
    assert "Cert Status: good" in out, out
    shown = txgate_cli("cert", "show", pki["paths"]["server"][0], "--state-dir", str(tmp_path / "state"))
    assert "OCSP (cached, " in shown.stdout and ": good, thisUpdate " in shown.stdout, shown.stdout + shown.stderr


def test_reload_keeps_stapling_with_the_responder_down(pki, tmp_path, gateway_factory):
    own = Responder(tmp_path / "own-responder", pki["root"], pki["certs"]["signer"], free_port())
    own.set_index(good=[pki["certs"]["server"].leaf])
    own.start()
    try:
        gw = gateway_factory(ADMIN_EPHEMERAL + listener(pki, extra=f"ocsp_responder = {own.url}\n") + ECHO)
        wait_staple(gw)
    finally:
        own.stop()
    gw.signal(signal.SIGHUP)
    gw.wait_log(r"reloaded \(")
    assert "Cert Status: good" in status_of(gw)
    assert gw.output().count("OCSP: stapling a good response") == 1  # the refresher carried over


def test_check_warns_when_stapling_is_on_and_no_responder_is_known(pki, tmp_path):
    cfg = tmp_path / "gw.ini"
    cfg.write_text(ADMIN_EPHEMERAL + listener(pki, extra="ocsp_stapling = on\n", cert="plain") + ECHO)
    r = txgate_cli("check", "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[listener:main] ocsp_stapling:" in r.stdout + r.stderr
    assert "no OCSP responder is known" in r.stdout + r.stderr


# -- client certificates ----------------------------------------------------------------------------
def mtls_listener(pki, name, mode, responder=None, timeout=None):
    extra = f"client_auth = require\nclient_ca = {pki['root_pem']}\nclient_ocsp = {mode}\n"
    if responder:
        extra += f"client_ocsp_responder = {responder}\n"
    if timeout:
        extra += f"client_ocsp_timeout = {timeout}\n"
    return listener(pki, name, extra)


def mtls_api(listeners):
    return f"\n[api:mtls]\nlisteners = {listeners}\npath = /mtls\nupstream = builtin:echo\nmtls = require\n"


def client_get(gw, pki, listener, client="client", timeout=30):
    c, k = pki["paths"][client]
    return curl("--cacert", pki["root_pem"], "--cert", c, "--key", k, "-o", "-", "-w", "\n%{http_code}",
                gw.url("/mtls", listener), timeout=timeout)


def code_of(r) -> str:
    return r.stdout.decode().rsplit("\n", 1)[-1]


@pytest.fixture(scope="module")
def client_gw(pki, tmp_path_factory):
    from conftest import Gateway

    dead = f"http://127.0.0.1:{free_port()}/"
    text = ADMIN_EPHEMERAL + "\n[gateway]\naccess_log = -\n" + mtls_listener(pki, "hard", "hard") + \
        mtls_listener(pki, "soft_down", "soft", dead) + mtls_listener(pki, "hard_down", "hard", dead) + \
        mtls_api("hard soft_down hard_down")
    gw = Gateway(tmp_path_factory.mktemp("ocsp-client-gw"), text).start()
    yield gw
    gw.stop()


def test_client_good_is_served(pki, client_gw):
    r = client_get(client_gw, pki, "hard")
    assert code_of(r) == "200", r.stdout + r.stderr


def test_client_revoked_gets_403_on_every_request(pki, client_gw):
    for _ in range(2):
        r = client_get(client_gw, pki, "hard", "client_revoked")
        assert code_of(r) == "403" and b"client_certificate_revoked" in r.stdout
    client_gw.wait_log(r"OCSP status revoked: client_certificate_revoked")


def test_client_responder_down_soft_allows_and_hard_refuses(pki, client_gw):
    assert code_of(client_get(client_gw, pki, "soft_down", "client_unasked")) == "200"
    r = client_get(client_gw, pki, "hard_down", "client_unasked")
    assert code_of(r) == "403" and b"client_certificate_status_unknown" in r.stdout
    client_gw.wait_log(r"OCSP status unknown .*allowed \(client_ocsp = soft\)")


def test_delegated_responder_without_ocsp_signing_eku_is_not_trusted(pki, tmp_path, gateway_factory):
    bad = Responder(tmp_path / "no-eku", pki["root"], pki["certs"]["no_eku"], free_port())
    bad.set_index(good=[pki["certs"]["client"].leaf])
    bad.start()
    try:
        gw = gateway_factory(ADMIN_EPHEMERAL + mtls_listener(pki, "main", "hard", bad.url) + mtls_api("main"))
        r = client_get(gw, pki, "main")
        assert code_of(r) == "403" and b"client_certificate_status_unknown" in r.stdout
        gw.wait_log(r"untrusted_responder")
    finally:
        bad.stop()


def test_a_stalled_responder_does_not_stop_other_clients(pki, gateway_factory):
    stall = socket.socket()
    stall.bind(("127.0.0.1", 0))
    stall.listen(16)  # accepts (the kernel does) and never answers
    try:
        url = f"http://127.0.0.1:{stall.getsockname()[1]}/"
        gw = gateway_factory(ADMIN_EPHEMERAL + mtls_listener(pki, "main", "hard", url, timeout=4) +
                             listener(pki, "other") + mtls_api("main") + ECHO)
        result = {}
        waiting = threading.Thread(target=lambda: result.setdefault("r", client_get(gw, pki, "main")))
        started = time.monotonic()
        waiting.start()
        time.sleep(0.5)  # let the stalled check begin
        for _ in range(3):
            r = curl("--cacert", pki["root_pem"], gw.url("/echo", "other"))
            assert r.returncode == 0 and b"/echo" in r.stdout
        assert time.monotonic() - started < 3.5, "other clients waited for the stalled responder"
        waiting.join(30)
        assert code_of(result["r"]) == "403" and b"client_certificate_status_unknown" in result["r"].stdout
        assert time.monotonic() - started >= 3.5
    finally:
        stall.close()
