"""Plain HTTP sent to a TLS port: a 400 with a one-line hint (as nginx's 497), counted as a protocol_error
handshake; TLS clients are unaffected."""
from __future__ import annotations

import socket

from conftest import curl
from test_metrics_traffic import GW
from txgate.tls.serverconn import PLAIN_HTTP_HINT, looks_like_plain_http



def test_first_bytes_decide():
    assert looks_like_plain_http(b"GET / HTTP/1.1\r\n")
    assert looks_like_plain_http(b"POST /x HTTP/1.0\r\n")
    assert looks_like_plain_http(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert not looks_like_plain_http(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello
    assert not looks_like_plain_http(b"GE")  # too short to tell: OpenSSL decides, as before
    assert not looks_like_plain_http(b"get / HTTP/1.1\r\n")
    assert not looks_like_plain_http(b"")


def test_plain_http_on_a_tls_port_gets_400_with_a_hint(gateway_factory, backend):
    gw = gateway_factory(GW.format(backend=backend.url()))
    r = curl("-sS", "-i", "--max-time", "10", f"http://127.0.0.1:{gw.port}/echo/x")
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"connection: close" in head.lower()
    assert body == PLAIN_HTTP_HINT and body.count(b"\n") == 1 and b"https://" in body
    gw.wait_log(r"TLS handshake with 127\.0\.0\.1 on main failed: PlainHTTPRequest")
    # The connection is closed after the answer; TLS on the same port still works.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    assert got.startswith(b"HTTP/1.1 400 ") and got.endswith(PLAIN_HTTP_HINT)
    ok = curl("-sS", "--cacert", gw.ca, gw.url("/echo/y"))
    assert ok.returncode == 0, ok.stderr
