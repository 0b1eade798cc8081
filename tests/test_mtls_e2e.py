"""Mutual TLS for clients, end to end: a real gateway, curl and openssl s_client with client certificates.

Listeners: `req` (client_auth = require, CRLs, an SNI certificate), `opt` (no client_auth key: it asks
for certificates because it carries mTLS APIs), `shallow` (verify_depth = 0), `quiet`
(announce_client_cas = no). APIs on req and opt: public ones and one per allowlist kind.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid

import pytest
from cryptography.hazmat.primitives import serialization

from certs_helpers import make_ca, make_intermediate, write_ca, write_pair
from conftest import ADMIN_EPHEMERAL, H2_ENGINES, Backend, Gateway, curl, poll
from test_clientauth_unit import make_client, make_crl
from test_listener_e2e import s_client, subject_cn
from txgate.pins import format_pin, spki_sha256

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("curl") is None,
                                reason="needs openssl and curl")


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def pki(certs, tmp_path_factory):
    d = tmp_path_factory.mktemp("mtls-pki")
    root, inter = certs.root, certs.intermediate
    other_inter = make_intermediate(root, "mtls other intermediate")
    deep = make_intermediate(other_inter, "mtls deep intermediate")
    stranger = make_ca("mtls stranger root")
    clients = {
        "client": make_client(inter, "client.example", dns=("client.example",)),
        "web": make_client(inter, "web", org="Example", uris=("spiffe://example.org/ns/prod/sa/web",)),
        "db": make_client(other_inter, "db", org="Example", uris=("spiffe://example.org/ns/prod/sa/db",)),
        "deep": make_client(deep, "deep"),
        "untrusted": make_client(stranger, "untrusted"),
        "self": make_client(None, "self-signed"),
        "expired": make_client(inter, "expired", days_valid=(-30, -1)),
        "future": make_client(inter, "future", days_valid=(2, 30)),
        "revoked": make_client(inter, "revoked"),
        "direct": make_client(root, "direct"),
    }
    paths = {name: write_pair(d, f"client-{name}", ck) for name, ck in clients.items()}
    # The web client's PEM file (leaf + intermediate): an exact-certificate allowlist entry.
    inter_pem = d / "intermediate-ca.pem"
    inter_pem.write_bytes(inter.leaf.public_bytes(serialization.Encoding.PEM))
    crl_pem = d / "intermediate.crl.pem"
    crl_pem.write_bytes(make_crl(inter, [clients["revoked"].leaf]).public_bytes(serialization.Encoding.PEM))
    crl_der = d / "root.crl"
    crl_der.write_bytes(make_crl(root, []).public_bytes(serialization.Encoding.DER))
    # Every CA of a verified chain needs a current CRL (client_crl_missing = refuse).
    others_pem = d / "other-intermediates.crl.pem"
    others_pem.write_bytes(b"".join(make_crl(ca, []).public_bytes(serialization.Encoding.PEM)
                                    for ca in (other_inter, deep)))
    server = certs.leaf("mtls-server", ["localhost", "127.0.0.1"])
    sni = certs.leaf("mtls-sni", ["api.example.com"])
    return {
        "dir": d, "clients": clients, "paths": paths, "root_pem": certs.root_pem, "inter_pem": str(inter_pem),
        "crls": f"{crl_pem} {crl_der} {others_pem}", "server": server, "sni": sni,
        "other_root_pem": write_ca(d, "stranger-root", stranger),
    }


@pytest.fixture(scope="module")
def backend():
    b = Backend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def gw(request, pki, backend, tmp_path_factory):
    p, c = pki["paths"], pki["clients"]
    srv = f"certificate = {pki['server'][0]} {pki['server'][1]}\n"
    both = "listeners = req opt\n"
    self_pin = format_pin(spki_sha256(der(c["self"].leaf)))
    client_fp = hashlib.sha256(der(c["client"].leaf)).hexdigest()
    config = ADMIN_EPHEMERAL + f"""
[gateway]
access_log = -

[listener:req]
bind = 127.0.0.1:0
{srv}sni =
    api.example.com = {pki['sni'][0]} {pki['sni'][1]}
client_auth = require
client_ca = {pki['root_pem']}
client_crl = {pki['crls']}

[listener:opt]
bind = 127.0.0.1:0
{srv}client_ca = {pki['root_pem']}
client_crl = {pki['crls']}

[listener:shallow]
bind = 127.0.0.1:0
{srv}client_auth = require
client_ca = {pki['root_pem']}
verify_depth = 0

[listener:quiet]
bind = 127.0.0.1:0
{srv}client_auth = require
client_ca = {pki['root_pem']}
announce_client_cas = no

[api:echo]
path = /echo
upstream = builtin:echo

[api:public]
{both}path = /public
upstream = builtin:echo
forward_client_cert = xfcc

[api:verified]
{both}path = /verified
upstream = builtin:echo
mtls = require

[api:pin]
{both}path = /pin
upstream = builtin:echo
mtls = require
client_certificates = {self_pin}

[api:fp]
{both}path = /fp
upstream = builtin:echo
mtls = require
client_certificates = {client_fp}

[api:file]
{both}path = /file
upstream = builtin:echo
mtls = require
client_certificates = {p['web'][0]}

[api:ca]
{both}path = /ca
upstream = builtin:echo
mtls = require
client_certificates = {pki['inter_pem']}

[api:subject]
{both}path = /subject
upstream = builtin:echo
mtls = require
client_subjects =
    CN=web,O=Example
    re:CN=client\\.example

[api:san]
{both}path = /san
upstream = builtin:echo
mtls = require
client_sans = spiffe://example.org/ns/*/sa/web *.internal.example

[api:fwd]
{both}path = /fwd
upstream = {backend.url()}
forward_client_cert = xfcc

[api:nofwd]
{both}path = /nofwd
upstream = {backend.url()}

[api:guarded]
{both}path = /guarded
upstream = {backend.url()}
mtls = require
forward_client_cert = xfcc
"""
    gateway = Gateway(tmp_path_factory.mktemp("mtls-gw"), config, h2_engine=getattr(request, "param", None)).start()
    yield gateway
    assert gateway.stop() == 0


def url(gw, listener: str, path: str) -> str:
    return f"https://localhost:{gw.ports[listener]}{path}"


def cert_args(pki, name: str | None) -> list[str]:
    if name is None:
        return []
    cert, key = pki["paths"][name]
    return ["--cert", cert, "--key", key]


def get(gw, pki, listener: str, paths, client: str | None, *extra: str):
    """GET several paths over ONE connection; returns [(status, body)] (curl reuses the connection)."""
    marker = "\n@@STATUS %{http_code} %{http_version} %{num_connects}@@\n"
    args = ["--cacert", pki["root_pem"], *cert_args(pki, client), *extra]
    for path in paths:
        args += [url(gw, listener, path), "-w", marker]
    r = curl(*args)
    out = r.stdout.decode()
    found = re.findall(r"(.*?)\n@@STATUS (\d{3}) (\S+) (\d)@@\n", out, re.S)
    return r, [(int(code), body, version, int(nconn)) for body, code, version, nconn in found]


def status_of(gw, pki, listener, path, client, *extra) -> tuple[int, str]:
    r, results = get(gw, pki, listener, [path], client, *extra)
    assert r.returncode == 0 and results, r.stderr
    return results[0][0], results[0][1]


def error_code(body: str) -> str:
    return json.loads(body)["error"]


# -- require listener: the handshake decides -------------------------------------------------


def test_require_accepts_a_chain_through_the_intermediate(gw, pki):
    code, body = status_of(gw, pki, "req", "/verified/x", "client")
    assert code == 200, body
    assert json.loads(body)["path"] == "/verified/x"


@pytest.mark.parametrize(
    "client, reason, alert",
    [
        (None, "client_certificate_required", "handshake failure"),
        ("untrusted", "client_certificate_untrusted", "unknown ca"),
        ("self", "client_certificate_untrusted", "unknown ca"),
        ("expired", "client_certificate_expired", "certificate expired"),
        ("future", "client_certificate_not_yet_valid", "bad certificate"),
        ("revoked", "client_certificate_revoked", "certificate revoked"),
    ],
)
def test_require_refuses_in_the_handshake_and_says_why(gw, pki, backend, client, reason, alert):
    before = len(backend.requests)
    n = gw.output().count(f"on req refused: {reason}: ")
    r = curl("--cacert", pki["root_pem"], *cert_args(pki, client), url(gw, "req", "/guarded/x"))
    assert r.returncode != 0, r.stdout
    # TLS 1.3 clients learn of the refusal after their side of the handshake, so curl may report
    # a send error before reading the alert; with TLS 1.2 the alert ends the handshake itself.
    args = ["-cert", pki["paths"][client][0], "-key", pki["paths"][client][1]] if client else []
    code, out = s_client(gw.ports["req"], "-tls1_2", "-CAfile", pki["root_pem"], *args)
    assert code != 0 and f"alert {alert}" in out, out
    gw.wait_log(rf"(?s)(TLS handshake with 127\.0\.0\.1 on req refused: {reason}: .*){{{n + 2}}}")
    assert len(backend.requests) == before  # nothing reached any API


def test_require_refusal_is_one_log_line(gw, pki):
    tag = "expired"
    before = gw.output().count("on req refused: client_certificate_expired")
    curl("--cacert", pki["root_pem"], *cert_args(pki, tag), url(gw, "req", "/public/x"))
    # The gateway is shared by the module: earlier refusals are in its log already, so wait for the
    # count to grow, then for a later request's access line before counting (no second line came).
    poll(lambda: gw.output().count("on req refused: client_certificate_expired") > before,
         what="the refusal's log line")
    later = f"/public/after-{uuid.uuid4().hex}"
    assert curl("--cacert", pki["root_pem"], *cert_args(pki, "web"), url(gw, "req", later)).returncode == 0
    gw.wait_log(rf'"GET \S+ {later} HTTP/\S+" 200 ')
    assert re.search(r"on req refused: client_certificate_expired: certificate has expired \(depth 0, 'CN=expired'\)",
                     gw.output())
    lines = gw.output().count("on req refused: client_certificate_expired")
    assert lines == before + 1
    assert "TLS handshake with 127.0.0.1 on req failed" not in gw.output()


def test_openssl_s_client_with_certificate_on_require(gw, pki):
    cert, key = pki["paths"]["client"]
    code, out = s_client(gw.ports["req"], "-cert", cert, "-key", key, "-CAfile", pki["root_pem"],
                         "-servername", "localhost")
    assert code == 0, out
    assert "HTTP/1.1 200" in out and '"body_bytes": 0' in out
    assert "Acceptable client certificate CA names" in out and "txgate test root" in out


def test_openssl_s_client_revoked_gets_alert(gw, pki):
    cert, key = pki["paths"]["revoked"]
    code, out = s_client(gw.ports["req"], "-cert", cert, "-key", key, "-CAfile", pki["root_pem"], "-tls1_2")
    assert code != 0, out
    assert "alert certificate revoked" in out, out


def test_verify_depth_exceeded(gw, pki):
    # verify_depth = 0: only certificates issued directly by a trust anchor.
    code, body = status_of(gw, pki, "shallow", "/echo/x", "direct")
    assert code == 200, body
    r = curl("--cacert", pki["root_pem"], *cert_args(pki, "client"), url(gw, "shallow", "/echo/x"))
    assert r.returncode != 0
    gw.wait_log(r"TLS handshake with 127\.0\.0\.1 on shallow refused: client_certificate_chain_too_long: ")


def test_default_depth_allows_two_intermediates(gw, pki):
    code, body = status_of(gw, pki, "req", "/verified/x", "deep")
    assert code == 200, body


def test_announce_client_cas_no(gw, pki):
    cert, key = pki["paths"]["client"]
    # s_client sends only the first certificate of -cert; -cert_chain adds the intermediate.
    code, out = s_client(gw.ports["quiet"], "-cert", cert, "-cert_chain", cert, "-key", key, "-CAfile", pki["root_pem"])
    assert code == 0, out
    assert "No client certificate CA names sent" in out


def test_sni_certificate_on_require_listener_still_demands_a_client_certificate(gw, pki):
    port = gw.ports["req"]
    code, out = s_client(port, "-servername", "api.example.com", "-CAfile", pki["root_pem"],
                         request="api.example.com")
    assert code != 0, out
    assert subject_cn(out) == "api.example.com"
    assert "alert certificate required" in out, out
    cert, key = pki["paths"]["client"]
    code, out = s_client(port, "-servername", "api.example.com", "-CAfile", pki["root_pem"],
                         "-cert", cert, "-key", key, request="api.example.com")
    assert code == 0, out
    assert subject_cn(out) == "api.example.com" and '"body_bytes": 0' in out
    r = curl("--resolve", f"api.example.com:{port}:127.0.0.1", "--cacert", pki["root_pem"],
             f"https://api.example.com:{port}/public/x")
    assert r.returncode != 0, r.stdout  # TLS 1.3: curl may fail sending before it reads the alert
    r = curl("--tls-max", "1.2", "--resolve", f"api.example.com:{port}:127.0.0.1", "--cacert", pki["root_pem"],
             f"https://api.example.com:{port}/public/x")
    assert r.returncode == 35 and "alert handshake failure" in r.stderr.decode(), r.stderr


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_no_session_resumption_on_client_certificate_listeners(gw, pki, tmp_path, version):
    # A resumed session would skip the verify callback (and today's CRLs and dates): full handshakes only.
    cert, key = pki["paths"]["client"]
    sess = tmp_path / "sess.pem"
    common = ("-cert", cert, "-key", key, "-CAfile", pki["root_pem"], version)
    code, out = s_client(gw.ports["req"], *common, "-sess_out", str(sess))
    assert code == 0 and "New, TLSv1." in out, out
    if version == "-tls1_2":
        assert "TLS session ticket:" not in out and re.search(r"Session-ID: *\n", out), out
    if sess.exists():  # s_client writes no file for a session that cannot be resumed
        code, out = s_client(gw.ports["req"], *common, "-sess_in", str(sess))
        assert code == 0 and "Reused" not in out, out


# -- optional listener: APIs decide, per request ---------------------------------------------


def test_optional_public_and_mtls_api_without_certificate_on_one_connection(gw, pki):
    r, results = get(gw, pki, "opt", ["/public/a", "/verified/b", "/public/c"], None)
    assert r.returncode == 0, r.stderr
    assert [x[0] for x in results] == [200, 403, 200]
    assert error_code(results[1][1]) == "client_certificate_required"
    assert sum(x[3] for x in results) == 1  # one connection for the three requests
    assert "x-forwarded-client-cert" not in json.loads(results[0][1])["headers"]


def test_optional_same_client_with_certificate_on_one_connection(gw, pki):
    r, results = get(gw, pki, "opt", ["/verified/a", "/public/b", "/fp/c", "/pin/d"], "web")
    assert r.returncode == 0, r.stderr
    assert [x[0] for x in results] == [200, 200, 403, 403]
    assert error_code(results[2][1]) == "client_certificate_not_allowed"
    assert sum(x[3] for x in results) == 1


def test_optional_refuses_expired_and_revoked_in_the_handshake(gw, pki):
    for client, reason in (("expired", "client_certificate_expired"), ("revoked", "client_certificate_revoked"),
                           ("future", "client_certificate_not_yet_valid")):
        r = curl("--cacert", pki["root_pem"], *cert_args(pki, client), url(gw, "opt", "/public/x"))
        assert r.returncode != 0, (client, r.stdout)
        gw.wait_log(rf"TLS handshake with 127\.0\.0\.1 on opt refused: {reason}: ")


def test_optional_untrusted_certificate_only_for_listed_entries(gw, pki):
    # Self-signed: not verified, but its pin is listed by /pin.
    r, results = get(gw, pki, "opt", ["/pin/a", "/verified/b", "/ca/c", "/public/d"], "self")
    assert r.returncode == 0, r.stderr
    assert [x[0] for x in results] == [200, 403, 403, 200]
    gw.wait_log(r"client 127\.0\.0\.1 on opt: api verified: client_certificate_not_allowed: subject "
                r"'CN=self-signed' sha256 [0-9a-f]{64} chain not verified")
    r, results = get(gw, pki, "opt", ["/verified/a", "/public/b"], "untrusted")
    assert [x[0] for x in results] == [403, 200]


@pytest.mark.parametrize(
    "path, allowed",
    [
        ("/pin", {"self"}),
        ("/fp", {"client"}),
        ("/file", {"web"}),
        ("/ca", {"client", "web"}),  # issued by the intermediate; db has another one
        ("/subject", {"client", "web"}),
        ("/san", {"web"}),
        ("/verified", {"client", "web", "db", "deep", "direct"}),
    ],
)
def test_allowlists(gw, pki, path, allowed):
    for client in ("client", "web", "db", "deep", "direct", "self", "untrusted"):
        code, body = status_of(gw, pki, "opt", f"{path}/x", client)
        want = 200 if client in allowed else 403
        assert code == want, (path, client, body)
        if code == 403:
            assert error_code(body) == "client_certificate_not_allowed"


def test_require_listener_applies_allowlists_too(gw, pki):
    assert status_of(gw, pki, "req", "/ca/x", "client")[0] == 200
    code, body = status_of(gw, pki, "req", "/ca/x", "db")
    assert code == 403 and error_code(body) == "client_certificate_not_allowed"


# -- HTTP/2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gw", H2_ENGINES, indirect=True)
def test_h2_per_stream_decisions(gw, pki):
    r, results = get(gw, pki, "opt", ["/verified/a", "/fp/b", "/public/c", "/san/d"], "web", "--http2")
    assert r.returncode == 0, r.stderr
    assert [(x[0], x[2]) for x in results] == [(200, "2"), (403, "2"), (200, "2"), (200, "2")]
    assert sum(x[3] for x in results) == 1
    r, results = get(gw, pki, "opt", ["/verified/a", "/public/b"], None, "--http2")
    assert [(x[0], x[2]) for x in results] == [(403, "2"), (200, "2")]
    assert error_code(results[0][1]) == "client_certificate_required"


@pytest.mark.parametrize("gw", H2_ENGINES, indirect=True)
def test_h2_parallel_streams(gw, pki):
    paths = ["/verified/1", "/fp/2", "/public/3", "/ca/4"] * 3
    r, results = get(gw, pki, "opt", paths, "client", "--http2", "--parallel", "--parallel-max", "12")
    assert r.returncode == 0, r.stderr
    assert sorted(x[0] for x in results) == sorted([200, 200, 200, 200] * 3)
    r, results = get(gw, pki, "opt", paths, "web", "--http2", "--parallel", "--parallel-max", "12")
    assert sorted(x[0] for x in results) == sorted([200, 403, 200, 200] * 3)


# -- X-Forwarded-Client-Cert -----------------------------------------------------------------


def _xfcc(req) -> list[str]:
    return [v for k, v in req["headers"] if k.lower() == "x-forwarded-client-cert"]


def _last(backend, prefix):
    return [r for r in backend.requests if r["path"].startswith(prefix)][-1]


def test_xfcc_forwarded_and_spoofing_removed(gw, pki, backend):
    web = pki["clients"]["web"]
    spoof = 'Hash=00;Subject="CN=admin"'
    tag = uuid.uuid4().hex
    code, _ = status_of(gw, pki, "opt", f"/fwd/{tag}", "web", "-H", f"X-Forwarded-Client-Cert: {spoof}")
    assert code == 200
    expected = (f"Hash={hashlib.sha256(der(web.leaf)).hexdigest()};Subject=\"CN=web,O=Example\";"
                "URI=spiffe://example.org/ns/prod/sa/web")
    assert _xfcc(_last(backend, f"/fwd/{tag}")) == [expected]
    # Without a certificate: the client's header is dropped, none is added.
    code, _ = status_of(gw, pki, "opt", f"/fwd/{tag}-anon", None, "-H", f"X-Forwarded-Client-Cert: {spoof}")
    assert code == 200 and _xfcc(_last(backend, f"/fwd/{tag}-anon")) == []
    # forward_client_cert = off: dropped, with or without a certificate, h1 and h2.
    for client in ("web", None):
        for proto in ("--http1.1", "--http2"):
            path = f"/nofwd/{tag}-{client}{proto}"
            code, _ = status_of(gw, pki, "opt", path, client, proto, "-H", f"X-Forwarded-Client-Cert: {spoof}")
            assert code == 200 and _xfcc(_last(backend, path)) == []


def test_xfcc_over_h2_on_require_listener(gw, pki, backend):
    tag = uuid.uuid4().hex
    code, _ = status_of(gw, pki, "req", f"/guarded/{tag}", "client", "--http2",
                        "-H", "x-forwarded-client-cert: Hash=ff")
    assert code == 200
    client = pki["clients"]["client"]
    assert _xfcc(_last(backend, f"/guarded/{tag}")) == [
        f'Hash={hashlib.sha256(der(client.leaf)).hexdigest()};Subject="CN=client.example";DNS=client.example'
    ]


def test_mtls_refusal_sends_nothing_upstream(gw, pki, backend):
    before = len(backend.requests)
    code, body = status_of(gw, pki, "opt", "/guarded/x", None)
    assert code == 403 and error_code(body) == "client_certificate_required"
    code, body = status_of(gw, pki, "opt", "/guarded/x", "self")
    assert code == 403 and error_code(body) == "client_certificate_not_allowed"
    assert len(backend.requests) == before
