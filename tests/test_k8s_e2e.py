"""End to end: a real gateway (twistd) following Secrets and CSRs on the stand-in API server (tests/k8s_apiserver.py)."""
from __future__ import annotations

import os
import ssl
import subprocess

import pytest
from certs_helpers import make_ca, make_leaf, pem_chain, pem_key
from conftest import curl, poll
from cryptography import x509

from k8s_apiserver import FakeApiServer

SIGNER = "example.com/txgate"


@pytest.fixture
def api(tmp_path):
    server = FakeApiServer(tmp_path)
    yield server
    server.close()


@pytest.fixture(scope="module")
def site_ca():
    return make_ca("site CA")


def config(kubeconfig: str, certificate: str, extra: str = "") -> str:
    return f"""\
[gateway]
state_dir = ./txgate-state

[admin]
bind = off

[kubernetes]
kubeconfig = {kubeconfig}
{extra}
[listener:main]
bind = 127.0.0.1:0
certificate = {certificate}

[api:echo]
path = /
hosts = site.example localhost
upstream = builtin:echo
"""


def kubectl_run(api, tmp_path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    """kubectl against the stand-in, as it is (the caller checks the exit status)."""
    kc = tmp_path / "kubeconfig-kubectl"
    if not kc.exists():
        api.kubeconfig(kc)
    return subprocess.run(["kubectl", "--kubeconfig", str(kc), "--cache-dir", str(tmp_path / "kcache"), *args],
                          input=stdin, capture_output=True, text=True, timeout=120)


def kubectl(api, tmp_path, *args, stdin: str | None = None) -> str:
    """Run the real kubectl against the stand-in; its stdout (fails the test on a non-zero exit)."""
    r = kubectl_run(api, tmp_path, *args, stdin=stdin)
    assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
    return r.stdout


def apply_secret(api, tmp_path, namespace: str, name: str, leaf, key_of=None) -> None:
    """`kubectl create secret tls --dry-run=client -o yaml | kubectl apply -f -` with ``leaf`` (and another key)."""
    import base64

    crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    crt.write_bytes(pem_chain(leaf))
    key.write_bytes(pem_key(leaf))
    manifest = kubectl(api, tmp_path, "-n", namespace, "create", "secret", "tls", name, "--cert", str(crt),
                       "--key", str(key), "--dry-run=client", "-o", "yaml")
    if key_of is not None:  # kubectl refuses a mismatched pair: edit the manifest, as a hand edit would
        good, bad = (base64.b64encode(pem_key(k)).decode() for k in (leaf, key_of))
        assert good in manifest
        manifest = manifest.replace(good, bad)
    kubectl(api, tmp_path, "-n", namespace, "apply", "-f", "-", stdin=manifest)


def served(port: int) -> x509.Certificate:
    """The leaf certificate the gateway presents (no verification: the caller compares it)."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    return x509.load_pem_x509_certificate(pem.encode())


def curl_ok(port: int, ca_path: str, host: str = "site.example") -> bool:
    r = curl("--cacert", ca_path, "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/echo", "-o",
             os.devnull, "-w", "%{http_code}")
    return r.returncode == 0 and r.stdout == b"200"


class Load:
    """Requests in a loop (a new TLS connection each, verified against the site CA) until stopped."""

    def __init__(self, port: int, ca_path: str) -> None:
        import threading

        self.port, self.ok, self.failures = port, 0, []
        self.ctx = ssl.create_default_context(cafile=ca_path)
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        import http.client

        while self.running:
            conn = http.client.HTTPSConnection("site.example", self.port, context=self.ctx, timeout=10)
            conn._create_connection = lambda addr, *a, **kw: __import__("socket").create_connection(
                ("127.0.0.1", addr[1]), *a, **kw)
            try:
                conn.request("GET", "/echo")
                status = conn.getresponse().status
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(status)
            except Exception as e:
                self.failures.append(repr(e))
            finally:
                conn.close()

    def stop(self) -> None:
        self.running = False
        self.thread.join(15)


def write_ca(tmp_path, ca) -> str:
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "site-ca.pem"
    path.write_bytes(ca.leaf.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_secret_served_updated_broken_and_watch_recovery(api, tmp_path, gateway_factory, site_ca):
    v1 = make_leaf(site_ca, ["site.example"])
    apply_secret(api, tmp_path, "web", "site-tls", v1)
    gw = gateway_factory(config(api.kubeconfig(tmp_path / "kubeconfig"), "k8s-secret:web/site-tls"))
    ca_path = write_ca(tmp_path, site_ca)
    # Startup read the Secret before listening: the first connection already gets its certificate.
    assert served(gw.port) == v1.leaf
    assert "no certificate from Kubernetes yet" not in gw.output()
    assert curl_ok(gw.port, ca_path)
    # A new certificate in the Secret is served without a restart, with no failed request meanwhile.
    load = Load(gw.port, ca_path)
    v2 = make_leaf(site_ca, ["site.example"])
    try:
        apply_secret(api, tmp_path, "web", "site-tls", v2)
        poll(lambda: served(gw.port) == v2.leaf, 2, what="the updated Secret served within 2 s")
        poll(lambda: load.ok > 20, 10, what="requests after the switch")
    finally:
        load.stop()
    assert load.failures == [], load.failures[:3]
    assert curl_ok(gw.port, ca_path)
    # A broken version (key of another certificate) keeps the previous certificate, with one log line.
    v3 = make_leaf(site_ca, ["site.example"])
    apply_secret(api, tmp_path, "web", "site-tls", v3, key_of=v1)
    gw.wait_log(r"k8s-secret:web/site-tls: tls.key does not match the certificate in tls.crt; keeping the previous")
    assert served(gw.port) == v2.leaf
    # The server drops the watch: txgate resumes it.
    api.drop_watches()
    v4 = make_leaf(site_ca, ["site.example"])
    apply_secret(api, tmp_path, "web", "site-tls", v4)
    poll(lambda: served(gw.port) == v4.leaf, 10, what="the Secret followed after a dropped watch")
    # History compacted (410 Gone on resume): txgate lists again.
    api.compact()
    v5 = make_leaf(site_ca, ["site.example"])
    apply_secret(api, tmp_path, "web", "site-tls", v5)
    gw.wait_log(r"resourceVersion \d+ is gone; listing again")
    poll(lambda: served(gw.port) == v5.leaf, 10, what="the Secret followed after 410 Gone")
    assert curl_ok(gw.port, ca_path)


def test_token_file_rotation_is_picked_up(api, tmp_path, gateway_factory, site_ca):
    token = tmp_path / "token"
    token.write_text("token-1\n")
    api.tokens = {"token-1"}
    v1 = make_leaf(site_ca, ["site.example"])
    api.put_secret("web", "site-tls", pem_chain(v1), pem_key(v1))
    gw = gateway_factory(config(api.kubeconfig(tmp_path / "kubeconfig", token_file=token), "k8s-secret:web/site-tls"))
    poll(lambda: served(gw.port) == v1.leaf, 10, what="the Secret's certificate served")
    # The token rotates: the old one is no longer accepted, the file holds the new one.
    api.tokens = {"token-2"}
    token.write_text("token-2\n")
    api.drop_watches()
    v2 = make_leaf(site_ca, ["site.example"])
    api.put_secret("web", "site-tls", pem_chain(v2), pem_key(v2))
    poll(lambda: served(gw.port) == v2.leaf, 15, what="the Secret followed with the rotated token")


def _issuer(cert: x509.Certificate) -> str:
    return cert.issuer.rfc4514_string()


def test_csr_issued_after_approval_and_renewed(api, tmp_path, gateway_factory):
    api.max_seconds = 9  # the signer issues 9 s certificates: renewal at 2/3 of the lifetime (6 s)
    gw = gateway_factory(config(api.kubeconfig(tmp_path / "kubeconfig"), f"k8s-csr:{SIGNER}",
                                "csr_expiration_seconds = 600\npod_name = gw-0\n"))
    gw.wait_log(r"no certificate from Kubernetes yet")
    assert "stand-in" not in _issuer(served(gw.port))  # the local-CA placeholder
    first = poll(api.csr_names, 10, what="a CSR submitted")[0]
    assert first.startswith("txgate-gw-0-")
    spec = api.csrs[first]["spec"]
    assert spec["signerName"] == SIGNER and spec["expirationSeconds"] == 600
    assert spec["usages"] == ["digital signature", "key encipherment", "server auth"]
    listed = kubectl(api, tmp_path, "get", "csr")
    assert first in listed
    kubectl(api, tmp_path, "certificate", "approve", first)
    poll(lambda: "stand-in cluster signer" in _issuer(served(gw.port)), 10, what="the signed certificate served")
    assert curl_ok(gw.port, api.signer_ca_path, host="localhost")
    # The CSR was followed with list + watch on its name, not polled by GET.
    from urllib.parse import quote

    selector = "fieldSelector=" + quote(f"metadata.name={first}", safe="")
    csr_path = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
    assert [m for m, p in api.requests if p.startswith(csr_path + "?") and selector in p and "watch=1" not in p]
    assert [m for m, p in api.requests if p.startswith(csr_path + "?") and selector in p and "watch=1" in p
            and "allowWatchBookmarks=true" in p and "resourceVersion=" in p]
    assert not [p for m, p, agent in api.agents if agent == "txgate" and p.split("?")[0] == f"{csr_path}/{first}"]
    leaf = served(gw.port)
    second = poll(lambda: [n for n in api.csr_names() if n != first], 15, what="a renewal CSR")[0]
    kubectl(api, tmp_path, "certificate", "approve", second)
    poll(lambda: served(gw.port) != leaf, 10, what="the renewed certificate served")
    assert served(gw.port).public_key().public_bytes(*_spki()) != leaf.public_key().public_bytes(*_spki())


def _spki():
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def test_csr_denied_is_reported(api, tmp_path, gateway_factory):
    gw = gateway_factory(config(api.kubeconfig(tmp_path / "kubeconfig"), f"k8s-csr:{SIGNER}"))
    name = poll(api.csr_names, 10, what="a CSR submitted")[0]
    kubectl(api, tmp_path, "certificate", "deny", name)
    gw.wait_log(rf"CertificateSigningRequest {name} denied: KubectlDeny: This CSR was denied by kubectl certificate deny")


def test_restart_while_a_csr_is_pending_follows_the_same_csr(api, tmp_path, gateway_factory):
    gw = gateway_factory(config(api.kubeconfig(tmp_path / "kubeconfig"), f"k8s-csr:{SIGNER}", "pod_name = gw-0\n"))
    first = poll(api.csr_names, 10, what="a CSR submitted")[0]
    gw.wait_log(rf"submitted CertificateSigningRequest {first}")
    assert gw.stop() == 0
    gw.start()
    gw.wait_log(rf"following CertificateSigningRequest {first} \(submitted before for the pending key\)")
    assert "submitted CertificateSigningRequest" not in gw.output()
    assert kubectl(api, tmp_path, "get", "csr", "-o", "name").split() == [
        f"certificatesigningrequest.certificates.k8s.io/{first}"]
    kubectl(api, tmp_path, "certificate", "approve", first)
    poll(lambda: "stand-in cluster signer" in _issuer(served(gw.port)), 10, what="the signed certificate served")
    assert curl_ok(gw.port, api.signer_ca_path, host="localhost")
    assert api.csr_names() == [first]
    # The certificate is the one of the CSR submitted before the restart (the key kept in the store).
    request = x509.load_pem_x509_csr(__import__("base64").b64decode(api.csrs[first]["spec"]["request"]))
    assert served(gw.port).public_key().public_bytes(*_spki()) == request.public_key().public_bytes(*_spki())


def test_restart_after_a_denial_submits_a_new_csr_with_a_new_key(api, tmp_path, gateway_factory):
    gw = gateway_factory(config(api.kubeconfig(tmp_path / "kubeconfig"), f"k8s-csr:{SIGNER}", "pod_name = gw-0\n"))
    first = poll(api.csr_names, 10, what="a CSR submitted")[0]
    kubectl(api, tmp_path, "certificate", "deny", first)
    gw.wait_log(rf"CertificateSigningRequest {first} denied")
    assert gw.stop() == 0
    gw.start()
    second = poll(lambda: [n for n in api.csr_names() if n != first], 10, what="a new CSR after the restart")[0]
    assert api.csrs[second]["spec"]["request"] != api.csrs[first]["spec"]["request"]
    kubectl(api, tmp_path, "certificate", "approve", second)
    poll(lambda: "stand-in cluster signer" in _issuer(served(gw.port)), 10, what="the signed certificate served")


def test_missing_permission_is_a_clear_error(api, tmp_path, gateway_factory, site_ca):
    api.allowed = {("list", "secrets")}  # no get (startup read), no watch
    v1 = make_leaf(site_ca, ["site.example"])
    api.put_secret("web", "site-tls", pem_chain(v1), pem_key(v1))
    gw = gateway_factory(config(api.kubeconfig(tmp_path / "kubeconfig"), "k8s-secret:web/site-tls"))
    gw.wait_log(r'watch failed \(403 Forbidden: secrets is forbidden: User "system:serviceaccount:txgate:txgate" '
                r'cannot watch resource "secrets"')
    gw.wait_log(r'k8s-secret:web/site-tls: cannot read it at startup \(403 Forbidden: .*cannot get resource "secrets"')
    poll(lambda: served(gw.port) == v1.leaf, 10, what="the listed certificate served")  # the list still worked


def table_rows(output: str) -> list[list[str]]:
    """kubectl's default table output as rows of cells (the header first)."""
    return [line.split() for line in output.splitlines() if line.strip()]


def test_kubectl_reads_the_stand_in(api, tmp_path, site_ca):
    """The stand-in's fidelity, checked with the real kubectl: discovery, Tables, OpenAPI-validated apply."""
    import base64

    v1 = make_leaf(site_ca, ["site.example"])
    apply_secret(api, tmp_path, "web", "site-tls", v1)  # kubectl apply with its default --validate=strict
    assert ("GET", "/openapi/v3?timeout=32s") in api.requests
    assert any(m == "POST" and "fieldValidation=Strict" in p for m, p in api.requests)
    assert kubectl(api, tmp_path, "get", "secret", "site-tls", "-n", "web", "-o", "jsonpath={.type}") == (
        "kubernetes.io/tls")
    # `kubectl get` asks for a Table: the real columns, not kubectl's NAME/AGE fallback.
    rows = table_rows(kubectl(api, tmp_path, "get", "secret", "-n", "web"))
    assert rows[0] == ["NAME", "TYPE", "DATA", "AGE"]
    assert rows[1][:3] == ["site-tls", "kubernetes.io/tls", "2"]
    assert table_rows(kubectl(api, tmp_path, "get", "secret", "site-tls", "-n", "web"))[1][:3] == rows[1][:3]
    # The server validates (fieldValidation=Strict): an unknown field is refused, as by a real API server.
    manifest = kubectl(api, tmp_path, "get", "secret", "site-tls", "-n", "web", "-o", "yaml")
    r = kubectl_run(api, tmp_path, "-n", "web", "apply", "-f", "-", stdin=manifest.replace("\ntype:", "\ntipe: x\ntype:"))
    assert r.returncode == 1
    assert 'strict decoding error: unknown field "tipe"' in r.stderr
    # A CSR created with kubectl apply, listed, approved: the CONDITION column follows.
    from txgate.lifecycle import build_csr, generate_key
    from cryptography.hazmat.primitives import serialization

    request = build_csr(generate_key("ec"), dns=["ops.example"], ips=[]).public_bytes(serialization.Encoding.PEM)
    csr = f"""\
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata:
  name: ops-cert
spec:
  request: {base64.b64encode(request).decode()}
  signerName: {SIGNER}
  expirationSeconds: 3600
  usages: [digital signature, key encipherment, server auth]
"""
    kubectl(api, tmp_path, "apply", "-f", "-", stdin=csr)
    rows = table_rows(kubectl(api, tmp_path, "get", "csr"))
    assert rows[0] == ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"]
    assert rows[1][0] == "ops-cert" and rows[1][2:] == [SIGNER, "system:serviceaccount:txgate:txgate", "60m", "Pending"]
    kubectl(api, tmp_path, "certificate", "approve", "ops-cert")
    assert table_rows(kubectl(api, tmp_path, "get", "csr", "ops-cert"))[1][-1] == "Approved,Issued"


def served_sni(port: int, name: str) -> x509.Certificate:
    """The leaf presented for SNI ``name``."""
    import socket

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_reload_follows_a_secret_added_to_the_config(api, tmp_path, gateway_factory, site_ca):
    import signal

    a, b = make_leaf(site_ca, ["site.example"]), make_leaf(site_ca, ["b.example"])
    apply_secret(api, tmp_path, "web", "site-tls", a)
    apply_secret(api, tmp_path, "web", "b-tls", b)
    text = config(api.kubeconfig(tmp_path / "kubeconfig"), "k8s-secret:web/site-tls")
    gw = gateway_factory(text)
    poll(lambda: served(gw.port) == a.leaf, 10, what="the first Secret served")
    gw.config_path.write_text(text.replace("certificate = k8s-secret:web/site-tls",
                                           "certificate = k8s-secret:web/site-tls\nsni = b.example = k8s-secret:web/b-tls"))
    gw.signal(signal.SIGHUP)
    poll(lambda: served_sni(gw.port, "b.example") == b.leaf, 10, what="the Secret added by a reload served")
    assert served(gw.port) == a.leaf


def rbac_permissions() -> set:
    """(verb, resource) pairs the RBAC manifests grant (deploy/kubernetes/rbac.yaml)."""
    import yaml
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "rbac.yaml"
    allowed = set()
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") in ("Role", "ClusterRole"):
            for rule in doc["rules"]:
                allowed |= {(v, r) for v in rule["verbs"] for r in rule["resources"]}
    return allowed


def test_example_rbac_is_enough_and_minimal(api, tmp_path, gateway_factory, site_ca):
    allowed = rbac_permissions()
    assert allowed == {("get", "secrets"), ("list", "secrets"), ("watch", "secrets"),
                       ("create", "certificatesigningrequests"), ("get", "certificatesigningrequests"),
                       ("list", "certificatesigningrequests"), ("watch", "certificatesigningrequests")}
    v1 = make_leaf(site_ca, ["site.example"])
    apply_secret(api, tmp_path, "web", "site-tls", v1)
    api.allowed = allowed
    text = config(api.kubeconfig(tmp_path / "kubeconfig"), "k8s-secret:web/site-tls")
    text = text.replace("[api:echo]", "[listener:signed]\nbind = 127.0.0.1:0\ncertificate = k8s-csr:example.com/txgate\n\n"
                                      "[api:echo]")
    gw = gateway_factory(text)
    assert served(gw.ports["main"]) == v1.leaf
    name = poll(api.csr_names, 10, what="a CSR submitted")[0]
    api.allowed = None  # the operator approving is not txgate
    kubectl(api, tmp_path, "certificate", "approve", name)
    api.allowed = allowed
    poll(lambda: "stand-in cluster signer" in _issuer(served(gw.ports["signed"])), 10, what="the CSR's certificate")
    v2 = make_leaf(site_ca, ["site.example"])
    api.allowed = None
    apply_secret(api, tmp_path, "web", "site-tls", v2)
    api.allowed = allowed
    poll(lambda: served(gw.ports["main"]) == v2.leaf, 10, what="the updated Secret")
    assert "Forbidden" not in gw.output()  # API errors are logged with their Status reason


def test_txgate_k8s_csr_command(api, tmp_path):
    import threading

    from conftest import txgate_cli

    kc = api.kubeconfig(tmp_path / "kubeconfig")
    result = {}
    run = threading.Thread(target=lambda: result.setdefault("r", txgate_cli(
        "k8s", "csr", "--signer", SIGNER, "--name", "ops-cert", "--dns", "ops.example", "--out",
        str(tmp_path / "ops"), "--kubeconfig", kc, "--timeout", "60", "--expiration-seconds", "3600")))
    run.start()
    poll(lambda: "ops-cert" in api.csr_names(), 30, what="the CSR submitted")
    kubectl(api, tmp_path, "certificate", "approve", "ops-cert")
    run.join(90)
    r = result["r"]
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    cert = x509.load_pem_x509_certificate((tmp_path / "ops.crt").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["ops.example"]
    assert (tmp_path / "ops.key").stat().st_mode & 0o777 == 0o600
    assert api.csrs["ops-cert"]["spec"]["expirationSeconds"] == 3600
    # Denied: reported with the reason, nothing written.
    done = {}
    run = threading.Thread(target=lambda: done.setdefault("r", txgate_cli(
        "k8s", "csr", "--signer", SIGNER, "--name", "ops-2", "--dns", "x.example", "--out", str(tmp_path / "x"),
        "--kubeconfig", kc, "--timeout", "60")))
    run.start()
    poll(lambda: "ops-2" in api.csr_names(), 30, what="the second CSR submitted")
    kubectl(api, tmp_path, "certificate", "deny", "ops-2")
    run.join(90)
    assert done["r"].returncode == 1
    assert "ops-2 denied: KubectlDeny" in done["r"].stderr
    assert not (tmp_path / "x.key").exists()


def test_fleet_each_replica_has_its_own_key_and_csr(api, tmp_path, gateway_factory, site_ca):
    v1 = make_leaf(site_ca, ["site.example"])
    apply_secret(api, tmp_path, "web", "site-tls", v1)
    kc = api.kubeconfig(tmp_path / "kubeconfig")
    text = config(kc, "k8s-secret:web/site-tls").replace(
        "[api:echo]", "[listener:signed]\nbind = 127.0.0.1:0\ncertificate = k8s-csr:example.com/txgate\n\n[api:echo]")
    gws = [gateway_factory(text.replace("[listener:main]", f"pod_name = gw-{n}\n\n[listener:main]"), name=f"gw-{n}")
           for n in ("a", "b")]
    names = poll(lambda: len(api.csr_names()) >= 2 and api.csr_names(), 15, what="one CSR per replica")
    assert sorted(n.split("-k8s-csr")[0] for n in names) == ["txgate-gw-a", "txgate-gw-b"]
    for name in names:
        kubectl(api, tmp_path, "certificate", "approve", name)
    for gw in gws:
        assert served(gw.ports["main"]) == v1.leaf  # both follow the same Secret
        poll(lambda gw=gw: "stand-in cluster signer" in _issuer(served(gw.ports["signed"])), 10,
             what="each replica's signed certificate")
    keys = {served(gw.ports["signed"]).public_key().public_bytes(*_spki()) for gw in gws}
    assert len(keys) == 2


def test_client_certificate_authentication(api, tmp_path, gateway_factory, site_ca):
    """The gateway authenticates with client-certificate-data / client-key-data only (user = CN, groups = O)."""
    v1 = make_leaf(site_ca, ["site.example"])
    api.put_secret("web", "site-tls", pem_chain(v1), pem_key(v1))
    cert = api.client_certificate("txgate-gw", groups=("txgate-gateways",))
    kc = api.kubeconfig(tmp_path / "kubeconfig", token=None, client_cert=cert)
    gw = gateway_factory(config(kc, "k8s-secret:web/site-tls"))
    assert served(gw.port) == v1.leaf  # the startup read (blocking client) presented the certificate
    gw.wait_log(r"kubernetes: API server https://localhost:\d+ \(.*; client certificate CN=txgate-gw, "
                r"O=txgate-gateways\)")
    v2 = make_leaf(site_ca, ["site.example"])
    api.put_secret("web", "site-tls", pem_chain(v2), pem_key(v2))
    poll(lambda: served(gw.port) == v2.leaf, 10, what="the Secret followed by the watch (Twisted client)")
    assert set(api.users) == {("txgate-gw", ("txgate-gateways",))}
    assert "Unauthorized" not in gw.output()


def test_client_certificate_from_an_untrusted_ca_is_a_clear_401(api, tmp_path, gateway_factory, site_ca):
    v1 = make_leaf(site_ca, ["site.example"])
    api.put_secret("web", "site-tls", pem_chain(v1), pem_key(v1))
    rogue = make_ca("rogue client CA")
    kc = api.kubeconfig(tmp_path / "kubeconfig", token=None,
                        client_cert=api.client_certificate("txgate-gw", ca=rogue))
    gw = gateway_factory(config(kc, "k8s-secret:web/site-tls"))
    why = (r"401 Unauthorized: Unauthorized \(the API server accepted neither txgate's token nor its client "
           r"certificate\)")
    gw.wait_log(r"k8s-secret:web/site-tls: cannot read it at startup \(" + why)
    gw.wait_log(r"k8s-secret:web/site-tls: watch failed \(" + why + r"\); retrying in")
    assert served(gw.port) != v1.leaf  # the placeholder
    assert api.users == []
