"""The proxy end to end: a real gateway process, curl / h2 / raw TLS clients, real backends on loopback."""
from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time

import pytest

from backends import H2Client
from conftest import ADMIN_EPHEMERAL, H2_ENGINES, Backend, Gateway, curl, free_port, poll


def api(name, path, upstream, **kw):
    lines = [f"[api:{name}]", f"path = {path}", f"upstream = {upstream}"]
    lines += [f"{k} = {v}" for k, v in kw.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def env(request, tmp_path_factory, certs):
    """One gateway with many APIs in front of real backends (started once for the module; once more per
    HTTP/2 engine for the h2 tests that name one)."""
    a, b, slow = Backend(), Backend(), Backend()
    unknown_ca_cert = certs.leaf("upstream-unknown-ca", ["127.0.0.1", "localhost"], ca=certs.other_root)
    tls_unknown = Backend(tls=unknown_ca_cert)
    mismatch_cert = certs.leaf("upstream-mismatch", ["other.test"])
    tls_mismatch = Backend(tls=mismatch_cert)
    good_cert = certs.leaf("upstream-good", ["127.0.0.1"])
    tls_good = Backend(tls=good_cert)
    dead = f"http://127.0.0.1:{free_port()}"
    config = (
        ADMIN_EPHEMERAL + "[gateway]\nshutdown_timeout = 2\n\n[listener:main]\nbind = 127.0.0.1:0\nheader_timeout = 1\n\n"
        + api("plain", "/plain", a.url())
        + api("strip", "/strip", a.url() + "/base", strip_path="yes")
        + api("rr", "/rr", f"{a.url()} {b.url()}")
        + api("failover", "/failover", f"{dead} {b.url()}")
        + api("dead", "/dead", dead)
        + api("tlsgood", "/tls-good", tls_good.url("https"), upstream_ca=certs.root_pem)
        + api("tlsunknown", "/tls-unknown-ca", tls_unknown.url("https"), upstream_ca=certs.root_pem)
        + api("tlsmismatch", "/tls-mismatch", tls_mismatch.url("https"), upstream_ca=certs.root_pem)
        + api("s", "/s", a.url(), strip_path="yes")
        + api("timeout", "/timeout", slow.url(), timeout="1", strip_path="yes")
        + api("busy", "/busy", slow.url(), max_connections="1", max_pending="0", strip_path="yes")
        + api("limited", "/limited", a.url(), max_body_bytes="1000")
        + api("preserve", "/preserve", a.url(), preserve_host="yes")
        + api("echo", "/echo", "builtin:echo")
    )
    gw = Gateway(tmp_path_factory.mktemp("proxy") / "gw", config, h2_engine=getattr(request, "param", None)).start()
    yield {"gw": gw, "a": a, "b": b, "slow": slow, "tls_good": tls_good}
    code = gw.stop()
    for be in (a, b, slow, tls_unknown, tls_mismatch, tls_good):
        be.close()
    assert code == 0


def get(env, path, *args, host="localhost"):
    gw = env["gw"]
    r = curl("--http1.1", "--cacert", gw.ca, "-D", "-", *args, gw.url(path, host=host))
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    return status, [(k.lower(), v) for k, v in headers], body


def error_of(status_headers_body):
    """(status, code, request ID) of an error response: the body has the code, a generic message and the ID."""
    status, headers, body = status_headers_body
    assert ("content-type", "application/json") in headers
    doc = json.loads(body)
    assert set(doc) == {"error", "message", "request_id"}
    assert ("x-request-id", doc["request_id"]) in headers
    return status, doc["error"], doc["request_id"]


def detail_of(env, request_id):
    """The gateway's log line with the details of the error answered to ``request_id``."""
    return env["gw"].wait_log(rf".*\(request {request_id} on \S+\)|request {request_id} on \S+: .*").group(0)


def last_request(backend, path_prefix):
    return next(r for r in reversed(backend.requests) if r["path"].startswith(path_prefix))


def hdr(req, name):
    return [v for k, v in req["headers"] if k.lower() == name]


# -- errors ----------------------------------------------------------------------------------


def test_no_route_404(env):
    assert error_of(get(env, "/nowhere"))[:2] == (404, "no_route")


def test_refused_upstream_502_unavailable(env):
    status, code, rid = error_of(get(env, "/dead/x"))
    assert (status, code) == (502, "upstream_unavailable")
    # The details are in the log line with the same request ID, not in the body (issue 15).
    assert "refused" in detail_of(env, rid)
    env["gw"].wait_log(r"upstream_unavailable: .*connection refused")


def test_upstream_reset_502_unavailable(env):
    status, code, msg = error_of(get(env, "/s/close"))
    assert (status, code) == (502, "upstream_unavailable")


def test_tls_upstream_verified_ok(env):
    status, _, body = get(env, "/tls-good/ok")
    assert status == 200 and json.loads(body)["path"] == "/tls-good/ok"


def test_tls_unknown_ca_502_and_log_says_why(env):
    status, code, msg = error_of(get(env, "/tls-unknown-ca/x"))
    assert (status, code) == (502, "upstream_tls_error")
    line = env["gw"].wait_log(r"api \S+ upstream \S+ upstream_tls_error: .*").group(0)
    assert "unknown CA" in line


def test_tls_hostname_mismatch_502_and_log_says_why(env):
    status, code, msg = error_of(get(env, "/tls-mismatch/x"))
    assert (status, code) == (502, "upstream_tls_error")
    m = env["gw"].wait_log(r"upstream https://127\.0\.0\.1:\d+ upstream_tls_error: .*(mismatch|does not match|not valid for).*")
    assert "127.0.0.1" in m.group(0)


def test_timeout_504(env):
    t0 = time.monotonic()
    status, code, msg = error_of(get(env, "/timeout/sleep/3"))
    assert (status, code) == (504, "upstream_timeout")
    assert time.monotonic() - t0 < 2.9


def test_busy_503_when_pool_and_queue_full(env):
    gw = env["gw"]
    slow = env["slow"]
    first = subprocess.Popen(["curl", "-sS", "--cacert", gw.ca, gw.url("/busy/sleep/1.5")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        poll(lambda: any(r["path"] == "/sleep/1.5" for r in slow.requests), what="slow request in flight")
        status, code, msg = error_of(get(env, "/busy/x"))
        assert (status, code) == (503, "upstream_busy")
        out, err = first.communicate(timeout=10)
        assert json.loads(out)["path"] == "/sleep/1.5"
    finally:
        first.kill()
    # The connection is free again.
    assert get(env, "/busy/again")[0] == 200


def test_malformed_request_400(env):
    gw = env["gw"]
    ctx = ssl.create_default_context(cafile=gw.ca)
    with socket.create_connection(("127.0.0.1", gw.port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.settimeout(10)
        s.sendall(b"GET /plain/x HTTP/1.1\r\nHost: localhost\r\nthis is not a header\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"] == "bad_request"
    # Even a request too broken to parse gets an ID, returned and logged with the details.
    rid = json.loads(body)["request_id"]
    assert b"\r\nx-request-id: " + rid.encode() + b"\r\n" in head + b"\r\n"
    assert "malformed HTTP/1.1 request" in detail_of(env, rid)


def test_request_too_large_by_content_length_413(env, tmp_path):
    f = tmp_path / "body"
    f.write_bytes(b"x" * 5000)
    before = len(env["a"].requests)
    status, code, _ = error_of(get(env, "/limited/up", "--data-binary", f"@{f}"))
    assert (status, code) == (413, "request_too_large")
    assert get(env, "/limited/ok", "--data-binary", "small")[0] == 200
    assert len(env["a"].requests) == before + 1


def test_request_too_large_streamed_chunked_413(env, tmp_path):
    f = tmp_path / "body"
    f.write_bytes(b"x" * 5000)
    status, code, _ = error_of(get(env, "/limited/up", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{f}"))
    assert (status, code) == (413, "request_too_large")


def test_large_body_rejected_early_client_still_sees_413(env, tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"x" * (8 * 1024 * 1024))
    status, code, _ = error_of(get(env, "/limited/up", "--data-binary", f"@{f}"))
    assert (status, code) == (413, "request_too_large")


def test_headers_too_large_431(env):
    status, code, _ = error_of(get(env, "/plain/x", "-H", "X-Big: " + "a" * 70000))
    assert (status, code) == (431, "headers_too_large")


# -- balancing and pooling ------------------------------------------------------------------


def test_round_robin_across_two_upstreams(env):
    a, b = env["a"], env["b"]
    na, nb = len(a.requests), len(b.requests)
    gw = env["gw"]
    r = curl("--http1.1", "--cacert", gw.ca, *[gw.url(f"/rr/{i}") for i in range(6)])
    assert r.returncode == 0
    assert len(a.requests) - na == 3 and len(b.requests) - nb == 3


def test_next_target_on_connect_failure(env):
    b = env["b"]
    n = len(b.requests)
    for i in range(3):
        status, _, body = get(env, f"/failover/{i}")
        assert status == 200
    assert len(b.requests) - n == 3


def test_keep_alive_reuse_upstream_connections(env):
    a = env["a"]
    n = len(a.requests)
    gw = env["gw"]
    urls = [gw.url(f"/plain/ka/{i}") for i in range(40)]
    # Several client connections in sequence: upstream connections are pooled across them.
    for k in range(4):
        r = curl("--http1.1", "--cacert", gw.ca, *urls[k * 10:(k + 1) * 10])
        assert r.returncode == 0
    reqs = [r for r in a.requests[n:] if r["path"].startswith("/plain/ka/")]
    assert len(reqs) == 40
    ports = {r["client_port"] for r in reqs}
    assert len(ports) <= 2, ports


# -- headers --------------------------------------------------------------------------------


def test_hop_by_hop_stripped_both_ways(env):
    status, headers, _ = get(env, "/plain/hop", "-H", "Connection: X-Secret", "-H", "X-Secret: s",
                             "-H", "Keep-Alive: timeout=1", "-H", "TE: trailers",
                             "-H", "Proxy-Authorization: Basic Zm9v", "-H", "Proxy-Connection: keep-alive")
    assert status == 200
    req = last_request(env["a"], "/plain/hop")
    sent = {k.lower() for k, _ in req["headers"]}
    for gone in ("x-secret", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
        assert gone not in sent, gone
    assert hdr(req, "connection") in ([], ["keep-alive"])
    names = [k for k, _ in headers]
    assert "x-hop" not in names and "keep-alive" not in names
    assert ("connection", "keep-alive, X-Hop") not in headers
    assert [v for k, v in headers if k == "set-cookie"] == ["a=1", "b=2"]
    assert ("via", "1.1 txgate") in headers


def test_forwarded_headers_set_and_spoofing_ignored(env):
    status, _, _ = get(env, "/plain/fwd", "-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Forwarded-Proto: http",
                       "-H", "X-Forwarded-Host: evil.test", "-H", "Forwarded: for=6.6.6.6;proto=http",
                       "-H", "X-Real-IP: 6.6.6.6", "-H", "Via: 1.0 fred")
    assert status == 200
    req = last_request(env["a"], "/plain/fwd")
    port = env["gw"].port
    assert hdr(req, "x-forwarded-for") == ["127.0.0.1"]
    assert hdr(req, "x-forwarded-proto") == ["https"]
    assert hdr(req, "x-forwarded-host") == [f"localhost:{port}"]
    assert hdr(req, "forwarded") == [f'for=127.0.0.1;proto=https;host="localhost:{port}"']
    assert hdr(req, "x-real-ip") == []
    assert hdr(req, "via") == ["1.0 fred, 1.1 txgate"]
    assert "6.6.6.6" not in json.dumps(req["headers"])
    assert hdr(req, "host") == [f"127.0.0.1:{env['a'].port}"]


def test_preserve_host(env):
    get(env, "/preserve/h")
    req = last_request(env["a"], "/preserve/h")
    assert hdr(req, "host") == [f"localhost:{env['gw'].port}"]


def test_strip_path_and_base_path_and_query_preserved(env):
    status, _, body = get(env, "/strip/x/y?a=1&b=%20z&a=2")
    assert status == 200
    assert json.loads(body)["path"] == "/base/x/y?a=1&b=%20z&a=2"
    status, _, body = get(env, "/plain/q?x=%2F&y")
    assert json.loads(body)["path"] == "/plain/q?x=%2F&y"


@pytest.mark.parametrize("env", H2_ENGINES, indirect=True)
def test_h2_to_h1_translation(env):
    gw = env["gw"]
    c = H2Client(gw.port, gw.ca)
    try:
        sid = c.request("/plain/h2?q=1", [("cookie", "a=1"), ("cookie", "b=2"), ("x-multi", "1"),
                                           ("x-multi", "2"), ("x-forwarded-for", "6.6.6.6")])
        r = c.wait(sid)
        hdrs = r["headers"]
        assert dict(hdrs)[":status"] == "200"
        assert [v for k, v in hdrs if k == "set-cookie"] == ["a=1", "b=2"]
        assert not any(k in ("connection", "keep-alive", "x-hop") for k, _ in hdrs)
        req = last_request(env["a"], "/plain/h2")
        assert req["path"] == "/plain/h2?q=1"
        assert hdr(req, "cookie") == ["a=1; b=2"]
        assert hdr(req, "x-multi") == ["1", "2"]
        assert hdr(req, "x-forwarded-host") == [f"localhost:{gw.port}"]
        assert hdr(req, "x-forwarded-for") == ["127.0.0.1"]
        assert hdr(req, "via") == ["2 txgate"]
        # POST with a body over h2 becomes a chunked (or sized) h1 request upstream.
        sid = c.request("/plain/h2post", method="POST", body=b"hello")
        assert json.loads(bytes(c.wait(sid)["body"]))["body_bytes"] == 5
        sid = c.request("/plain/h2post2", [("content-length", "3")], method="POST", body=b"abc")
        assert json.loads(bytes(c.wait(sid)["body"]))["body_bytes"] == 3
    finally:
        c.close()
    # preserve_host over h2: :authority becomes Host.
    c = H2Client(gw.port, gw.ca)
    try:
        c.wait(c.request("/preserve/h2"))
    finally:
        c.close()
    assert hdr(last_request(env["a"], "/preserve/h2"), "host") == [f"localhost:{gw.port}"]


@pytest.mark.parametrize("env", H2_ENGINES, indirect=True)
def test_h2_errors_are_json(env):
    gw = env["gw"]
    r = curl("--http2", "--cacert", gw.ca, "-w", "\n%{http_code} %{http_version}", gw.url("/dead/x"))
    body, _, tail = r.stdout.decode().rpartition("\n")
    assert tail == "502 2"
    assert json.loads(body)["error"] == "upstream_unavailable"


def test_access_log_line_for_proxied_request(env):
    get(env, "/plain/logged?z=9")
    env["gw"].wait_log(r'main 127\.0\.0\.1:\d+ sni=localhost tls=TLSv1\.3 cipher=\S+ alpn=http/1\.1 '
                       r'"GET localhost:\d+ /plain/logged\?z=9 HTTP/1\.1" 200 in=0 out=\d+ api=plain '
                       r'upstream=http://127\.0\.0\.1:\d+ [\d.]+ms')


@pytest.mark.parametrize("mode,args,max_conns", [("h1", ["--h1", "-c", "6"], 8), ("h2", ["-c", "2", "-m", "8"], 18)])
def test_busy_route_reuses_a_bounded_set_of_upstream_connections(env, mode, args, max_conns):
    a = env["a"]
    n = len(a.requests)
    r = subprocess.run(["h2load", "-n", "300", *args, env["gw"].url(f"/plain/load-{mode}")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"status codes: 300 2xx", r.stdout), r.stdout
    reqs = [x for x in a.requests[n:] if x["path"] == f"/plain/load-{mode}"]
    assert len(reqs) == 300
    ports = {x["client_port"] for x in reqs}
    assert len(ports) <= max_conns, f"{len(ports)} upstream connections for 300 requests"


def test_slowloris_client_disconnected_after_header_timeout(env):
    gw = env["gw"]
    ctx = ssl.create_default_context(cafile=gw.ca)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port)), server_hostname="localhost")
    s.settimeout(10)
    t0 = time.monotonic()
    s.sendall(b"GET /plain/x HTTP/1.1\r\nHost: localhost\r\n")
    assert s.recv(65536) == b""  # a graceful close (close_notify), no response
    assert time.monotonic() - t0 < 3
    s.close()
    gw.wait_log(r"did not send request headers within 1(\.0)?s; closing")


def test_head_through_the_proxy_then_reuse(env):
    gw = env["gw"]
    r = curl("--http1.1", "--cacert", gw.ca, "-I", gw.url("/plain/head"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"HTTP/1.1 200") and b"content-length: " in r.stdout.lower()
    assert get(env, "/plain/after-head")[0] == 200
    assert last_request(env["a"], "/plain/head")["method"] == "HEAD"
