"""Routing without sockets: host (exact, wildcard, any), longest segment-aware prefix, strip_path, dot segments."""
from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from txgate.config import ApiConfig
from txgate.testing.gateway import LogCapture
from txgate.runtime.dispatch import ApiRuntime, ListenerDispatcher
from txgate.http.paths import normalize_path, remove_dot_segments
from txgate.http.exchange import ConnectionInfo, RequestHead
from txgate.http.requests import dispatch_request
from txgate.http.router import Router, prefix_matches, strip_prefix


def router():
    return Router(
        [
            (("api.example.com",), "/", "exact-root"),
            (("api.example.com",), "/v1", "exact-v1"),
            (("*.example.com",), "/", "wild-root"),
            (("*.example.com",), "/v1/users", "wild-users"),
            ((), "/", "any-root"),
            ((), "/api", "any-api"),
            ((), "/api/v2", "any-api-v2"),
        ]
    )


@pytest.mark.parametrize(
    "host,path,expected",
    [
        ("api.example.com", "/v1/x", ("/v1", "exact-v1")),
        ("api.example.com", "/v1", ("/v1", "exact-v1")),
        ("api.example.com", "/v1x", ("/", "exact-root")),
        ("api.example.com", "/v1/users", ("/v1", "exact-v1")),  # exact host wins over a longer wildcard prefix
        ("www.example.com", "/v1/users/7", ("/v1/users", "wild-users")),
        ("www.example.com", "/other", ("/", "wild-root")),
        ("a.b.example.com", "/x", ("/", "any-root")),  # a wildcard covers one label
        ("example.com", "/api", ("/api", "any-api")),  # *.example.com does not cover the apex
        ("other.test", "/api/v2/x", ("/api/v2", "any-api-v2")),
        ("other.test", "/api/v2", ("/api/v2", "any-api-v2")),
        ("other.test", "/api/v20", ("/api", "any-api")),
        ("other.test", "/apix", ("/", "any-root")),
    ],
)
def test_exact_then_wildcard_then_any_then_longest_prefix(host, path, expected):
    assert router().match(host, path) == expected


def test_no_route_without_catch_all():
    r = Router([(("a.test",), "/api", 1)])
    assert r.match("a.test", "/other") is None
    assert r.match("b.test", "/api") is None
    assert r.match("a.test", "/api/") == ("/api", 1)


def test_exact_host_without_matching_path_falls_back_to_wildcard_then_any():
    r = Router([(("a.example.com",), "/only", 1), (("*.example.com",), "/w", 2), ((), "/", 3)])
    assert r.match("a.example.com", "/w/x") == ("/w", 2)
    assert r.match("a.example.com", "/z") == ("/", 3)


def test_segment_aware_prefix():
    assert prefix_matches("/api", "/api")
    assert prefix_matches("/api", "/api/")
    assert prefix_matches("/api", "/api/x")
    assert not prefix_matches("/api", "/apix")
    assert not prefix_matches("/api", "/ap")
    assert prefix_matches("/", "/anything")


@pytest.mark.parametrize(
    "prefix,path,expected",
    [("/api", "/api", "/"), ("/api", "/api/", "/"), ("/api", "/api/x/y", "/x/y"), ("/", "/x", "/x")],
)
def test_strip_prefix(prefix, path, expected):
    assert strip_prefix(prefix, path) == expected


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/a/./b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/..", "/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/api/../admin", "/admin"),
        ("/a/b", "/a/b"),
        ("/a.b/c..d/.e", "/a.b/c..d/.e"),
    ],
)
def test_remove_dot_segments(path, expected):
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/api/%2e%2e/admin", "/admin"),
        ("/api/%2E%2e/admin", "/admin"),
        ("/api/.%2E/admin", "/admin"),
        ("/api/%2e/x", "/api/x"),
        ("/api/a%2eb", "/api/a.b"),  # not a dot segment: an unreserved escape, decoded (RFC 3986 6.2.2.2)
        ("/api/x", "/api/x"),
    ],
)
def test_normalize_path_decodes_encoded_dot_segments(path, expected):
    assert normalize_path(path) == expected


# -- the dispatcher, with a fake stream (no sockets) ---------------------------------------


class FakeStream:
    def __init__(self):
        self.info = ConnectionInfo("main", "192.0.2.7", 5555, tls=True)
        self.status = None
        self.headers = None
        self.body = b""
        self.finished = False

    def start_response(self, status, headers, content_length):
        self.status, self.headers = status, headers

    def write(self, data):
        self.body += data

    def finish(self):
        self.finished = True

    def abort(self):
        self.finished = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class NullLog:
    def record(self, *a):
        pass


def dispatcher(*apis):
    return ListenerDispatcher("main", [ApiRuntime(a, None) for a in apis], Clock(), NullLog())


def run(d, target: bytes, host=b"api.test", method=b"GET"):
    s = FakeStream()
    head = RequestHead(method, target, host, [(b"host", host)], None, False, b"1.1")
    h = dispatch_request(d, s, head)
    h.body_finished()
    return s, (json.loads(s.body) if s.body else None)


def test_dispatch_strip_path_and_dot_segments():
    d = dispatcher(
        ApiConfig("strip", echo=True, path="/svc", strip_path=True),
        ApiConfig("keep", echo=True, path="/keep"),
    )
    s, body = run(d, b"/svc/a/b?x=1")
    assert s.status == 200 and body["path"] == "/a/b" and body["query"] == "x=1"
    s, body = run(d, b"/svc")
    assert body["path"] == "/"
    s, body = run(d, b"/keep/a/../b")
    assert body["path"] == "/keep/b"
    # Dot segments cannot climb out of a prefix into another API (or to no API).
    s, body = run(d, b"/keep/../svc/x")
    assert body["path"] == "/x"
    s, body = run(d, b"/keep/%2e%2e/secret")
    assert s.status == 404 and body["error"] == "no_route"


def test_dispatch_no_route_is_json_404():
    d = dispatcher(ApiConfig("a", echo=True, path="/a", hosts=("api.test",)))
    logs = LogCapture()
    logs.install()
    try:
        s, body = run(d, b"/a", host=b"other.test")
    finally:
        logs.uninstall()
    assert s.status == 404 and body == {"error": "no_route", "message": body["message"], "request_id": body["request_id"]}
    # The body says no more than the code (issue 15); the details are logged with the same request ID.
    assert body["message"] == "no API for this host and path"
    assert "other.test" in logs.error_detail(body["request_id"])


def test_dispatch_host_port_and_case_ignored_for_routing():
    d = dispatcher(ApiConfig("a", echo=True, path="/", hosts=("api.test",)))
    s, body = run(d, b"/", host=b"API.Test:8443")
    assert s.status == 200
    assert body["headers"]["host"] == "API.Test:8443"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("//admin/users", "/admin/users"),
        ("/%61dmin/users", "/admin/users"),
        ("/%7Euser", "/~user"),
        ("/x%20y", "/x%20y"),
        ("/%e2%82%ac", "/%E2%82%AC"),
        ("/a//b/../c", "/a/c"),
    ],
)
def test_normalize_path_merges_slashes_and_decodes_unreserved(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", ["/admin%2fusers", "/a%5Cb", "/a\\b", "/a%00b"])
def test_normalize_path_refuses_ambiguous_paths(raw):
    from txgate.http.paths import UnsafePath

    with pytest.raises(UnsafePath):
        normalize_path(raw)


def test_request_host_is_the_authority_without_port_lower_cased_every_time():
    from txgate.http.exchange import RequestHead

    for authority, host in ((b"Api.Example.COM:8443", "api.example.com"), (b"[::1]:443", "::1"),
                            (b"[FE80::1]", "fe80::1"), (b"[broken", ""), (b"", ""), (b"h", "h")):
        for _ in range(2):  # the second from the cache
            assert RequestHead(b"GET", b"/", authority, [], None, False, b"1.1").host == host
