# -*- test-case-name: tests.test_requests -*-
"""Request-head rules of HTTP/1.1 and HTTP/2: a parsed head in, a `RequestHead` or a refusal out.

Both protocols refuse a request the same way: a `GatewayError` (status, code, message) for the
parser-level rules here, or a `Refusal` handler returned by the dispatcher; the protocol writes
the error response, nobody else.
"""
from __future__ import annotations

from txgate.errors import BadRequest, GatewayError, HeadersTooLarge, TransferCodingNotSupported, VersionNotSupported
from txgate.http.errors import send_gateway_error
from txgate.http.exchange import Dispatcher, Handler, NullHandler, RequestHead, StreamRecord
from txgate.http.headers import H2_CONNECTION_SPECIFIC
from txgate.http.requestid import request_id_of


def _table(allowed) -> bytes:
    """A translate() table: allowed bytes -> 1, the rest -> 0 (``0 in v.translate(t)`` = a bad byte)."""
    ok = set(allowed)
    return bytes(1 if c in ok else 0 for c in range(256))


# What an HTTP/2 request may carry into an HTTP/1.1 request (RFC 9110 5.6.2, 5.5; RFC 9112 3.2;
# RFC 3986 3.2.2, 3.3, 3.4): a value outside these would change the upstream's reading of it.
_DIGITS_ALPHA = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TCHAR = _DIGITS_ALPHA + b"!#$%&'*+-.^_`|~"
_METHOD_OK = _table(_TCHAR)
# Header names: tokens, lower case (RFC 9113 8.2.1).
_NAME_OK = _table(c for c in _TCHAR if not 0x41 <= c <= 0x5A)
# Field values: visible ASCII, obs-text, SP and HTAB; no other control byte.
_VALUE_OK = _table([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
# origin-form: path and query characters (unreserved, pct-encoded, sub-delims, ":", "@", "/", "?").
_PATH_OK = _table(_DIGITS_ALPHA + b"-._~%!$&'()*+,;=:@/?")
# authority: host (reg-name, IP literal) and port; no userinfo.
_AUTHORITY_OK = _table(_DIGITS_ALPHA + b"-._~%!$&'()*+,;=:[]")
_WS = b" \t"
_H1_VERSIONS = (b"1.1", b"1.0")
_PSEUDO = frozenset({b":method", b":path", b":authority", b":scheme"})


class Refusal(NullHandler):
    """The dispatcher's decision to refuse a request: the protocol answers it with ``error``, and
    the rest of the request is ignored. ``api`` names the API that refused it (or None)."""

    __slots__ = ("error",)

    def __init__(self, error: GatewayError, api: str | None = None) -> None:
        super().__init__(api)
        self.error = error


def dispatch_request(dispatcher: Dispatcher, stream: StreamRecord, head: RequestHead) -> Handler:
    """Ask the dispatcher for the request's handler (kept on the stream); answer a `Refusal` at once."""
    if head is not None and not head.request_id:
        head.request_id = request_id_of(head.headers)  # (ensure_request_id, one call less)
    stream.handler = handler = dispatcher.dispatch(stream, head)
    if handler.__class__ is Refusal:
        send_gateway_error(stream, handler.error, detail=getattr(dispatcher, "error_detail", False), api=handler.api)
    return handler


def _malformed(why: str) -> BadRequest:
    return BadRequest(f"malformed HTTP/1.1 request: {why}")


def h1_request_head(
    method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[RequestHead, bool]:
    """The head of an HTTP/1.x request (header names lower-case) and whether the client waits
    for '100 Continue'; raises a `GatewayError` for a request to refuse."""
    if version not in _H1_VERSIONS:
        raise VersionNotSupported(f"HTTP/{version.decode()} is not supported here")
    authority = b""
    content_length = None
    codings = None
    expect_continue = False
    for k, v in headers:
        if k == b"host":
            if authority:
                raise _malformed("more than one Host header")
            authority = v.strip()
        elif k == b"content-length":
            content_length = int(v)
        elif k == b"transfer-encoding":
            codings = v.strip() if codings is None else codings + b", " + v.strip()
        elif k == b"expect" and v.lower() == b"100-continue":
            expect_continue = True
    chunked = codings is not None
    if chunked:
        if version == b"1.0":
            # RFC 9112 6.1: the framing is faulty; the connection closes after the 400.
            raise _malformed("Transfer-Encoding in an HTTP/1.0 request")
        if codings.lower() != b"chunked":
            # Any other coding would reach the upstream undecoded and no longer announced.
            raise TransferCodingNotSupported(
                f"transfer coding '{codings.decode('latin-1')}' is not supported (only chunked)")
    if target[:1] != b"/":  # (a one-byte slice: no argument parsing as in startswith)
        if target.startswith((b"http://", b"https://")):
            rest = target.split(b"://", 1)[1]
            auth, slash, path = rest.partition(b"/")
            authority = auth or authority
            target = b"/" + path
        elif method == b"OPTIONS" and target == b"*":
            pass
        else:
            raise _malformed("unsupported request target")
    if not authority and version == b"1.1":
        raise _malformed("HTTP/1.1 request without a Host header")
    has_body = chunked or bool(content_length)
    head = RequestHead(method, target, authority, headers, None if chunked else content_length, has_body, version)
    return head, expect_continue


def h2_request_head(
    fields, has_body: bool, max_header_bytes: int
) -> tuple[RequestHead | None, GatewayError | None]:
    """The head of an HTTP/2 request from its decoded header block (RFC 9113 8.2, 8.3) and the
    refusal to answer it with, if any; the head is None when the block is too broken for one.

    One pass with C-speed byte operations: h2's own validation is switched off (it loops over
    every byte in Python, and answers a malformed request with a connection-wide GOAWAY)."""
    host = cl = None
    pseudo: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = []
    append = headers.append
    size = 0
    cookies = None
    cookie_at = 0
    bad = None
    regular = False
    values: list[bytes] = []
    names: list[bytes] = []
    for h in fields:
        n, v = h
        size += len(n) + len(v) + 32
        if v:
            if v[0] in _WS or v[-1] in _WS:
                bad = "invalid header value"
            values.append(v)
        if not n:
            bad = "empty header name"
        elif n[0] == 58:  # b":"
            if regular:
                bad = "pseudo-header after regular header"
            if n in _PSEUDO:
                if n in pseudo:
                    bad = "duplicate " + n.decode()
                pseudo[n] = v
            else:
                bad = "unsupported pseudo-header"
        else:
            regular = True
            names.append(n)
            if n == b"cookie":
                if cookies is None:
                    cookies = [v]
                    cookie_at = len(headers)
                    append(h)
                else:
                    cookies.append(v)
                continue
            elif n in H2_CONNECTION_SPECIFIC:
                bad = "connection-specific header"
            elif n == b"content-length":
                if cl is not None and cl != v:
                    bad = "conflicting content-length headers"
                cl = v
            elif n == b"host":
                if host is not None:
                    bad = "duplicate host header"
                host = v
            elif n == b"te" and v.lower() != b"trailers":
                bad = "invalid te header"
            append(h)
    # One C-speed pass over all names and one over all values (the separators are valid bytes).
    if names and 0 in b"a".join(names).translate(_NAME_OK):
        bad = "invalid header name"
    if values and 0 in b" ".join(values).translate(_VALUE_OK):
        bad = "invalid header value"
    if cookies is not None and len(cookies) > 1:
        # Crumbs joined in place, not moved to the end (h2's normalization is off too).
        headers[cookie_at] = (b"cookie", b"; ".join(cookies))
    get = pseudo.get
    method, path, authority, scheme = get(b":method"), get(b":path"), get(b":authority"), get(b":scheme")
    if size > max_header_bytes:
        return None, HeadersTooLarge("request header list too large")
    if method is None:
        return None, BadRequest("missing :method")
    if method == b"CONNECT":
        return None, BadRequest("CONNECT is not supported")
    if not method or 0 in method.translate(_METHOD_OK):
        return None, BadRequest("invalid :method")
    if scheme is None:
        bad = bad or "missing :scheme"
    if (not path or not (path[0] == 47 or (path == b"*" and method == b"OPTIONS"))
            or 0 in path.translate(_PATH_OK)):
        return None, BadRequest("missing or invalid :path")
    if authority is None:
        authority = host
        if authority is None:
            bad = bad or "missing :authority and host"
            authority = b""
        elif 0 in authority.translate(_AUTHORITY_OK):
            return None, BadRequest("invalid host header")
    elif 0 in authority.translate(_AUTHORITY_OK):
        return None, BadRequest("invalid :authority")
    elif host is not None and host != authority:
        bad = bad or ":authority and host differ"
    # h2 has already checked that content-length is all digits.
    content_length = int(cl) if cl is not None else None
    head = RequestHead(method, path, authority, headers, content_length, has_body, b"2")
    return head, (BadRequest(bad) if bad is not None else None)
