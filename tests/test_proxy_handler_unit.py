"""The proxy handler in memory (txgate.testing): error mapping, upstream TLS failures, headers, streaming."""
from __future__ import annotations

import pytest

from memory_fixtures import make, other_pki, pki  # noqa: F401 (fixtures)
from txgate.testing import Hang, Respond
from txgate.testing.wire import HIGH_WATER


# -- timeouts and error mapping ------------------------------------------------------------------
def test_no_response_within_timeout_is_504_with_one_log_line(make):
    gw = make("timeout = 5\n")
    gw.upstream("http://a.internal:8080").queue(Hang())
    response = gw.client().request("GET", "/a/slow")
    gw.advance(4.5)
    assert response.status is None
    gw.advance(1)
    assert response.status == 504 and response.code == "upstream_timeout"
    assert gw.logs.error_detail(response.request_id) == "http://a.internal:8080: no response within 5s"
    assert len(gw.logs.matching(r"api a upstream http://a\.internal:8080 upstream_timeout: .*no response within 5s")) == 1


def test_timeout_on_h2_fails_only_that_stream(make):
    gw = make("timeout = 2\n")
    up = gw.upstream("http://a.internal:8080").queue(Hang())
    client = gw.client(alpn=("h2",))
    slow = client.request("GET", "/a/slow")
    gw.flush()
    fast = client.get("/a/fast")
    assert fast.status == 200
    gw.advance(2.5)
    assert slow.status == 504 and slow.code == "upstream_timeout"
    assert not client.closed and len(up.requests) == 2


def test_timeout_after_the_response_started_aborts_the_downstream(make):
    gw = make("timeout = 2\n")
    up = gw.upstream("http://a.internal:8080")
    up.handler = lambda request: Hang()
    response = gw.client().request("GET", "/a/x")
    gw.flush()
    held = up.held[0][0]
    held.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nstart")
    gw.flush()
    assert response.status == 200 and response.body == b"start"
    gw.advance(2.5)
    assert response.reset and not response.complete


def test_malformed_upstream_response_is_502_upstream_protocol_error(make):
    gw = make()
    up = gw.upstream("http://a.internal:8080").queue(Hang())
    response = gw.client().request("GET", "/a/x")
    gw.flush()
    up.held[0][0].transport.write(b"NOT HTTP AT ALL\r\n\r\n")
    gw.flush()
    assert response.status == 502 and response.code == "upstream_protocol_error"
    assert "malformed response" in gw.logs.error_detail(response.request_id)


def test_close_delimited_response_body_ends_with_the_connection(make):
    gw = make()
    gw.upstream("http://a.internal:8080").queue(Respond(200, b"all of it", close_delimited=True))
    response = gw.get("/a/x")
    assert response.status == 200 and response.body == b"all of it" and not response.reset


def test_request_body_over_max_body_bytes_is_413(make):
    gw = make("max_body_bytes = 10\n")
    up = gw.upstream("http://a.internal:8080")
    response = gw.client().fetch("POST", "/a/x", body=b"x" * 11)
    assert response.status == 413 and response.code == "request_too_large"
    assert all(len(r.body) <= 10 for r in up.requests)


# -- upstream TLS ------------------------------------------------------------------------------
def test_upstream_certificate_from_an_unknown_ca_is_502_upstream_tls_error(make, pki, other_pki):
    gw = make(f"upstream_ca = {pki.ca_path}\n", upstream="https://a.internal:8443")
    up = gw.upstream("https://a.internal:8443", certificate=other_pki.issue("a.internal"))
    response = gw.get("/a/x")
    assert response.status == 502 and response.code == "upstream_tls_error"
    assert gw.logs.error_detail(response.request_id).startswith("https://a.internal:8443: ") and "unknown CA" in gw.logs.error_detail(response.request_id)
    assert up.requests == []
    assert gw.logs.matching(r"api a upstream https://a\.internal:8443 upstream_tls_error: .*unknown CA")


def test_upstream_certificate_for_another_name_is_a_hostname_mismatch(make, pki):
    gw = make(f"upstream_ca = {pki.ca_path}\n", upstream="https://a.internal:8443")
    gw.upstream("https://a.internal:8443", certificate=pki.issue("b.internal"))
    response = gw.get("/a/x")
    assert response.status == 502 and response.code == "upstream_tls_error"
    assert "hostname mismatch: certificate is for b.internal; expected a.internal" in gw.logs.error_detail(response.request_id)


def test_tls_failure_is_not_failed_over_to_the_next_target(make, pki, other_pki):
    gw = make(f"upstream_ca = {pki.ca_path}\n", upstream="https://a.internal:8443 https://b.internal:8443")
    gw.upstream("https://a.internal:8443", certificate=other_pki.issue("a.internal"))
    b = gw.upstream("https://b.internal:8443", certificate=pki.issue("b.internal"))
    response = gw.get("/a/x")
    assert response.status == 502 and response.code == "upstream_tls_error"
    assert b.connections == []


def test_verified_tls_upstream_receives_the_request(make, pki):
    gw = make(f"upstream_ca = {pki.ca_path}\n", upstream="https://a.internal:8443")
    up = gw.upstream("https://a.internal:8443", certificate=pki.issue("a.internal"))
    assert gw.get("/a/x").status == 200
    assert [r.path for r in up.requests] == ["/a/x"]
    assert up.connections[0].tls_version == "TLSv1.3"


def test_upstream_refusing_our_missing_client_certificate_after_the_handshake_is_a_tls_failure(make, pki):
    # TLS 1.3: the server checks the client certificate after the client finished its side of the
    # handshake, so the refusal arrives where the response was expected.
    gw = make(f"upstream_ca = {pki.ca_path}\n", upstream="https://a.internal:8443")
    gw.upstream("https://a.internal:8443", certificate=pki.issue("a.internal"), require_client_certificate=True)
    response = gw.get("/a/x")
    assert response.status == 502 and response.code == "upstream_tls_error"
    assert gw.logs.error_detail(response.request_id).startswith("https://a.internal:8443: TLS failure: server requires a client certificate")


def test_upstream_refusing_our_missing_client_certificate_in_the_tls12_handshake(make, pki):
    gw = make(f"upstream_ca = {pki.ca_path}\n", upstream="https://a.internal:8443")
    gw.upstream("https://a.internal:8443", certificate=pki.issue("a.internal"), require_client_certificate=True,
                tls_max="1.2")
    response = gw.get("/a/x")
    assert response.status == 502 and response.code == "upstream_tls_error"
    assert gw.logs.error_detail(response.request_id).startswith("https://a.internal:8443: TLS handshake failed: ")


# -- headers ------------------------------------------------------------------------------------
def test_upstream_sees_rewritten_request_headers(make):
    gw = make()
    up = gw.upstream("http://a.internal:8080")
    client = gw.client()
    client.fetch("GET", "/a/x?q=1", headers=[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=evil"),
                                              ("connection", "x-secret"), ("x-secret", "1"), ("x-kept", "yes")])
    seen = up.requests[0]
    assert seen.path == "/a/x?q=1"
    assert seen.header("host") == "a.internal:8080"
    assert seen.header_values("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header("forwarded") == "for=127.0.0.1;proto=https;host=localhost"
    assert seen.header("x-secret") is None and seen.header("connection") is None
    assert seen.header("x-kept") == "yes" and seen.header("via") == "1.1 txgate"


def test_base_path_and_preserve_host(make):
    gw = make("preserve_host = yes\n", upstream="http://a.internal:8080/base")
    up = gw.upstream("http://a.internal:8080")
    gw.get("/a/x", server_name="localhost")
    assert up.requests[0].path == "/base/a/x"
    assert up.requests[0].header("host") == "localhost"


def test_hop_by_hop_response_headers_do_not_reach_the_client(make):
    gw = make()
    gw.upstream("http://a.internal:8080").queue(
        Respond(200, b"x", (("connection", "x-internal"), ("x-internal", "1"), ("keep-alive", "timeout=5"), ("x-app", "2"))))
    response = gw.get("/a/x")
    assert response.header("x-internal") is None and response.header("keep-alive") is None
    assert response.header("x-app") == "2" and response.header("via") == "1.1 txgate"


# -- streaming and backpressure ----------------------------------------------------------------------
def test_request_body_is_streamed_before_it_ends(make):
    gw = make()
    up = gw.upstream("http://a.internal:8080")
    client = gw.client()
    response = client.request("POST", "/a/upload", body_follows=True)
    client.send_body(response, b"first ")
    gw.flush()
    assert up.requests[0].body == b"first " and not up.requests[0].complete
    client.send_body(response, b"second")
    client.end_body(response)
    gw.flush()
    assert up.requests[0].body == b"first second" and up.requests[0].complete
    assert response.status == 200


def test_slow_client_pushes_back_on_the_upstream(make):
    gw = make()
    up = gw.upstream("http://a.internal:8080").queue(Respond(200, b"x" * (8 * HIGH_WATER)))
    client = gw.client()
    client.pause_reading()
    response = client.fetch("GET", "/a/big")
    assert len(response.body) < 8 * HIGH_WATER
    assert up.connections[0].write_paused
    client.resume_reading()
    assert response.complete and len(response.body) == 8 * HIGH_WATER
    assert not up.connections[0].write_paused


def test_slow_h2_client_pushes_back_on_the_upstream(make):
    gw = make()
    up = gw.upstream("http://a.internal:8080").queue(Respond(200, b"y" * (8 * HIGH_WATER)))
    client = gw.client(alpn=("h2",))
    client.pause_reading()
    response = client.fetch("GET", "/a/big")
    assert not response.complete and up.connections[0].write_paused
    client.resume_reading()
    assert response.complete and response.body == b"y" * (8 * HIGH_WATER)


def test_client_gone_mid_response_closes_the_upstream_connection(make):
    gw = make()
    up = gw.upstream("http://a.internal:8080").queue(Hang())
    client = gw.client()
    client.request("GET", "/a/x")
    gw.flush()
    client.close()
    assert up.connections[0].closed
