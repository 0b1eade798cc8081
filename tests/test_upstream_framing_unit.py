"""Upstream responses that end early, end by closing, or never end their head (txgate.testing, no sockets).

The downstream must learn at once what the upstream did: a complete close-delimited response is
relayed whole; a cut one is never presented as complete (HTTP/1.1: the connection is cut; HTTP/2: the
stream is reset), with one `upstream_truncated` log line; an endless response head is a 502 at once.
"""
from __future__ import annotations

import pytest

from memory_fixtures import make, pki  # noqa: F401 (fixtures)
from txgate.testing import CloseMidBody, Hang, Respond

UP = "http://a.internal:8080"
LOG = r"api a upstream http://a\.internal:8080 "


def _held(gw, up, *, alpn=("http/1.1",), path="/a/x"):
    """A request whose upstream holds it: (client, response, upstream server protocol)."""
    up.queue(Hang())
    client = gw.client(alpn=alpn)
    response = client.request("GET", path)
    gw.flush()
    return client, response, up.held[-1][0]


def _cut(server, data: bytes, how: str) -> None:
    """Send data, then end the upstream connection: 'fin' (clean close) or 'rst' (reset)."""
    server.transport.write(data)
    if how == "fin":
        server.transport.loseConnection()
    else:
        server.transport.abortConnection()


def _answer(make, data: bytes, how: str, *, alpn=("http/1.1",), api_lines: str = ""):
    """A gateway whose upstream answers one request with data, then ends as `how`: (gw, client, response)."""
    gw = make(api_lines)
    client, response, server = _held(gw, gw.upstream(UP), alpn=alpn)
    _cut(server, data, how)
    gw.flush()
    return gw, client, response


# -- close-delimited responses (RFC 9112 6.3 rule 8) ---------------------------------------------
@pytest.mark.parametrize("alpn", [("http/1.1",), ("h2",)])
def test_close_delimited_response_is_relayed_whole_on_both_protocols(make, alpn):
    gw = make()
    up = gw.upstream(UP)
    client, response, server = _held(gw, up, alpn=alpn)
    body = b"x" * 200_000
    _cut(server, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n" + body, "fin")
    gw.flush()
    assert response.status == 200 and response.complete and not response.reset
    assert response.body == body
    assert gw.logs.matching("upstream_truncated") == []


def test_close_delimited_response_over_tls_ends_with_close_notify(make, pki):
    gw = make(f"upstream_ca = {pki.ca_path}\n", upstream="https://a.internal:8443")
    up = gw.upstream("https://a.internal:8443", certificate=pki.issue("a.internal"))
    up.queue(Respond(200, b"all of it over tls", close_delimited=True))
    response = gw.get("/a/x")
    assert response.status == 200 and response.body == b"all of it over tls" and response.complete


def test_close_delimited_response_over_tls_without_close_notify_is_truncated(make, pki):
    # RFC 9112 9.8: a TLS connection closed without close_notify is an incomplete close; a body
    # delimited by the close cannot be known to be complete.
    gw = make(f"upstream_ca = {pki.ca_path}\n", upstream="https://a.internal:8443")
    up = gw.upstream("https://a.internal:8443", certificate=pki.issue("a.internal"))
    client, response, server = _held(gw, up)
    server.transport.write(b"HTTP/1.1 200 OK\r\n\r\npart")
    gw.flush()
    server.transport.transport.loseConnection()  # TCP FIN under the TLS layer: no close_notify
    gw.flush()
    assert response.status == 200 and response.reset and not response.complete
    assert client.closed
    assert len(gw.logs.matching(r"https://a\.internal:8443 upstream_truncated")) == 1


def test_close_delimited_response_ended_by_a_reset_is_truncated(make):
    gw, client, response = _answer(make, b"HTTP/1.1 200 OK\r\n\r\npart", "rst")
    assert response.reset and not response.complete and client.closed
    assert len(gw.logs.matching(LOG + "upstream_truncated")) == 1


# -- truncated responses -------------------------------------------------------------------------
TRUNCATED = {
    "content-length, fin": (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this", "fin"),
    "content-length, rst": (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this", "rst"),
    "chunked without last chunk, fin": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n", "fin"),
    "chunked mid-chunk, rst": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabcd", "rst"),
    "chunked without final CRLF, fin": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n", "fin"),
    "empty body promised, fin": (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", "fin"),
}


@pytest.mark.parametrize("data, how", list(TRUNCATED.values()), ids=list(TRUNCATED))
def test_truncated_response_closes_the_h1_connection_at_once_with_one_log_line(make, data, how):
    # No clock movement below: the client learns at once, not after the API's 30 s `timeout`.
    gw, client, response = _answer(make, data, how, api_lines="timeout = 30\n")
    # (A head with no body byte after it may not have left yet: then the client sees only the cut.)
    assert response.status in (200, None) and not response.complete and response.reset
    assert client.closed
    lines = gw.logs.matching(r"api a upstream ")
    assert len(lines) == 1 and "upstream_truncated" in lines[0], lines


@pytest.mark.parametrize("data, how", list(TRUNCATED.values()), ids=list(TRUNCATED))
def test_truncated_response_resets_only_its_h2_stream(make, data, how):
    gw, client, response = _answer(make, data, how, alpn=("h2",))
    assert response.reset and not response.complete
    assert not client.closed
    assert client.get("/a/after").status == 200
    assert len(gw.logs.matching(LOG + "upstream_truncated")) == 1


def test_cut_before_the_head_is_still_upstream_unavailable(make):
    gw, client, response = _answer(make, b"HTTP/1.1 200 OK\r\ncontent-le", "fin")
    assert response.status == 502 and response.code == "upstream_unavailable"


def test_close_mid_body_double_logs_upstream_truncated(make):
    gw = make()
    gw.upstream(UP).queue(CloseMidBody(200, b"par", 10))
    response = gw.get("/a/1")
    assert response.body == b"par" and response.reset
    assert gw.logs.matching(LOG + r"upstream_truncated: http://a\.internal:8080: response cut short after 3 of 10 body bytes")


def test_truncated_chunked_response_says_what_was_missing(make):
    gw, client, response = _answer(make, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n", "fin")
    assert gw.logs.matching(LOG + r"upstream_truncated: .*response cut short after 4 body bytes \(no last chunk\)")


# -- bytes the upstream was not asked for ---------------------------------------------------------
def test_bytes_after_a_complete_response_are_never_served_to_the_next_request(make):
    # A second response appended to the first (an upstream that answered twice, or a body longer
    # than its Content-Length): the connection is desynchronised and must not be reused.
    gw = make("max_connections = 1\n")
    up = gw.upstream(UP)
    first_client, first, server = _held(gw, up)
    second = gw.client().request("GET", "/a/second")  # waits for the only connection
    gw.flush()
    server.transport.write(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsmuggle"
    )
    gw.flush()
    assert first.status == 200 and first.body == b"ok" and first.complete
    assert second.status == 200 and second.body == b"ok" and second.complete
    assert [r.path for r in up.requests] == ["/a/x", "/a/second"]
    assert up.requests[1].connection == 1  # the desynchronised connection was not reused


# -- the response head is bounded ------------------------------------------------------------------
def _endless_headers(n: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-filler-%d: %s\r\n" % (i, b"v" * 50) for i in range(n))


HEADS = {
    "many header lines": _endless_headers(2000),
    "one endless header line": b"HTTP/1.1 200 OK\r\nx-long: " + b"v" * 100_000,
    "endless status line": b"HTTP/1.1 200 " + b"O" * 100_000,
    "endless interim responses": b"HTTP/1.1 100 Continue\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" * 2000,
}


@pytest.mark.parametrize("head", list(HEADS.values()), ids=list(HEADS))
@pytest.mark.parametrize("alpn", [("http/1.1",), ("h2",)])
def test_response_head_over_the_limit_is_502_at_once(make, head, alpn):
    gw = make()
    up = gw.upstream(UP)
    client, response, server = _held(gw, up, alpn=alpn)
    for i in range(0, len(head), 16384):  # as a socket would deliver it
        server.transport.write(head[i:i + 16384])
        gw.flush()
        if response.status is not None:
            break
    assert response.status == 502 and response.code == "upstream_headers_too_large"
    assert gw.logs.error_detail(response.request_id) == "http://a.internal:8080: response head exceeds 65536 bytes"
    assert up.connections[0].closed
    assert len(gw.logs.matching(LOG + "upstream_headers_too_large")) == 1


def test_max_response_header_bytes_is_per_api(make):
    gw = make("max_response_header_bytes = 2048\n")
    up = gw.upstream(UP)
    up.queue(Respond(200, b"small", headers=(("x-a", "v" * 1500),)))
    assert gw.get("/a/1").status == 200
    up.queue(Respond(200, b"big", headers=(("x-a", "v" * 2100),)))
    response = gw.get("/a/2")
    assert response.status == 502 and gw.logs.error_detail(response.request_id).endswith("response head exceeds 2048 bytes")
