"""Pure parts of the Kubernetes source: gw.ini syntax, kubeconfig, Secret and CSR objects, what a config asks for."""
from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest
from certs_helpers import NOW, make_ca, make_leaf, pem_chain, pem_key

from txgate.config import ConfigError, parse_text
from txgate.k8s.client import TokenSource, api_error
from txgate.k8s.kubeconfig import KubeconfigError, find_access, in_cluster, parse_kubeconfig
from txgate.k8s.objects import (SecretProblem, csr_body, csr_object_name, csr_state, parse_tls_secret, renew_at,
                                split_names)
from txgate.k8s.service import csr_wants, pod_name, secret_wants

BASE = """\
[listener:main]
bind = 127.0.0.1:0
certificate = {cert}
{more}
[api:echo]
hosts = api.example
upstream = builtin:echo
{api}
"""


def parse(cert="local", more="", api="", head=""):
    return parse_text(head + BASE.format(cert=cert, more=more, api=api), "gw.ini")


# -- gw.ini -------------------------------------------------------------------------------------

def test_k8s_secret_spec_is_a_derived_store_name():
    cfg = parse("k8s-secret:web/site-tls")
    spec = cfg.listeners[0].certificate
    assert (spec.k8s_secret, spec.store_ref, spec.label) == ("web/site-tls", "k8s-secret.web.site-tls",
                                                             "k8s-secret:web/site-tls")
    assert cfg.store_refs() == {"k8s-secret.web.site-tls": ["listener:main"]}


def test_k8s_csr_specs_are_told_apart_by_their_use():
    cfg = parse("k8s-csr:example.com/signer", more="sni = a.example = k8s-csr:example.com/signer",
                api="upstream_certificate = k8s-csr:kubernetes.io/kube-apiserver-client")
    names = sorted(cfg.store_refs())
    assert names == ["k8s-csr.api.echo.upstream_certificate", "k8s-csr.listener.main.certificate",
                     "k8s-csr.listener.main.sni.a.example"]


@pytest.mark.parametrize("word, message", [
    ("k8s-secret:site-tls", "expected k8s-secret:NAMESPACE/NAME"),
    ("k8s-secret:Web/site", "expected k8s-secret:NAMESPACE/NAME"),
    ("k8s-csr:nosigner", "expected k8s-csr:SIGNER_NAME"),
    ("k8s-secret:a/b extra", "expected one Kubernetes source"),
])
def test_bad_k8s_words_name_section_and_key(word, message):
    with pytest.raises(ConfigError) as e:
        parse(word)
    assert str(e.value).startswith("gw.ini: [listener:main] certificate: ")
    assert message in str(e.value)


def test_kubernetes_section_defaults_and_errors():
    cfg = parse()
    k = cfg.kubernetes
    assert (k.kubeconfig, k.context, k.csr_expiration_seconds, k.startup_timeout, k.pod_name) == (
        None, None, 86400, 10.0, None)
    cfg = parse(head="[kubernetes]\nkubeconfig = /k\ncontext = c\ncsr_expiration_seconds = 3600\npod_name = gw-1\n")
    assert (cfg.kubernetes.kubeconfig, cfg.kubernetes.context, cfg.kubernetes.csr_expiration_seconds,
            cfg.kubernetes.pod_name) == ("/k", "c", 3600, "gw-1")
    with pytest.raises(ConfigError, match=r"^gw.ini: \[kubernetes\] csr_expiration_seconds: must be at least 600"):
        parse(head="[kubernetes]\ncsr_expiration_seconds = 60\n")
    with pytest.raises(ConfigError, match=r"^gw.ini: \[kubernetes\] namespace: unknown key"):
        parse(head="[kubernetes]\nnamespace = x\n")
    with pytest.raises(ConfigError, match=r"\[kubernetes\] pod_name: 'Gw_1' is not a Kubernetes object name"):
        parse(head="[kubernetes]\npod_name = Gw_1\n")


def test_wants_of_a_config():
    cfg = parse("k8s-csr:example.com/signer", more="sni = a.example = k8s-secret:web/a\n  b.example = k8s-secret:web/a",
                api="upstream_certificate = k8s-csr:kubernetes.io/kube-apiserver-client")
    assert secret_wants(cfg) == [("web", "a", "k8s-secret.web.a")]
    wants = {w.store_name: w for w in csr_wants(cfg)}
    listener = wants["k8s-csr.listener.main.certificate"]
    assert not listener.client and "api.example" in listener.names and "localhost" in listener.names
    upstream = wants["k8s-csr.api.echo.upstream_certificate"]
    assert upstream.client and upstream.signer == "kubernetes.io/kube-apiserver-client"
    assert pod_name(parse(head="[kubernetes]\npod_name = gw-2\n")) == "gw-2"
    assert pod_name(cfg, {"POD_NAME": "txgate-7f9c"}) == "txgate-7f9c"


# -- kubeconfig ----------------------------------------------------------------------------------

def kubeconfig(user: dict, cluster: dict | None = None) -> dict:
    return {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ns"}}],
        "clusters": [{"name": "k", "cluster": cluster or {"server": "https://api:6443",
                                                          "certificate-authority-data": base64.b64encode(b"CA").decode()}}],
        "users": [{"name": "u", "user": user}],
    }


def test_kubeconfig_token_and_ca_data():
    a = parse_kubeconfig(kubeconfig({"token": "abc"}), "/d", "kc")
    assert (a.server, a.ca_pem, a.token, a.namespace) == ("https://api:6443", b"CA", "abc", "ns")


def test_kubeconfig_files_are_relative_to_it(tmp_path):
    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    a = parse_kubeconfig(kubeconfig({"client-certificate": "c.pem", "client-key": "k.pem", "tokenFile": "t"}),
                         str(tmp_path), "kc")
    assert (a.client_cert_pem, a.client_key_pem, a.token_file) == (b"CERT", b"KEY", str(tmp_path / "t"))


@pytest.mark.parametrize("user, cluster, message", [
    ({"exec": {"command": "aws"}}, None, "uses an exec plugin, which txgate does not run"),
    ({"auth-provider": {"name": "gcp"}}, None, "uses an auth-provider plugin"),
    ({"client-certificate-data": base64.b64encode(b"C").decode()}, None, "client certificate without its key"),
    ({"token": "t"}, {"server": "http://api:8080"}, "server must be an https:// URL"),
    ({"username": "a", "password": "b"}, None, "basic authentication is not supported"),
])
def test_kubeconfig_refusals(user, cluster, message):
    with pytest.raises(KubeconfigError, match=message):
        parse_kubeconfig(kubeconfig(user, cluster), "/d", "kc")


def test_kubeconfig_unknown_context():
    with pytest.raises(KubeconfigError, match="kc: no context named 'other'"):
        parse_kubeconfig(kubeconfig({"token": "t"}), "/d", "kc", context="other")


def test_in_cluster(tmp_path):
    with pytest.raises(KubeconfigError, match="not in a cluster"):
        in_cluster({}, str(tmp_path))
    (tmp_path / "token").write_text("tok")
    (tmp_path / "ca.crt").write_bytes(b"CA")
    (tmp_path / "namespace").write_text("gateways\n")
    a = in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, str(tmp_path))
    assert (a.server, a.ca_pem, a.token_file, a.namespace) == ("https://10.0.0.1:443", b"CA",
                                                               str(tmp_path / "token"), "gateways")


def test_find_access_prefers_kubeconfig_env(tmp_path):
    import yaml

    path = tmp_path / "kc"
    path.write_text(yaml.safe_dump(kubeconfig({"token": "t"})))
    assert find_access(None, None, {"KUBECONFIG": f"{path}:/other"}).source == str(path)
    with pytest.raises(KubeconfigError, match="not in a cluster"):
        find_access(None, None, {})


def test_token_file_is_reread_when_it_changes(tmp_path):
    import os

    path = tmp_path / "token"
    path.write_text("one\n")
    tokens = TokenSource(None, str(path))
    assert tokens.current() == "one"
    path.write_text("two-longer\n")
    os.utime(path, ns=(1, 1))
    assert tokens.current() == "two-longer"
    path.unlink()
    assert tokens.current() == "two-longer"  # unreadable: keep the last one


def test_api_error_reads_status_objects():
    e = api_error(403, b'{"kind":"Status","reason":"Forbidden","message":"secrets is forbidden"}')
    assert (e.status, e.reason, str(e)) == (403, "Forbidden", "403 Forbidden: secrets is forbidden")
    assert str(api_error(502, b"bad gateway")) == "502: bad gateway"


# -- Secrets ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca():
    return make_ca("unit CA")


def secret(crt: bytes | None, key: bytes | None, raw: dict | None = None) -> dict:
    data = {}
    if crt is not None:
        data["tls.crt"] = base64.b64encode(crt).decode()
    if key is not None:
        data["tls.key"] = base64.b64encode(key).decode()
    data.update(raw or {})
    return {"metadata": {"name": "s", "resourceVersion": "7"}, "data": data}


def test_parse_tls_secret(ca):
    leaf = make_leaf(ca, ["a.example"])
    got = parse_tls_secret(secret(pem_chain(leaf), pem_key(leaf)), NOW)
    assert (got.chain_pem, got.key_pem, got.ca_pem, got.resource_version) == (pem_chain(leaf), pem_key(leaf), None, "7")


@pytest.mark.parametrize("case, message", [
    ("missing", "no tls.crt and tls.key"),
    ("notb64", "tls.crt is not base64"),
    ("notpem", "tls.crt: not a PEM certificate"),
    ("badkey", "tls.key: not a PEM private key"),
    ("mismatch", "tls.key does not match the certificate in tls.crt"),
    ("expired", "the certificate in tls.crt expired on"),
])
def test_bad_tls_secrets(ca, case, message):
    leaf, other = make_leaf(ca, ["a.example"]), make_leaf(ca, ["a.example"])
    expired = make_leaf(ca, ["a.example"], not_before=NOW - timedelta(days=9), not_after=NOW - timedelta(days=1))
    obj = {
        "missing": secret(pem_chain(leaf), None),
        "notb64": secret(None, pem_key(leaf), {"tls.crt": "%%%"}),
        "notpem": secret(b"hello", pem_key(leaf)),
        "badkey": secret(pem_chain(leaf), b"nope"),
        "mismatch": secret(pem_chain(leaf), pem_key(other)),
        "expired": secret(pem_chain(expired), pem_key(expired)),
    }[case]
    with pytest.raises(SecretProblem, match=message):
        parse_tls_secret(obj, NOW)


# -- CSRs ----------------------------------------------------------------------------------------

def test_csr_body_and_name():
    body = csr_body("n", b"PEM", "example.com/s", client=False, expiration_seconds=3600)
    assert body["spec"] == {"request": base64.b64encode(b"PEM").decode(), "signerName": "example.com/s",
                            "usages": ["digital signature", "key encipherment", "server auth"],
                            "expirationSeconds": 3600}
    assert csr_body("n", b"P", "s/x", client=True, expiration_seconds=600)["spec"]["usages"][-1] == "client auth"

def _csr_pem(**kw) -> bytes:
    from cryptography.hazmat.primitives import serialization

    from txgate.lifecycle import build_csr, generate_key

    return build_csr(generate_key("ec"), **kw).public_bytes(serialization.Encoding.PEM)


def test_csr_name_is_pod_use_and_key_digest():
    a, b = _csr_pem(dns=["a.example"]), _csr_pem(dns=["a.example"])
    name = csr_object_name("k8s-csr.listener.main.certificate", "GW_0", a)
    assert name.startswith("txgate-gw-0-k8s-csr.listener.main.certificate-")
    assert name == csr_object_name("k8s-csr.listener.main.certificate", "GW_0", a)  # found again after a restart
    assert name != csr_object_name("k8s-csr.listener.main.certificate", "GW_0", b)  # a new key: a new name
    long = csr_object_name("k8s-csr." + "x" * 300, "gw-0", a)
    assert len(long) == 253 and long.endswith(name.rsplit("-", 1)[1])  # the digest survives truncation


def test_resume_action_after_a_restart():
    from txgate.k8s.objects import resume_action

    mine, other = _csr_pem(dns=["a.example"]), _csr_pem(dns=["a.example"])

    def csr(request: bytes, *conditions: str, cert: bool = False) -> dict:
        status = {"conditions": [{"type": c, "status": "True"} for c in conditions]}
        if cert:
            status["certificate"] = base64.b64encode(b"C").decode()
        return {"metadata": {"name": "n"}, "spec": {"request": base64.b64encode(request).decode()}, "status": status}

    assert resume_action(None, None) == "new-key"  # nothing pending
    assert resume_action(csr(mine), None) == "new-key"
    assert resume_action(None, mine) == "submit"  # never sent, or garbage-collected: same key, a CSR again
    assert resume_action(csr(mine), mine) == "follow"  # still pending
    assert resume_action(csr(mine, "Approved"), mine) == "follow"
    assert resume_action(csr(mine, "Approved", cert=True), mine) == "follow"  # issued while stopped
    assert resume_action(csr(mine, "Denied"), mine) == "new-key"
    assert resume_action(csr(mine, "Approved", "Failed"), mine) == "new-key"
    assert resume_action(csr(other), mine) == "new-key"  # another key under that name
    assert resume_action({"spec": {"request": "%%"}}, mine) == "new-key"


def test_csr_state():
    assert csr_state({}).outcome == "pending"
    approved = {"status": {"conditions": [{"type": "Approved", "status": "True"}]}}
    assert csr_state(approved).outcome == "pending"
    issued = {"status": {"conditions": approved["status"]["conditions"], "certificate": base64.b64encode(b"C").decode()}}
    assert (csr_state(issued).outcome, csr_state(issued).certificate) == ("issued", b"C")
    denied = {"status": {"conditions": [{"type": "Denied", "status": "True", "reason": "R", "message": "M"}]}}
    assert csr_state(denied) == csr_state(denied).__class__("denied", None, "R", "M")
    failed = {"status": {"conditions": [{"type": "Failed", "reason": "SignerError", "message": "x"}],
                         "certificate": "Qw=="}}
    assert csr_state(failed).outcome == "failed"


def test_parse_secret_ca(ca):
    from txgate.k8s.objects import parse_secret_ca

    from cryptography.hazmat.primitives import serialization

    pem = ca.leaf.public_bytes(serialization.Encoding.PEM)
    obj = {"data": {"ca.crt": base64.b64encode(pem).decode(), "other": "eA=="}}
    assert parse_secret_ca(obj, "ca.crt") == pem
    with pytest.raises(SecretProblem, match=r"^no ca.pem in the Secret \(its keys: ca.crt, other\)$"):
        parse_secret_ca(obj, "ca.pem")
    with pytest.raises(SecretProblem, match="^other: not a PEM certificate$"):
        parse_secret_ca(obj, "other")
    with pytest.raises(SecretProblem, match="^ca.crt is not base64$"):
        parse_secret_ca({"data": {"ca.crt": "%%"}}, "ca.crt")


def test_renew_at_two_thirds_and_split_names():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert renew_at(start, start + timedelta(hours=3)) == start + timedelta(hours=2)
    assert split_names(["localhost", "127.0.0.1", "::1", "a.example"]) == (["localhost", "a.example"],
                                                                           ["127.0.0.1", "::1"])


def test_txgate_check_reports_a_kubeconfig_problem(tmp_path):
    from conftest import txgate_cli

    kc = tmp_path / "kc"
    kc.write_text("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
                  "clusters: [{name: k, cluster: {server: 'https://api:6443'}}]\n"
                  "users: [{name: u, user: {exec: {command: aws}}}]\n")
    gw = tmp_path / "gw.ini"
    gw.write_text(f"[kubernetes]\nkubeconfig = {kc}\n" + BASE.format(cert="k8s-secret:web/site", more="", api=""))
    r = txgate_cli("check", "--config", str(gw), cwd=tmp_path)
    assert r.returncode == 1
    assert f"[kubernetes] kubeconfig: {kc}: user 'u' uses an exec plugin, which txgate does not run" in r.stderr
    kc.write_text(kc.read_text().replace("{exec: {command: aws}}", "{token: t}"))
    r = txgate_cli("check", "--config", str(gw), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "k8s-secret:web/site: no certificate from Kubernetes yet" in r.stderr


# -- the Secret follower's loop (fake client, fake clock) -------------------------------------------

class FakeClient:
    """Answers list requests with no items and runs scripted watches (lists of events, then the end)."""

    def __init__(self, watches):
        self.watches, self.lists, self.watch_calls = list(watches), 0, []

    def request(self, method, path, body=None, query=None):
        from twisted.internet import defer

        self.lists += 1
        return defer.succeed({"items": [], "metadata": {"resourceVersion": str(10 * self.lists)}})

    def watch(self, path, query, on_event, on_stream=None):
        from twisted.internet import defer

        self.watch_calls.append(query["resourceVersion"])
        for event in (self.watches.pop(0) if self.watches else []):
            on_event(event)
        return defer.succeed(None)


def test_follower_backs_off_when_watches_end_at_once_and_relists_on_410():
    from twisted.internet.task import Clock

    from txgate.k8s.secrets import SecretFollower

    clock = Clock()
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}
    client = FakeClient([[bookmark], [gone]])
    f = SecretFollower(client, None, "web", "s", "k8s-secret.web.s", clock)
    f.start()
    assert (client.lists, client.watch_calls) == (1, ["10"])  # list, then watch from its resourceVersion
    assert f.listed.called
    clock.advance(0.5)  # the watch ended at once: back off 0.5 s, resume from the bookmark (15); that
    # watch says 410 Gone: list again at once and watch from the new list's resourceVersion (20).
    assert (client.lists, client.watch_calls) == (2, ["10", "15", "20"])
    clock.advance(0.5)
    assert len(client.watch_calls) == 3  # the backoff doubled (1 s): not yet
    clock.advance(0.5)
    assert len(client.watch_calls) == 4
    f.stop()
    clock.advance(60)
    assert len(client.watch_calls) == 4
