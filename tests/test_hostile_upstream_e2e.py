"""A real gateway against a real misbehaving upstream (a raw-socket server), and hostile request framing.

Each upstream case answers every request with the same scripted bytes and then closes the way the
case says (FIN or reset). Clients are curl (h1 and h2) and raw TLS sockets.
"""
from __future__ import annotations

import re
import socket
import ssl
import struct
import threading
import time

import pytest

from backends import StreamingBackend
from conftest import curl


class ScriptedUpstream(StreamingBackend):
    """Accepts connections; reads one request head; writes `script`; closes ('fin'), resets ('rst') or holds."""

    def __init__(self, script: bytes, end: str = "fin") -> None:
        self.script = script
        self.end = end
        self.hung_up = threading.Event()  # a write failed: the gateway closed the connection
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            if self.end == "endless-head":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for i in range(1_000_000):  # until the gateway hangs up
                    conn.sendall(b"x-filler-%d: %s\r\n" % (i, b"v" * 100))
                return
            conn.sendall(self.script)
            if self.end == "rst":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if self.end in ("fin", "rst"):
                conn.close()
            else:
                self.hung_up.wait(30)
        except OSError:
            self.hung_up.set()
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self.hung_up.set()
        super().close()


def _gateway(gateway_factory, upstream: ScriptedUpstream):
    return gateway_factory(
        "[gateway]\nstate_dir = ./txgate-state\n\n"
        "[listener:main]\nbind = 127.0.0.1:0\ncertificate = local\n\n"
        f"[api:up]\npath = /\nupstream = {upstream.url()}\ntimeout = 30\n\n"
        "[admin]\nbind = off\n"
    )


@pytest.fixture
def scripted(gateway_factory):
    made = []

    def start(script: bytes, end: str = "fin"):
        up = ScriptedUpstream(script, end)
        made.append(up)
        return _gateway(gateway_factory, up), up

    yield start
    for up in made:
        up.close()


def test_close_delimited_response_is_relayed_completely(scripted):
    body = b"".join(b"line %06d\n" % i for i in range(20000))
    gw, _ = scripted(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n" + body)
    for http in ("--http1.1", "--http2"):
        r = curl("-k", http, "-m", "10", gw.url("/x"))
        assert r.returncode == 0, r.stderr
        assert r.stdout == body


TRUNCATED = {
    "content-length, fin": (b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly part", "fin"),
    "content-length, rst": (b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly part", "rst"),
    "chunked without last chunk": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nonly part\r\n", "fin"),
    "close-delimited, rst": (b"HTTP/1.1 200 OK\r\n\r\nonly part", "rst"),
}


@pytest.mark.parametrize("script, end", list(TRUNCATED.values()), ids=list(TRUNCATED))
@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_truncated_response_fails_the_client_at_once(scripted, script, end, http):
    gw, _ = scripted(script, end)
    started = time.monotonic()
    r = curl("-k", http, "-m", "20", gw.url("/x"))
    elapsed = time.monotonic() - started
    assert r.returncode not in (0, 28), (r.returncode, r.stderr)  # an error, and not the client's timeout
    assert elapsed < 10, elapsed  # the API's timeout is 30 s: the client learned at once
    gw.wait_log(r"api up upstream http://127\.0\.0\.1:\d+ upstream_truncated: ")
    assert gw.output().count("upstream_truncated") == 1


def test_endless_response_head_is_502_at_once(scripted):
    gw, up = scripted(b"", "endless-head")
    r = curl("-k", "-m", "20", "-w", "\n%{http_code}", gw.url("/x"))
    body, _, code = r.stdout.rpartition(b"\n")
    assert code == b"502" and b'"upstream_headers_too_large"' in body
    assert up.hung_up.wait(10)  # the gateway hung up on the upstream


def _tls(port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")


def _read_all(s: ssl.SSLSocket) -> bytes:
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    except (ssl.SSLError, ConnectionError, socket.timeout):
        return out


@pytest.mark.parametrize("framing", [
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    b"Transfer-Encoding: identity, chunked\r\n",
])
def test_http10_transfer_encoding_is_refused_and_nothing_pipelined_is_served(gateway_factory, framing):
    gw = gateway_factory(
        "[gateway]\nstate_dir = ./txgate-state\n\n[listener:main]\nbind = 127.0.0.1:0\ncertificate = local\n\n"
        "[api:echo]\npath = /\nupstream = builtin:echo\n\n[admin]\nbind = off\n"
    )
    s = _tls(gw.port)
    s.sendall(b"POST /first HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n" + framing + b"\r\n"
              b"3\r\nabc\r\n0\r\n\r\n"
              b"GET /smuggled HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
    out = _read_all(s)
    s.close()
    assert out.startswith(b"HTTP/1.1 400 ")
    assert len(re.findall(rb"(?m)^HTTP/1\.1 \d{3} ", out)) == 1 and b"/smuggled" not in out
