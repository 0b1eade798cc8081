"""Admin API unit tests: real HTTP requests against the admin Site on a loopback port, in-process.

`FakeFacade` is a stand-in for the service facade (`txgate.admin.facade.GatewayFacade`); the real
implementation in `txgate.service` is tested end to end in test_admin_e2e.py. The store is a real
directory store (through `DeferredStore`), and the Site runs in its own reactor (not the global
one) in a background thread, so the tests speak plain blocking HTTP to it.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import threading
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import defer, threads
from twisted.internet.selectreactor import SelectReactor
from twisted.logger import globalLogPublisher, formatEvent

from certs_helpers import NOW, make_ca, make_leaf, pem_chain, pem_key, write_ca, write_pair
from txgate.admin.config import AdminConfig, AdminConfigError, is_loopback, read_token
from txgate.admin.facade import HeldCertificate, ReloadResult
from txgate.admin.service import AdminService
from txgate.metrics import Metrics
from txgate.store import DeferredStore, open_store

SECRET = b"admin api test secret, long enough 0123456789"
TOKEN = "s3cret-admin-token"


class FakeFacade:
    """Stand-in for the service facade (the real one is exercised end to end in test_admin_e2e.py)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.usage: dict[str, list[str]] = {}
        self.reloads: list[str] = []
        self.reload_result = ReloadResult(True, "reloaded: 1 listener")
        self.held: list[HeldCertificate] = []
        self.upstreams: dict[str, int] = {}

    def reload(self, reason: str):
        self.reloads.append(reason)
        return defer.succeed(self.reload_result)

    def certificate_usage(self) -> dict[str, list[str]]:
        return dict(self.usage)

    def held_certificates(self) -> list[HeldCertificate]:
        return list(self.held)

    def upstream_connections(self) -> dict[str, int]:
        return dict(self.upstreams)


class ReactorThread:
    """A private reactor running in a daemon thread; `call` runs a function in it and waits."""

    def __init__(self) -> None:
        self.reactor = SelectReactor()
        self.thread = threading.Thread(target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
        self.thread.start()

    def call(self, f, *args, **kw):
        return threads.blockingCallFromThread(self.reactor, f, *args, **kw)

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def rt():
    r = ReactorThread()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def ca():
    return make_ca("admin test CA")


class Admin:
    """One running AdminService with its fake facade; `request` speaks HTTP(S) to it."""

    def __init__(self, rt: ReactorThread, tmp_path, *, token: str | None = TOKEN, client_ca: str | None = None,
                 store: bool = True, allowed_hosts: tuple[str, ...] = ()) -> None:
        self.rt = rt
        self.tmp = tmp_path
        token_file = None
        if token is not None:
            token_file = str(tmp_path / "admin-token")
            with open(token_file, "w") as f:
                f.write(token + "\n")
        self.token = token
        self.raw_store = open_store("dir", str(tmp_path / "state"), SECRET) if store else None
        ds = DeferredStore(self.raw_store, reactor=rt.reactor) if store else None
        self.facade = FakeFacade(ds)
        self.metrics = Metrics()
        self.config = AdminConfig(bind_host="127.0.0.1", bind_port=0, client_ca=client_ca, token_file=token_file,
                                  state_dir=str(tmp_path / "state"), allowed_hosts=allowed_hosts)
        self.service = AdminService(self.facade, self.config, rt.reactor, metrics=self.metrics)
        rt.call(self.service.startService)
        self.port = self.service.port_of()

    def stop(self) -> None:
        self.rt.call(self.service.stopService)

    def request(self, method: str, path: str, body: bytes | str | None = None, *, auth: bool = True,
                headers: dict | None = None, context: ssl.SSLContext | None = None) -> tuple[int, dict, Any]:
        if context is not None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=10)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        h = dict(headers or {})
        if auth and self.token is not None:
            h.setdefault("Authorization", f"Bearer {self.token}")
        if body is not None and not any(k.lower() == "content-type" for k in h):
            # What the API requires: JSON for POST /csr, PEM for certificate uploads.
            h["Content-Type"] = "application/json" if path.startswith("/csr") else "application/x-pem-file"
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if hdrs.get("content-type", "").startswith("application/json"):
            return resp.status, hdrs, json.loads(data)
        return resp.status, hdrs, data


@pytest.fixture
def admin(rt, tmp_path):
    a = Admin(rt, tmp_path)
    yield a
    a.stop()


@pytest.fixture
def log_events():
    """Every log event emitted while the test runs (the Site's reactor thread included)."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _bundle(ck, with_key: bool = True) -> bytes:
    return pem_chain(ck) + (pem_key(ck) if with_key else b"")


def _key_b64_lines(ck) -> list[str]:
    """The base64 lines of a key's PEM, and its raw DER in base64 (what a leak would look like)."""
    pem = pem_key(ck).decode()
    lines = [ln for ln in pem.splitlines() if ln and not ln.startswith("-----")]
    der = ck.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    return lines + [base64.b64encode(der).decode()[:40]]


# -- health, auth, routing ------------------------------------------------------------------------


def test_health_answers_without_a_token(admin):
    status, _, body = admin.request("GET", "/health", auth=False)
    assert (status, body) == (200, {"status": "ok"})


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
def test_missing_or_wrong_token_is_401_json(admin, header):
    headers = {"Authorization": header} if header is not None else {}
    status, hdrs, body = admin.request("GET", "/certs", auth=False, headers=headers)
    assert status == 401
    assert body["error"] == "unauthorized" and body["message"]
    assert hdrs["www-authenticate"].startswith("Bearer")


def test_token_is_checked_before_the_route_does_anything(admin):
    status, _, body = admin.request("POST", "/reload", auth=False)
    assert status == 401
    assert admin.facade.reloads == []
    status, _, body = admin.request("GET", "/metrics", auth=False)
    assert status == 401


def test_token_scheme_is_case_insensitive(admin):
    status, _, _ = admin.request("GET", "/certs", auth=False, headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200


# -- browsers: DNS rebinding (Host), CSRF (Origin), form-typed bodies ------------------------------


@pytest.fixture
def open_admin(rt, tmp_path):
    """The default admin API: loopback, no token (what a web page would target)."""
    a = Admin(rt, tmp_path, token=None)
    yield a
    a.stop()


def _raw(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "127.0.0.1.attacker.example",
                                  "localhost.attacker.example:{port}", "127.0.0.1:1", "localhost:{port}0",
                                  "localhost:", "localhost:x", "0.0.0.0:{port}", "127.0.0.2:{port}", "::1",
                                  "[::1", "[::1]x", "evil@127.0.0.1"])
def test_a_foreign_host_is_403_before_anything_else(open_admin, host):
    a = open_admin
    for method, path in (("POST", "/reload"), ("GET", "/certs"), ("GET", "/health"), ("GET", "/nope")):
        status, hdrs, body = a.request(method, path, headers={"Host": host.format(port=a.port)})
        assert status == 403, (method, path, host)
        assert body["error"] == "forbidden_origin" and "Host" in body["message"]
        assert hdrs["content-type"] == "application/json"
    assert a.facade.reloads == []


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "LOCALHOST:{port}", "127.0.0.1", "127.0.0.1:{port}",
                                  "[::1]", "[::1]:{port}"])
def test_the_api_answers_to_loopback_names_with_or_without_its_port(open_admin, host):
    status, _, body = open_admin.request("POST", "/reload", headers={"Host": host.format(port=open_admin.port)})
    assert (status, body["ok"]) == (200, True)


def test_no_or_duplicate_host_header(open_admin):
    port = open_admin.port
    assert _raw(port, b"GET /health HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200")  # no browser omits Host
    dup = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n"
    reply = _raw(port, dup)
    # Two Host headers do not name this API (docs/admin.md: 403 forbidden_origin before anything else).
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 "), reply
    assert json.loads(body)["error"] == "forbidden_origin"


@pytest.mark.parametrize("origin", ["http://attacker.example", "null", "http://127.0.0.1", "http://127.0.0.1:1",
                                    "https://127.0.0.1:{port}", "http://attacker.example:{port}",
                                    "http://user@127.0.0.1:{port}", "http://127.0.0.1:{port}/x", "garbage",
                                    "http://[::1", ""])
def test_a_foreign_origin_is_403_even_with_a_valid_token(admin, origin):
    status, _, body = admin.request("POST", "/reload", headers={"Origin": origin.format(port=admin.port)})
    assert status == 403 and body["error"] == "forbidden_origin" and "cross-origin" in body["message"]
    status, _, body = admin.request("GET", "/certs", headers={"Origin": origin.format(port=admin.port)})
    assert status == 403
    assert admin.facade.reloads == []


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}", "HTTP://LocalHost:{port}",
                                    "http://[::1]:{port}", "http://127.0.0.1:{port}/"])
def test_the_apis_own_origin_is_allowed(admin, origin):
    status, _, body = admin.request("POST", "/reload", headers={"Origin": origin.format(port=admin.port)})
    assert status == 200 and body["ok"] is True


def test_the_browser_attack_of_the_audit_is_refused(open_admin, ca):
    """A page on attacker.example posting a form (text/plain, no preflight), directly or DNS-rebound."""
    a = open_admin
    for host in (f"127.0.0.1:{a.port}", f"attacker.example:{a.port}"):
        for method, path, body in (("POST", "/reload", ""), ("POST", "/certs?name=evil", _bundle(make_leaf(ca, ["e"]))),
                                   ("POST", "/csr", '{"name": "evil", "dns": ["evil"]}')):
            status, _, resp = a.request(method, path, body, headers={
                "Host": host, "Origin": "http://attacker.example", "Content-Type": "text/plain"})
            assert (status, resp["error"]) == (403, "forbidden_origin")
    assert a.facade.reloads == [] and a.raw_store.list() == []


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/json", "application/x-pem-filex"])
def test_pem_bodies_need_a_pem_content_type(admin, ca, ctype):
    ck = make_leaf(ca, ["typed.example"])
    headers = {"Content-Type": ctype} if ctype else {"Content-Type": ""}
    status, _, body = admin.request("POST", "/certs?name=typed", _bundle(ck), headers=headers)
    assert status == 415 and body["error"] == "unsupported_media_type"
    assert "application/x-pem-file" in body["message"] and "application/octet-stream" in body["message"]
    admin.request("POST", "/csr", json.dumps({"name": "typed", "dns": ["typed.example"]}))
    status, _, body = admin.request("PUT", "/certs/typed", pem_chain(ck), headers=headers)
    assert status == 415 and body["error"] == "unsupported_media_type"
    assert admin.raw_store.list() == []


@pytest.mark.parametrize("ctype", ["application/x-pem-file", "application/octet-stream",
                                   "Application/X-PEM-File; charset=us-ascii"])
def test_pem_content_types_accepted(admin, ca, ctype):
    status, _, body = admin.request("POST", "/certs?name=typed", _bundle(make_leaf(ca, ["typed.example"])),
                                    headers={"Content-Type": ctype})
    assert status == 201 and body["version"] == 1


@pytest.mark.parametrize("ctype, status", [("", 415), ("text/plain", 415), ("application/x-www-form-urlencoded", 415),
                                           ("application/json", 201), ("application/json; charset=utf-8", 201)])
def test_csr_bodies_need_json(admin, ctype, status):
    got, _, body = admin.request("POST", "/csr", json.dumps({"name": "j", "dns": ["j.example"]}),
                                 headers={"Content-Type": ctype})
    assert got == status, body
    if status == 415:
        assert body["error"] == "unsupported_media_type" and "application/json" in body["message"]


def test_body_type_is_checked_after_the_token(admin):
    status, _, body = admin.request("POST", "/csr", "{}", auth=False, headers={"Content-Type": "text/plain"})
    assert status == 401  # an unauthenticated client learns nothing about the body rules


def test_a_wildcard_bind_answers_to_the_local_address_and_loopback_names(rt, tmp_path):
    from txgate.admin.api import AdminResource, _host_is_ours

    res = AdminResource(None, bind_host="0.0.0.0", token=b"t")

    class Req:
        def __init__(self, local):
            self.local = local

        def getHost(self):
            from twisted.internet.address import IPv4Address
            return IPv4Address("TCP", self.local, 9901)

    names = res._own_names(Req("10.1.2.3"))
    assert names == {"localhost", "127.0.0.1", "::1", "10.1.2.3"}
    assert _host_is_ours("10.1.2.3:9901", names, 9901) and not _host_is_ours("10.1.2.4:9901", names, 9901)
    assert not _host_is_ours("0.0.0.0:9901", names, 9901)
    named = AdminResource(None, bind_host="[FD00::5]")._own_names(Req("fd00::5"))
    assert named == {"localhost", "127.0.0.1", "::1", "fd00::5"}
    assert _host_is_ours("[fd00::5]:9901", named, 9901)


# -- [admin] allowed_hosts: more names the API answers to ---------------------------------------------


@pytest.fixture
def named_admin(rt, tmp_path):
    """A token-protected admin API that also answers to two configured names."""
    a = Admin(rt, tmp_path, allowed_hosts=("gw1.internal", "Admin.Example.COM"))
    yield a
    a.stop()


@pytest.mark.parametrize("host", ["gw1.internal", "gw1.internal:{port}", "GW1.Internal:{port}", "admin.example.com",
                                  "ADMIN.EXAMPLE.COM:{port}", "localhost:{port}", "127.0.0.1"])
def test_an_allowed_host_name_is_answered(named_admin, host):
    a = named_admin
    status, _, body = a.request("GET", "/certs", headers={"Host": host.format(port=a.port)})
    assert status == 200 and body["certificates"] == []
    status, _, body = a.request("POST", "/reload", headers={"Host": host.format(port=a.port)})
    assert (status, body["ok"]) == (200, True)


def test_an_allowed_host_name_still_needs_the_token(named_admin):
    a = named_admin
    status, _, body = a.request("GET", "/certs", auth=False, headers={"Host": f"gw1.internal:{a.port}"})
    assert (status, body["error"]) == (401, "unauthorized")


@pytest.mark.parametrize("host", ["gw2.internal", "gw2.internal:{port}", "gw1.internal:1", "gw1.internal:{port}0",
                                  "gw1.internal.attacker.example", "x.gw1.internal", "example.com", "gw1.internal:"])
def test_a_name_not_listed_is_still_403(named_admin, host):
    a = named_admin
    for method, path in (("GET", "/certs"), ("POST", "/reload"), ("GET", "/health")):
        status, _, body = a.request(method, path, headers={"Host": host.format(port=a.port)})
        assert (status, body["error"]) == (403, "forbidden_origin"), (method, path, host)
        assert "allowed_hosts" in body["message"]
    assert a.facade.reloads == []


@pytest.mark.parametrize("origin, status", [
    ("http://gw1.internal:{port}", 200), ("HTTP://GW1.INTERNAL:{port}/", 200), ("http://admin.example.com:{port}", 200),
    ("https://gw1.internal:{port}", 403), ("http://gw1.internal", 403), ("http://gw1.internal:1", 403),
    ("http://gw2.internal:{port}", 403), ("http://user@gw1.internal:{port}", 403)])
def test_allowed_host_names_are_also_own_origins(named_admin, origin, status):
    a = named_admin
    got, _, body = a.request("POST", "/reload", headers={"Host": f"gw1.internal:{a.port}",
                                                         "Origin": origin.format(port=a.port)})
    assert got == status, (origin, body)
    if status == 403:
        assert body["error"] == "forbidden_origin" and "cross-origin" in body["message"]


def test_allowed_hosts_without_a_token_on_loopback(rt, tmp_path):
    a = Admin(rt, tmp_path, token=None, allowed_hosts=("gw1.internal",))
    try:
        status, _, body = a.request("POST", "/reload", headers={"Host": f"gw1.internal:{a.port}"})
        assert (status, body["ok"]) == (200, True)
        status, _, body = a.request("POST", "/reload", headers={"Host": f"gw2.internal:{a.port}"})
        assert (status, body["error"]) == (403, "forbidden_origin")
    finally:
        a.stop()


def test_allowed_hosts_with_a_wildcard_bind(rt, tmp_path):
    from txgate.admin.api import AdminResource

    class Req:
        def getHost(self):
            from twisted.internet.address import IPv4Address
            return IPv4Address("TCP", "10.1.2.3", 9901)

    res = AdminResource(None, bind_host="0.0.0.0", token=b"t", allowed_hosts=("gw1.internal",))
    assert res._own_names(Req()) == {"localhost", "127.0.0.1", "::1", "10.1.2.3", "gw1.internal"}


def test_admin_config_allowed_hosts_are_normalized_and_checked(tmp_path):
    cfg = AdminConfig(allowed_hosts=("GW1.internal", "gw1.INTERNAL", "admin.example.com"))
    assert cfg.allowed_hosts == ("gw1.internal", "admin.example.com")
    for bad, fragment in (("gw1.internal:9901", "without a port"), ("*.internal", "wildcards"),
                          ("[::1]", "without a port"), ("bad_name", "expected a host name"), ("a..b", "expected a host name")):
        with pytest.raises(AdminConfigError) as info:
            AdminConfig(allowed_hosts=(bad,))
        assert info.value.key == "allowed_hosts" and fragment in str(info.value)


def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(admin):
    status, _, body = admin.request("GET", "/nope")
    assert status == 404 and body["error"] == "not_found"
    status, hdrs, body = admin.request("PATCH", "/certs")
    assert status == 405 and body["error"] == "method_not_allowed"
    assert hdrs["allow"] == "GET, POST"
    status, hdrs, body = admin.request("GET", "/certs/web/rollback")
    assert status == 405 and hdrs["allow"] == "POST"


def test_no_store_is_503(rt, tmp_path):
    a = Admin(rt, tmp_path, store=False)
    try:
        status, _, body = a.request("GET", "/certs")
        assert status == 503 and body["error"] == "no_store"
    finally:
        a.stop()


# -- certificates ---------------------------------------------------------------------------------


def test_upload_list_and_show_never_return_key_material(admin, ca, log_events):
    ck = make_leaf(ca, ["web.example.com", "127.0.0.1"])
    admin.facade.usage = {"web": ["listener:main"]}
    status, _, body = admin.request("POST", "/certs?name=web", _bundle(ck))
    assert status == 201
    assert body == {"id": body["id"], "name": "web", "version": 1}
    entry_id = body["id"]
    assert entry_id == ck.fingerprint_sha256

    status, _, listing = admin.request("GET", "/certs")
    assert status == 200
    [info] = listing["certificates"]
    assert info["name"] == "web" and info["id"] == entry_id and info["has_key"] is True
    assert info["sans"] == ["web.example.com", "127.0.0.1"]
    assert info["subject"] == "CN=web.example.com"
    assert info["spki_pin"].startswith("sha256/")
    assert info["fingerprint"] == entry_id
    assert info["not_after"].endswith("Z")
    assert info["used_by"] == ["listener:main"]

    for ref in ("web", entry_id, "web@1"):
        status, _, one = admin.request("GET", f"/certs/{ref}")
        assert status == 200, ref
        assert one["id"] == entry_id and one["used_by"] == ["listener:main"]
    status, _, one = admin.request("GET", "/certs/web")
    assert [h["version"] for h in one["history"]] == [1]

    leaks = _key_b64_lines(ck)
    for path in ("/certs", "/certs/web", f"/certs/{entry_id}"):
        _, _, body = admin.request("GET", path)
        text = json.dumps(body)
        assert "PRIVATE KEY" not in text
        assert not any(piece in text for piece in leaks)
    logged = "\n".join(str(formatEvent(e)) + repr(e) for e in log_events)
    assert "PRIVATE KEY" not in logged
    assert not any(piece in logged for piece in leaks)
    assert "admin API: stored web" in logged


def test_upload_without_name_and_without_key(admin, ca):
    ck = make_leaf(ca, ["anon.example.com"])
    status, _, body = admin.request("POST", "/certs", _bundle(ck, with_key=False))
    assert status == 201 and body["name"] is None and body["version"] is None
    _, _, listing = admin.request("GET", "/certs")
    [info] = listing["certificates"]
    assert info["has_key"] is False and info["used_by"] == []


@pytest.mark.parametrize(
    "case, code",
    [
        ("expired", "certificate_expired"),
        ("not_yet_valid", "certificate_not_yet_valid"),
        ("key_mismatch", "key_mismatch"),
        ("garbage", "malformed_pem"),
        ("empty", "malformed_pem"),
        ("bad_key", "malformed_key"),
        ("bad_name", "invalid_name"),
    ],
)
def test_bad_uploads_are_400_with_the_store_reason(admin, ca, case, code):
    good = make_leaf(ca, ["good.example.com"])
    path = "/certs?name=x"
    if case == "expired":
        ck = make_leaf(ca, ["old.example.com"], not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(days=1))
        body = _bundle(ck)
    elif case == "not_yet_valid":
        ck = make_leaf(ca, ["new.example.com"], not_before=NOW + timedelta(days=3), not_after=NOW + timedelta(days=30))
        body = _bundle(ck)
    elif case == "key_mismatch":
        body = pem_chain(good) + pem_key(make_leaf(ca, ["other.example.com"]))
    elif case == "garbage":
        body = b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    elif case == "empty":
        body = b""
    elif case == "bad_key":
        body = pem_chain(good) + b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    else:
        body = _bundle(good)
        path = "/certs?name=-bad/name"
    status, _, resp = admin.request("POST", path, body)
    assert status == 400, resp
    assert resp["error"] == code and resp["message"]
    _, _, listing = admin.request("GET", "/certs")
    assert listing["certificates"] == []


def test_unknown_refs_are_404_and_invalid_refs_400(admin):
    status, _, body = admin.request("GET", "/certs/missing")
    assert status == 404 and body["error"] == "not_found"
    status, _, body = admin.request("GET", "/certs/" + "ab" * 32)
    assert status == 404 and body["error"] == "not_found"
    status, _, body = admin.request("GET", "/certs/web@0")
    assert status == 400 and body["error"] == "invalid_ref"


def test_delete_is_409_while_in_use_then_200(admin, ca):
    ck = make_leaf(ca, ["del.example.com"])
    _, _, created = admin.request("POST", "/certs?name=del", _bundle(ck))
    admin.facade.usage = {"store:del": ["listener:main", "listener:main sni:del.example.com"]}
    status, _, body = admin.request("DELETE", "/certs/del")
    assert status == 409 and body["error"] == "in_use"
    assert body["used_by"] == ["listener:main", "listener:main sni:del.example.com"]
    assert "listener:main" in body["message"]
    # A reference by ID (or to one version) counts as a use of the name too.
    admin.facade.usage = {created["id"]: ["api:billing upstream_certificate"]}
    status, _, body = admin.request("DELETE", "/certs/del")
    assert status == 409 and body["used_by"] == ["api:billing upstream_certificate"]
    admin.facade.usage = {"del@1": ["listener:old"]}
    assert admin.request("DELETE", "/certs/del")[0] == 409
    admin.facade.usage = {"other": ["listener:main"]}
    status, _, body = admin.request("DELETE", "/certs/del")
    assert (status, body) == (200, {"deleted": "del"})
    assert admin.request("GET", "/certs/del")[0] == 404
    assert admin.request("DELETE", "/certs/del")[0] == 404


def test_delete_by_id(admin, ca):
    ck = make_leaf(ca, ["anon.example.com"])
    _, _, created = admin.request("POST", "/certs", _bundle(ck))
    admin.facade.usage = {created["id"]: ["listener:x"]}
    assert admin.request("DELETE", f"/certs/{created['id']}")[0] == 409
    admin.facade.usage = {}
    assert admin.request("DELETE", f"/certs/{created['id']}")[0] == 200
    assert admin.request("DELETE", "/certs/" + "cd" * 32)[0] == 404
    status, _, body = admin.request("DELETE", "/certs/x@2")
    assert status == 400 and body["error"] == "invalid_ref"


def test_renewal_adds_a_version_and_rollback_goes_back(admin, ca):
    v1, v2 = make_leaf(ca, ["r.example.com"]), make_leaf(ca, ["r.example.com"])
    assert admin.request("POST", "/certs?name=r", _bundle(v1))[2]["version"] == 1
    _, _, second = admin.request("POST", "/certs?name=r", _bundle(v2))
    assert second["version"] == 2
    _, _, shown = admin.request("GET", "/certs/r")
    assert shown["version"] == 2 and [h["version"] for h in shown["history"]] == [1, 2]
    status, _, body = admin.request("POST", "/certs/r/rollback")
    assert status == 200 and body["version"] == 1
    assert admin.request("GET", "/certs/r")[2]["version"] == 1
    status, _, body = admin.request("POST", "/certs/r/rollback")
    assert status == 409 and body["error"] == "no_previous_version"
    assert admin.request("POST", "/certs/none/rollback")[0] == 404


def test_csr_flow_keeps_the_key_inside(admin, ca, log_events):
    status, _, body = admin.request("POST", "/csr", json.dumps({"name": "api", "dns": ["api.example.com"],
                                                                   "ips": ["127.0.0.1"]}))
    assert status == 201, body
    assert set(body) == {"name", "csr"}
    assert "PRIVATE KEY" not in json.dumps(body)
    csr = x509.load_pem_x509_csr(body["csr"].encode())
    assert csr.is_signature_valid
    assert admin.request("GET", "/csr/api")[2]["csr"] == body["csr"]
    _, _, listing = admin.request("GET", "/certs")
    assert listing["pending"] == ["api"]

    # PUT with a certificate for another key: refused, the pending key stays.
    stranger = make_leaf(ca, ["api.example.com"])
    status, _, resp = admin.request("PUT", "/certs/api", pem_chain(stranger))
    assert status == 400 and resp["error"] == "key_mismatch"
    # A key in the PUT body is refused (the key is the pending one).
    status, _, resp = admin.request("PUT", "/certs/api", _bundle(stranger))
    assert status == 400 and resp["error"] == "invalid_request"

    signed = _sign_csr(ca, csr)
    status, _, resp = admin.request("PUT", "/certs/api", signed)
    assert status == 200, resp
    assert resp["name"] == "api" and resp["version"] == 1
    _, _, shown = admin.request("GET", "/certs/api")
    assert shown["has_key"] is True and shown["sans"] == ["api.example.com", "127.0.0.1"]
    assert admin.raw_store.get("api").key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert admin.request("GET", "/certs")[2]["pending"] == []
    status, _, resp = admin.request("PUT", "/certs/api", signed)
    assert status == 404 and resp["error"] == "no_pending_key"
    key_pem = admin.raw_store.get("api").key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    leaks = [ln for ln in key_pem.splitlines() if ln and not ln.startswith("-----")]
    logged = "\n".join(str(formatEvent(e)) + repr(e) for e in log_events)
    assert "PRIVATE KEY" not in logged and not any(p in logged for p in leaks)


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ("not json", "not valid JSON"),
        ("[1]", "JSON object"),
        ({"dns": ["a.example"]}, "'name'"),
        ({"name": "n"}, "at least one"),
        ({"name": "n", "dns": [1]}, "'dns'"),
        ({"name": "n", "dns": ["a"], "key_type": "dsa"}, "key_type"),
        ({"name": "n", "dns": ["a"], "key": "x"}, "unknown field"),
        ({"name": "bad name", "dns": ["a"]}, "invalid store name"),
        ({"name": "n", "ips": ["not-an-ip"]}, ""),
    ],
)
def test_bad_csr_requests_are_400(admin, payload, fragment):
    body = payload if isinstance(payload, str) else json.dumps(payload)
    status, _, resp = admin.request("POST", "/csr", body)
    assert status == 400, resp
    assert resp["error"] in ("invalid_request", "invalid_name")
    assert fragment in resp["message"]


def test_oversized_body_is_413(admin):
    status, _, body = admin.request("POST", "/certs?name=big", b"x" * ((1 << 20) + 10))
    assert status == 413 and body["error"] == "request_too_large"


# -- reload ---------------------------------------------------------------------------------------


def test_reload_ok_and_failure(admin):
    status, _, body = admin.request("POST", "/reload")
    assert (status, body) == (200, {"ok": True, "message": "reloaded: 1 listener"})
    assert admin.facade.reloads == ["admin API"]
    admin.facade.reload_result = ReloadResult(False, "gw.ini: [listener:main] certificate: x.pem: file not found")
    status, _, body = admin.request("POST", "/reload")
    assert status == 422
    assert body == {"error": "reload_failed", "ok": False,
                    "message": "gw.ini: [listener:main] certificate: x.pem: file not found"}


def test_store_writes_do_not_call_reload_themselves(admin, ca):
    admin.request("POST", "/certs?name=w", _bundle(make_leaf(ca, ["w.example"])))
    assert admin.facade.reloads == []


def test_an_unexpected_error_is_500_without_details(admin, log_events):
    def broken(reason):
        raise RuntimeError("boom with internals")

    admin.facade.reload = broken
    status, _, body = admin.request("POST", "/reload")
    assert status == 500 and body == {"error": "internal_error", "message": "internal error (see the gateway log)"}


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_endpoint_serves_prometheus_text(admin):
    from prometheus_client.parser import text_string_to_metric_families

    admin.facade.held = [HeldCertificate("listener:main", "listener", "ab" * 32, NOW + timedelta(days=10), "CN=x")]
    admin.facade.upstreams = {"billing": 3}
    admin.metrics.handshake("main", "TLSv1.3", "ok")
    status, hdrs, text = admin.request("GET", "/metrics")
    assert status == 200
    assert hdrs["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    [exp] = fams["txgate_certificate_expiry_timestamp_seconds"].samples
    assert exp.labels == {"name": "listener:main", "role": "listener", "fingerprint": "ab" * 32}
    assert exp.value == (NOW + timedelta(days=10)).timestamp()
    assert fams["txgate_upstream_connections"].samples[0].value == 3
    hs = [s for s in fams["txgate_tls_handshakes"].samples if s.name == "txgate_tls_handshakes_total"]
    assert hs[0].labels == {"listener": "main", "version": "TLSv1.3", "result": "ok"}


# -- config ---------------------------------------------------------------------------------------


def test_admin_config_refuses_non_loopback_without_protection(tmp_path):
    with pytest.raises(AdminConfigError) as exc:
        AdminConfig(bind_host="0.0.0.0", bind_port=9901)
    assert exc.value.key == "bind" and "client_ca" in str(exc.value) and "token_file" in str(exc.value)
    AdminConfig(bind_host="0.0.0.0", token_file="t")
    AdminConfig(bind_host="10.1.2.3", client_ca="ca.pem")
    AdminConfig(bind_host="::1")
    with pytest.raises(AdminConfigError):
        AdminConfig(bind_port=70000)
    assert AdminConfig(client_ca="c", token_file="t").auth == "mtls+token"
    assert AdminConfig().auth == "none" and not AdminConfig().tls


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
                                        ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False),
                                        ("192.168.1.2", False), ("admin.example.com", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_token_file_problems_name_the_key(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, fragment in ((str(empty), "empty"), (str(tmp_path / "missing"), "No such file")):
        with pytest.raises(AdminConfigError) as exc:
            read_token(path)
        assert exc.value.key == "token_file" and fragment in str(exc.value)
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    with pytest.raises(AdminConfigError):
        read_token(str(spaced))
    good = tmp_path / "good"
    good.write_text("  tok3n\n")
    assert read_token(str(good)) == b"tok3n"


# -- mTLS -----------------------------------------------------------------------------------------


def _sign_csr(ca, csr, *, days: int = 30) -> bytes:
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.leaf.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=days))
        .add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + ca.leaf.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def mtls_admin(rt, tmp_path, ca):
    client_ca = write_ca(tmp_path, "clients-ca", ca)
    a = Admin(rt, tmp_path, token=None, client_ca=client_ca)
    yield a
    a.stop()


def test_mtls_admin_certificate_covers_allowed_hosts(rt, ca, tmp_path):
    """https://gw1.internal:PORT verifies against state_dir/ca.pem, and that Host is answered."""
    import socket

    a = Admin(rt, tmp_path, token=None, client_ca=write_ca(tmp_path, "clients-ca", ca), allowed_hosts=("gw1.internal",))
    try:
        good = write_pair(tmp_path, "operator", make_leaf(ca, ["operator"], client=True))
        ctx = _client_context(a.service.ca_path, good)
        replies = []
        for host in ("gw1.internal", "gw2.internal"):
            raw = socket.create_connection(("127.0.0.1", a.port), timeout=10)
            with ctx.wrap_socket(raw, server_hostname="gw1.internal") as tls:  # checks the certificate's names
                tls.sendall(f"GET /certs HTTP/1.1\r\nHost: {host}:{a.port}\r\nConnection: close\r\n\r\n".encode())
                chunks = []
                while chunk := tls.recv(65536):
                    chunks.append(chunk)
            replies.append(b"".join(chunks))
        assert replies[0].startswith(b"HTTP/1.1 200"), replies[0][:200]
        assert replies[1].startswith(b"HTTP/1.1 403") and b"forbidden_origin" in replies[1]
    finally:
        a.stop()


def _client_context(server_ca: str, pair: tuple[str, str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=server_ca)
    if pair is not None:
        ctx.load_cert_chain(*pair)
    return ctx


def test_mtls_admin_requires_a_client_certificate_from_client_ca(mtls_admin, ca, tmp_path, log_events):
    a = mtls_admin
    server_ca = os.path.join(a.config.state_dir, "ca.pem")
    assert a.service.ca_path == server_ca
    good = write_pair(tmp_path, "operator", make_leaf(ca, ["operator"], client=True))
    status, _, body = a.request("GET", "/certs", context=_client_context(server_ca, good))
    assert status == 200 and body["certificates"] == []

    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        a.request("GET", "/certs", context=_client_context(server_ca, None))
    stranger_ca = make_ca("stranger CA")
    bad = write_pair(tmp_path, "stranger", make_leaf(stranger_ca, ["operator"], client=True))
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        a.request("GET", "/certs", context=_client_context(server_ca, bad))

    from prometheus_client.parser import text_string_to_metric_families

    def results():
        _, _, text = a.request("GET", "/metrics", context=_client_context(server_ca, good))
        fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
        return {s.labels["result"]: s.value for s in fams["txgate_tls_handshakes"].samples
                if s.name.endswith("_total") and s.labels["listener"] == "admin"}

    from conftest import poll

    found = poll(lambda: (r := results()).get("unknown_ca") and r.get("no_certificate") and r, 10,
                 what="admin handshake refusals in metrics")
    assert found["ok"] >= 2
    logged = "\n".join(str(formatEvent(e)) for e in log_events)
    assert "admin API: TLS handshake with 127.0.0.1 refused: client_certificate_untrusted" in logged
    assert "refused: client_certificate_required" in logged


# -- GET /acme ------------------------------------------------------------------------------------


def test_acme_status_needs_the_token_and_lists_the_facades_certificates(admin):
    status, _, body = admin.request("GET", "/acme", auth=False)
    assert status == 401
    status, _, body = admin.request("GET", "/acme")
    assert (status, body) == (200, {"certificates": []})  # a facade without ACME
    entry = {"names": ["www.example.com"], "slot": "acme/www.example.com", "issuer": "CN=CA", "last_error": None}
    admin.facade.acme_status = lambda: [entry]
    status, _, body = admin.request("GET", "/acme")
    assert (status, body) == (200, {"certificates": [entry]})
