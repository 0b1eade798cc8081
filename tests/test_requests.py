"""txgate.http.requests and txgate.errors: request-head rules of h1 and h2, refusals and their
JSON responses, without sockets."""
from __future__ import annotations

import json
import re

import pytest

from txgate.errors import (
    BadRequest, ClientCertificateNotAllowed, ClientCertificateRequired, GatewayError, HeadersTooLarge,
    InternalError, UpstreamPinMismatch, UpstreamTLSError, VersionNotSupported,
)
from txgate.http.errors import error_body, send_gateway_error
from txgate.http.exchange import ConnectionInfo, NullHandler
from txgate.http.requests import Refusal, dispatch_request, h1_request_head, h2_request_head


# -- the error mapping ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "err, status, code, message",
    [
        (GatewayError(), 500, "internal_error", "internal_error"),
        (InternalError(), 500, "internal_error", "internal error"),
        (BadRequest("x"), 400, "bad_request", "x"),
        (HeadersTooLarge(), 431, "headers_too_large", "request headers are too large"),
        (VersionNotSupported("HTTP/2.0 is not supported here"), 505, "http_version_not_supported",
         "HTTP/2.0 is not supported here"),
        (ClientCertificateRequired(), 403, "client_certificate_required", "this API requires a client certificate"),
        (ClientCertificateNotAllowed(), 403, "client_certificate_not_allowed",
         "this client certificate is not allowed for this API"),
        (UpstreamPinMismatch("p"), 502, "upstream_pin_mismatch", "p"),
        (GatewayError("m", code="c", status=418), 418, "c", "m"),
    ],
)
def test_each_error_is_one_status_code_and_message(err, status, code, message):
    assert (err.status, err.code, err.message, str(err)) == (status, code, message, message)


def test_an_error_without_a_message_or_default_says_its_class_code():
    assert GatewayError(code="other").message == "internal_error"
    assert BadRequest().message == "bad_request"


def test_pin_mismatch_is_a_tls_error():
    assert isinstance(UpstreamPinMismatch(), UpstreamTLSError)


class Recorder:
    def __init__(self):
        self.info = ConnectionInfo("main", "192.0.2.7", 5555, tls=True)
        self.calls = []

    def start_response(self, status, headers, content_length):
        self.calls.append(("start", status, headers, content_length))

    def write(self, data):
        self.calls.append(("write", data))

    def finish(self):
        self.calls.append(("finish",))


def test_send_gateway_error_writes_one_complete_json_response():
    s = Recorder()
    send_gateway_error(s, HeadersTooLarge())
    body = s.calls[1][1]
    rid = json.loads(body)["request_id"]
    assert body == error_body(HeadersTooLarge(), rid.encode())
    assert s.calls == [
        ("start", 431, [(b"content-type", b"application/json")], len(body)),
        ("write", body),
        ("finish",),
    ]
    # The code and a generic message, plus the request ID (issue 15: details go to the log).
    assert json.loads(body) == {"error": "headers_too_large", "message": "request headers are too large",
                                "request_id": rid}
    assert re.fullmatch(r"[0-9a-f]{18,}", rid)


# -- dispatch_request: the dispatcher decides, the protocol answers -------------------------------
class OneDecision:
    def __init__(self, handler):
        self.handler = handler

    def dispatch(self, stream, head):
        assert not stream.calls, "the dispatcher must not write"
        return self.handler


def test_dispatch_request_answers_a_refusal_and_keeps_it_as_the_handler():
    s = Recorder()
    refusal = Refusal(ClientCertificateRequired(), "api1")
    assert dispatch_request(OneDecision(refusal), s, None) is refusal
    assert s.handler is refusal and refusal.api == "api1" and refusal.upstream_label is None
    assert s.calls[0][:2] == ("start", 403) and s.calls[-1] == ("finish",)


def test_dispatch_request_leaves_other_handlers_to_answer():
    s = Recorder()
    h = NullHandler("api2")
    assert dispatch_request(OneDecision(h), s, None) is h
    assert s.handler is h and s.calls == []


# -- HTTP/1.x heads ------------------------------------------------------------------------------
def test_h1_head_reads_host_length_and_expect():
    head, expect = h1_request_head(
        b"POST", b"/a?b=1", b"1.1",
        [(b"host", b" api.test "), (b"content-length", b"5"), (b"expect", b"100-Continue")],
    )
    assert (head.method, head.path, head.query, head.authority) == (b"POST", b"/a", b"b=1", b"api.test")
    assert (head.content_length, head.has_body, head.version, expect) == (5, True, b"1.1", True)


def test_h1_head_chunked_has_a_body_of_unknown_length():
    head, expect = h1_request_head(b"POST", b"/", b"1.1", [(b"host", b"a"), (b"transfer-encoding", b"chunked")])
    assert (head.content_length, head.has_body, expect) == (None, True, False)


def test_h1_chunked_is_recognised_whatever_its_case_and_surrounding_blanks():
    head, _ = h1_request_head(b"POST", b"/", b"1.1", [(b"host", b"a"), (b"transfer-encoding", b" Chunked\t")])
    assert (head.content_length, head.has_body) == (None, True)


def test_h1_absolute_form_target_gives_the_authority():
    head, _ = h1_request_head(b"GET", b"https://api.test:8443/x/y", b"1.1", [(b"host", b"other")])
    assert (head.target, head.authority) == (b"/x/y", b"api.test:8443")
    head, _ = h1_request_head(b"GET", b"http://api.test", b"1.1", [])
    assert (head.target, head.authority) == (b"/", b"api.test")


def test_h1_options_star_and_host_less_http10_are_accepted():
    head, _ = h1_request_head(b"OPTIONS", b"*", b"1.1", [(b"host", b"a")])
    assert head.target == b"*"
    head, _ = h1_request_head(b"GET", b"/", b"1.0", [])
    assert head.authority == b"" and head.version == b"1.0"


@pytest.mark.parametrize(
    "method, target, version, headers, status, message",
    [
        (b"GET", b"/", b"2.0", [], 505, "HTTP/2.0 is not supported here"),
        (b"GET", b"/", b"0.9", [], 505, "HTTP/0.9 is not supported here"),
        (b"GET", b"/", b"1.1", [(b"host", b"a"), (b"host", b"b")], 400,
         "malformed HTTP/1.1 request: more than one Host header"),
        (b"GET", b"x", b"1.1", [(b"host", b"a")], 400, "malformed HTTP/1.1 request: unsupported request target"),
        (b"GET", b"*", b"1.1", [(b"host", b"a")], 400, "malformed HTTP/1.1 request: unsupported request target"),
        (b"GET", b"/", b"1.1", [], 400, "malformed HTTP/1.1 request: HTTP/1.1 request without a Host header"),
        # RFC 9112 6.1: a Transfer-Encoding in an HTTP/1.0 message means faulty framing.
        (b"POST", b"/", b"1.0", [(b"transfer-encoding", b"chunked")], 400,
         "malformed HTTP/1.1 request: Transfer-Encoding in an HTTP/1.0 request"),
        (b"POST", b"/", b"1.0", [(b"connection", b"keep-alive"), (b"transfer-encoding", b"gzip, chunked")], 400,
         "malformed HTTP/1.1 request: Transfer-Encoding in an HTTP/1.0 request"),
        (b"GET", b"/", b"1.0", [(b"host", b"a"), (b"transfer-encoding", b"identity")], 400,
         "malformed HTTP/1.1 request: Transfer-Encoding in an HTTP/1.0 request"),
        # A coding other than chunked would reach the upstream undecoded and unannounced.
        (b"POST", b"/", b"1.1", [(b"host", b"a"), (b"transfer-encoding", b"gzip, chunked")], 501,
         "transfer coding 'gzip, chunked' is not supported (only chunked)"),
        (b"POST", b"/", b"1.1", [(b"host", b"a"), (b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], 501,
         "transfer coding 'chunked, chunked' is not supported (only chunked)"),
    ],
)
def test_h1_refusals(method, target, version, headers, status, message):
    with pytest.raises(GatewayError) as e:
        h1_request_head(method, target, version, headers)
    assert (e.value.status, e.value.message) == (status, message)


# -- HTTP/2 heads --------------------------------------------------------------------------------
def block(*extra, method=b"GET", path=b"/p", scheme=b"https", authority=b"api.test"):
    fields = [(b":method", method), (b":scheme", scheme), (b":path", path)]
    if authority is not None:
        fields.append((b":authority", authority))
    return fields + list(extra)


def test_h2_head_from_a_valid_block():
    head, refusal = h2_request_head(block((b"content-length", b"3"), (b"x-a", b"1")), True, 65536)
    assert refusal is None
    assert (head.method, head.target, head.authority, head.version) == (b"GET", b"/p", b"api.test", b"2")
    assert (head.content_length, head.has_body) == (3, True)
    assert head.headers == [(b"content-length", b"3"), (b"x-a", b"1")]


def test_h2_cookie_crumbs_are_joined_in_place():
    head, refusal = h2_request_head(
        block((b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")), False, 65536
    )
    assert refusal is None and head.headers == [(b"cookie", b"a=1; b=2"), (b"x", b"y")]


def test_h2_host_header_stands_in_for_a_missing_authority():
    head, refusal = h2_request_head(block((b"host", b"h.test"), authority=None), False, 65536)
    assert refusal is None and head.authority == b"h.test"


@pytest.mark.parametrize(
    "fields, status, message",
    [
        (block((b"x", b"y" * 100)), 431, "request header list too large"),
        ([(b":path", b"/")], 400, "missing :method"),
        (block(method=b"CONNECT"), 400, "CONNECT is not supported"),
        (block(path=b""), 400, "missing or invalid :path"),
        (block(path=b"p"), 400, "missing or invalid :path"),
        (block(path=b"*"), 400, "missing or invalid :path"),
    ],
)
def test_h2_refusals_without_a_head(fields, status, message):
    head, refusal = h2_request_head(fields, False, 200)
    assert head is None and (refusal.status, refusal.message) == (status, message)


@pytest.mark.parametrize(
    "fields, message",
    [
        # Every value that crosses into the HTTP/1.1 request line must be valid there.
        (block(method=b"GET /admin"), "invalid :method"),
        (block(method=b"GET\t"), "invalid :method"),
        (block(method=b"G(T"), "invalid :method"),
        (block(method=b"GE\x00T"), "invalid :method"),
        (block(method=b"G\xc3\x89T"), "invalid :method"),
        (block(method=b""), "invalid :method"),
        (block(path=b"/a b"), "missing or invalid :path"),
        (block(path=b"/a HTTP/1.1\r\nX: y"), "missing or invalid :path"),
        (block(path=b"/a\tb"), "missing or invalid :path"),
        (block(path=b"/a\x7fb"), "missing or invalid :path"),
        (block(path=b"/a\x00"), "missing or invalid :path"),
        (block(path=b"/\xc3\xa9"), "missing or invalid :path"),
        (block(path=b"/a#frag"), "missing or invalid :path"),
        (block(authority=b"api.test /x"), "invalid :authority"),
        (block(authority=b"user@api.test"), "invalid :authority"),
        (block(authority=b"api.test/x"), "invalid :authority"),
        (block(authority=b"api.test\r\nx: y"), "invalid :authority"),
        (block(authority=b"api.t\xc3\xa9st"), "invalid :authority"),
        (block((b"host", b"a b"), authority=None), "invalid host header"),
    ],
)
def test_h2_values_invalid_in_http11_are_refused_without_a_head(fields, message):
    head, refusal = h2_request_head(fields, False, 65536)
    assert head is None and (refusal.status, refusal.code, refusal.message) == (400, "bad_request", message)


@pytest.mark.parametrize(
    "fields, message",
    [
        (block((b"x(y", b"v")), "invalid header name"),
        (block((b"x y", b"v")), "invalid header name"),
        (block((b"x\"", b"v")), "invalid header name"),
        (block((b"x/y", b"v")), "invalid header name"),
        (block((b"x\xc3\xa9", b"v")), "invalid header name"),
        (block((b"x", b"a\x01b")), "invalid header value"),
        (block((b"x", b"a\x7fb")), "invalid header value"),
        (block((b"x", b"a\x1bb")), "invalid header value"),
        (block((b"cookie", b"a=1"), (b"cookie", b"b\x0b=2")), "invalid header value"),
    ],
)
def test_h2_header_fields_invalid_in_http11_are_refused(fields, message):
    head, refusal = h2_request_head(fields, False, 65536)
    assert head is not None and (refusal.status, refusal.message) == (400, message)


@pytest.mark.parametrize(
    "fields",
    [
        block(method=b"PROPFIND"),
        block(method=b"get"),
        block(path=b"/a/b;c=d?x=1&y=%20~!$'()*+,@:/?"),
        block(authority=b"[::1]:8443"),
        block(authority=b"api.test:443"),
        block((b"user-agent", b"Mozilla/5.0 (X11; Linux) \xc3\xa9t\xc3\xa9\tx")),
        block((b"x-t0k3n_!#$%&'*+-.^`|~", b"v")),
    ],
)
def test_h2_values_valid_in_http11_pass(fields):
    head, refusal = h2_request_head(fields, False, 65536)
    assert refusal is None and head is not None


def test_h2_options_star_is_a_valid_path():
    head, refusal = h2_request_head(block(method=b"OPTIONS", path=b"*"), False, 65536)
    assert refusal is None and head.target == b"*"


@pytest.mark.parametrize(
    "fields, message",
    [
        (block((b"x", b" padded")), "invalid header value"),
        (block((b"x", b"a\r\nb")), "invalid header value"),
        (block((b"", b"v")), "empty header name"),
        (block((b"X-Upper", b"v")), "invalid header name"),
        (block((b"connection", b"close")), "connection-specific header"),
        (block((b"te", b"gzip")), "invalid te header"),
        (block((b"content-length", b"1"), (b"content-length", b"2")), "conflicting content-length headers"),
        (block((b"host", b"a"), (b"host", b"a")), "duplicate host header"),
        (block((b"host", b"other")), ":authority and host differ"),
        (block((b":method", b"GET")), "duplicate :method"),
        (block((b":path", b"/q")), "duplicate :path"),
        (block((b":authority", b"a")), "duplicate :authority"),
        (block((b":scheme", b"http")), "duplicate :scheme"),
        (block((b"x", b"y"), (b":path", b"/q")), "duplicate :path"),
        (block((b"x", b"y"), (b":extra", b"1")), "unsupported pseudo-header"),
        (block(scheme=None)[:1] + block()[2:], "missing :scheme"),
        (block(authority=None), "missing :authority and host"),
    ],
)
def test_h2_refusals_with_a_head(fields, message):
    fields = [f for f in fields if f[1] is not None]
    head, refusal = h2_request_head(fields, False, 65536)
    assert head is not None and head.version == b"2"
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_request", message)


def test_h2_te_trailers_is_allowed():
    head, refusal = h2_request_head(block((b"te", b"trailers")), False, 65536)
    assert refusal is None
