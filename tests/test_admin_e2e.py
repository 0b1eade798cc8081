"""The admin API end to end: a real gateway process (twistd), real HTTP clients (curl, http.client).

Token auth, the certificate store through the API (upload, expired refused, CSR -> sign -> PUT,
delete refused while a listener uses the entry), reload, /metrics after real traffic, /health,
the expiry monitor's log line, and no private key in any response or log line.
"""
from __future__ import annotations

import http.client
import json
import re
import shutil
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from prometheus_client.parser import text_string_to_metric_families

from certs_helpers import NOW, make_leaf, pem_chain, pem_key
from conftest import curl, poll
from txgate.store import open_store

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

TOKEN = "e2e-admin-token-0123456789"
SECRET = "e2e store secret, long enough for the key box 0123456789"

CONFIG = """
[gateway]
state_dir = ./txgate-state
store_secret_file = {secret}
expiry_warning_days = 30

[admin]
bind = 127.0.0.1:0
token_file = {token}

[listener:main]
bind = 127.0.0.1:0

[listener:web]
bind = 127.0.0.1:0
certificate = store:web

[api:echo]
path = /echo
upstream = builtin:echo

[api:backend]
path = /backend
upstream = {backend}
"""


class AdminClient:
    def __init__(self, port: int, token: str | None) -> None:
        self.port = port
        self.token = token

    def __call__(self, method: str, path: str, body: bytes | str | None = None, *, auth: bool = True):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        if body is not None:
            headers["Content-Type"] = "application/json" if path.startswith("/csr") else "application/x-pem-file"
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.getheader("content-type", "").startswith("application/json"):
            return resp.status, json.loads(data)
        return resp.status, data.decode()


@pytest.fixture
def setup(tmp_path, gateway_factory, certs, backend):
    workdir = tmp_path / "gw"
    state = workdir / "txgate-state"
    state.mkdir(parents=True)
    state.chmod(0o700)
    secret_file = tmp_path / "store.secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    # The entry the `web` listener serves, 10 days from expiry (the monitor warns about it).
    web = make_leaf(certs.intermediate, ["localhost", "127.0.0.1"], not_after=NOW + timedelta(days=10))
    store = open_store("dir", str(state), SECRET.encode())
    store.put("web", pem_chain(web), pem_key(web))
    store.close()
    text = CONFIG.format(secret=secret_file, token=token_file, backend=backend.url())
    gw = gateway_factory(text, name="gw")
    port = int(gw.wait_log(r"admin API on http://127\.0\.0\.1:(\d+) \(auth: token\)").group(1))
    return {"gw": gw, "admin": AdminClient(port, TOKEN), "web": web, "certs": certs, "backend": backend}


def _sign(ca, csr: x509.CertificateSigningRequest) -> bytes:
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.leaf.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=60))
        .add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert,) + tuple(
        c for c in ca.chain if c.issuer != c.subject))


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(fams: dict, family: str, sample: str, **labels) -> float | None:
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_admin_api_against_a_running_gateway(setup):
    gw, admin, certs = setup["gw"], setup["admin"], setup["certs"]

    # -- health and token ---------------------------------------------------------------------
    assert admin("GET", "/health", auth=False) == (200, {"status": "ok"})
    status, body = admin("GET", "/certs", auth=False)
    assert status == 401 and body["error"] == "unauthorized"
    assert AdminClient(admin.port, "wrong")("GET", "/certs")[0] == 401
    r = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{admin.port}/metrics")
    assert r.stdout == b"401"

    # -- the seeded entry, in use by listener:web ---------------------------------------------
    status, listing = admin("GET", "/certs")
    assert status == 200
    web = next(c for c in listing["certificates"] if c["name"] == "web")
    assert web["has_key"] is True and web["sans"] == ["localhost", "127.0.0.1"]
    assert web["used_by"] == ["listener:web"]
    r = curl("--cacert", certs.root_pem, gw.url("/echo/x", listener="web"))
    assert r.returncode == 0, r.stderr

    # -- upload -------------------------------------------------------------------------------
    fresh = make_leaf(certs.intermediate, ["api.example.com"])
    status, created = admin("POST", "/certs?name=uploaded", pem_chain(fresh) + pem_key(fresh))
    assert status == 201 and created["name"] == "uploaded" and created["version"] == 1
    status, listing = admin("GET", "/certs")
    names = {c["name"]: c for c in listing["certificates"]}
    assert names["uploaded"]["id"] == created["id"] and names["uploaded"]["used_by"] == []
    assert admin("GET", f"/certs/{created['id']}")[1]["name"] == "uploaded"

    expired = make_leaf(certs.intermediate, ["old.example.com"], not_before=NOW - timedelta(days=20),
                        not_after=NOW - timedelta(days=2))
    status, body = admin("POST", "/certs?name=old", pem_chain(expired) + pem_key(expired))
    assert status == 400 and body["error"] == "certificate_expired"
    status, body = admin("POST", "/certs?name=mismatch", pem_chain(fresh) + pem_key(expired))
    assert status == 400 and body["error"] == "key_mismatch"

    # -- the documented curl upload; curl's default form type (what a web page could send) is 415 ---
    pem_file = gw.workdir / "curl-upload.pem"
    pem_file.write_bytes(pem_chain(fresh) + pem_key(fresh))
    url = f"http://127.0.0.1:{admin.port}/certs?name=curled"
    auth = ("-H", f"Authorization: Bearer {TOKEN}")
    r = curl(*auth, "--data-binary", f"@{pem_file}", url)
    assert json.loads(r.stdout)["error"] == "unsupported_media_type"
    r = curl(*auth, "-H", "Content-Type: application/x-pem-file", "--data-binary", f"@{pem_file}", url)
    assert json.loads(r.stdout)["name"] == "curled", r.stdout
    r = curl(*auth, "-H", "Origin: http://attacker.example", "-X", "POST", f"http://127.0.0.1:{admin.port}/reload")
    assert json.loads(r.stdout)["error"] == "forbidden_origin"

    # -- CSR flow: the key is made in the gateway -----------------------------------------------
    status, made = admin("POST", "/csr", json.dumps({"name": "issued", "dns": ["issued.example.com"]}))
    assert status == 201 and set(made) == {"name", "csr"}
    csr = x509.load_pem_x509_csr(made["csr"].encode())
    status, body = admin("PUT", "/certs/issued", pem_chain(fresh))
    assert status == 400 and body["error"] == "key_mismatch"
    status, done = admin("PUT", "/certs/issued", _sign(certs.intermediate, csr))
    assert status == 200 and done["name"] == "issued" and done["version"] == 1
    status, issued = admin("GET", "/certs/issued")
    assert issued["has_key"] is True and issued["sans"] == ["issued.example.com"]

    # -- delete: refused while a listener uses it ---------------------------------------------
    status, body = admin("DELETE", "/certs/web")
    assert status == 409 and body["error"] == "in_use" and body["used_by"] == ["listener:web"]
    status, body = admin("DELETE", f"/certs/{web['id']}")
    assert status == 409
    assert admin("DELETE", "/certs/uploaded") == (200, {"deleted": "uploaded"})
    assert admin("GET", "/certs/uploaded")[0] == 404
    r = curl("--cacert", certs.root_pem, gw.url("/echo/still-served", listener="web"))
    assert r.returncode == 0, r.stderr

    # -- reload -------------------------------------------------------------------------------
    status, body = admin("POST", "/reload")
    assert status == 200 and body["ok"] is True, body
    good = gw.config_path.read_text()
    gw.config_path.write_text(good.replace("certificate = store:web", "certificate = store:nothing-here"))
    status, body = admin("POST", "/reload")
    assert status == 422 and body["error"] == "reload_failed" and body["ok"] is False
    assert "nothing-here" in body["message"]
    gw.config_path.write_text(good)
    r = curl("--cacert", certs.root_pem, gw.url("/echo/after-failed-reload", listener="web"))
    assert r.returncode == 0, r.stderr

    # -- no key material anywhere -------------------------------------------------------------
    for key in (pem_key(fresh), pem_key(setup["web"])):
        pieces = [ln for ln in key.decode().splitlines() if ln and not ln.startswith("-----")]
        out = gw.output() + gw.errors()
        assert not any(p in out for p in pieces)
    assert "PRIVATE KEY" not in gw.output()
    gw.wait_log(r"admin API: 127\.0\.0\.1 POST /certs 201")


def test_metrics_after_real_traffic(setup):
    gw, admin, certs = setup["gw"], setup["admin"], setup["certs"]
    for i in range(3):
        r = curl("--cacert", gw.ca, "--tlsv1.3", gw.url(f"/echo/{i}"))
        assert r.returncode == 0, r.stderr
    r = curl("--cacert", gw.ca, gw.url("/backend/x"))
    assert r.returncode == 0, r.stderr
    assert curl("--cacert", gw.ca, "-o", "/dev/null", gw.url("/nowhere")).returncode == 0
    # Plain HTTP on the TLS port, and a client that does not trust the gateway's certificate.
    curl("--max-time", "5", f"http://127.0.0.1:{gw.ports['main']}/echo/")
    assert curl("--cacert", certs.other_root_pem, gw.url("/echo/", listener="web")).returncode != 0

    def scrape():
        status, text = admin("GET", "/metrics")
        assert status == 200
        return _families(text)

    fams = poll(lambda: (f := scrape()) and (_value(f, "txgate_tls_handshakes", "txgate_tls_handshakes_total",
                                                    listener="main", result="protocol_error") or 0) >= 1 and f,
                10, what="the protocol_error handshake in /metrics")
    assert _value(fams, "txgate_requests", "txgate_requests_total", api="echo", status="200") >= 3
    assert _value(fams, "txgate_requests", "txgate_requests_total", api="backend", status="200") == 1
    assert _value(fams, "txgate_requests", "txgate_requests_total", api="-", status="404") == 1
    assert _value(fams, "txgate_tls_handshakes", "txgate_tls_handshakes_total",
                  listener="main", version="TLSv1.3", result="ok") >= 4
    assert (_value(fams, "txgate_tls_handshakes", "txgate_tls_handshakes_total", listener="web",
                   result="failed") or 0) >= 1
    # Expiry gauges: the listener's store certificate, the local CA and its leaf, the store entry.
    expiry = {(s.labels["name"], s.labels["role"]): s.value
              for s in fams["txgate_certificate_expiry_timestamp_seconds"].samples}
    web_not_after = setup["web"].not_after.timestamp()
    assert web_not_after in [v for (n, role), v in expiry.items() if role == "listener"]
    assert any(role == "ca" for _, role in expiry)
    assert poll(lambda: any(role == "store" for (n, role), v in (
        {(s.labels["name"], s.labels["role"]): s.value
         for s in scrape()["txgate_certificate_expiry_timestamp_seconds"].samples}).items()),
        10, what="store entries in the expiry gauges")
    # The upstream gauge lists every API with an upstream; the backend's keep-alive connection may be open.
    ups = {s.labels["api"]: s.value for s in fams["txgate_upstream_connections"].samples}
    assert "backend" in ups and ups["backend"] in (0, 1)
    # The expiry monitor's warning for the certificate 10 days from expiry.
    line = gw.wait_log(r"certificate_expiring: (\S+) \((\w+)\) expires on \S+ \(in (\d+\.\d) days\)")
    assert 9.0 <= float(line.group(3)) <= 10.0
    assert re.search(r"certificate_expiring: \S*web\S* ", gw.output())


MTLS_CONFIG = """
[gateway]
state_dir = ./txgate-state

[admin]
bind = 127.0.0.1:0
client_ca = {client_ca}

[listener:main]
bind = 127.0.0.1:0

[api:echo]
path = /echo
upstream = builtin:echo
"""


def test_mtls_admin_api_with_curl(gateway_factory, certs):
    gw = gateway_factory(MTLS_CONFIG.format(client_ca=certs.root_pem), name="mtls")
    port = int(gw.wait_log(r"admin API on https://127\.0\.0\.1:(\d+) \(auth: mtls\)").group(1))
    url = f"https://127.0.0.1:{port}"
    cert, key = certs.leaf("admin-operator", ["operator"], client=True)
    ok = curl("--cacert", gw.ca, "--cert", cert, "--key", key, url + "/certs")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["certificates"] == []
    refused = curl("--cacert", gw.ca, url + "/health")
    assert refused.returncode != 0
    stranger = certs.leaf("admin-stranger", ["eve"], client=True, ca=certs.other_root)
    assert curl("--cacert", gw.ca, "--cert", stranger[0], "--key", stranger[1], url + "/certs").returncode != 0
    gw.wait_log(r"admin API: TLS handshake with 127\.0\.0\.1 refused: client_certificate_required")
    gw.wait_log(r"admin API: TLS handshake with 127\.0\.0\.1 refused: client_certificate_untrusted")
    text = curl("--cacert", gw.ca, "--cert", cert, "--key", key, url + "/metrics").stdout.decode()
    fams = _families(text)
    assert _value(fams, "txgate_tls_handshakes", "txgate_tls_handshakes_total", listener="admin",
                  result="no_certificate") == 1
    assert _value(fams, "txgate_tls_handshakes", "txgate_tls_handshakes_total", listener="admin",
                  result="unknown_ca") == 1
