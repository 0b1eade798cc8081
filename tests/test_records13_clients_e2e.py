"""TLS 1.3 records after the hand-over (txgate.tls.records13) with real clients, suite by suite:
curl's HTTP/1.1 and HTTP/2 bodies of several MiB both ways arrive byte for byte, h2load's h2 load,
`openssl s_client`'s KeyUpdate (requested) and its padded records (``-record_padding``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ADMIN_EPHEMERAL, curl
from test_records13_e2e import _read_until

SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
BLOB = os.urandom(3 * 1024 * 1024 + 12345)  # not a multiple of a record's 2^14 bytes


class _Mirror(BaseHTTPRequestHandler):
    """POST /mirror: the request body back as it came; GET /blob: BLOB."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self._send(self.rfile.read(int(self.headers["Content-Length"])))

    def do_GET(self) -> None:
        self._send(BLOB)


@pytest.fixture
def mirrored(gateway_factory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gw = gateway_factory(
        ADMIN_EPHEMERAL + "[gateway]\naccess_log = -\nshutdown_timeout = 1\n\n"
        "[listener:main]\nbind = 127.0.0.1:0\n\n"
        f"[api:mirror]\npath = /\nupstream = http://127.0.0.1:{server.server_address[1]}\ntimeout = 60\n")
    yield gw
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
@pytest.mark.parametrize("suite", SUITES)
def test_each_suite_carries_bodies_of_several_mib_both_ways_byte_for_byte(mirrored, tmp_path, suite, http):
    gw = mirrored
    up = tmp_path / "up.bin"
    up.write_bytes(BLOB[::-1])
    tls = ("--cacert", gw.ca, "--tlsv1.3", "--tls13-ciphers", suite, http, "-v")
    version = "2" if http == "--http2" else "1.1"
    r = curl(*tls, "--data-binary", f"@{up}", "-H", "Content-Type: application/octet-stream",
             "-w", "%{http_code} %{http_version}", "-o", str(tmp_path / "back.bin"), gw.url("/mirror"), timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == f"200 {version}".encode(), r.stdout
    assert f"TLSv1.3 / {suite}".encode() in r.stderr, r.stderr[-2000:]
    assert (tmp_path / "back.bin").read_bytes() == BLOB[::-1]
    r = curl(*tls, "-w", "%{http_code}", "-o", str(tmp_path / "down.bin"), gw.url("/blob"), timeout=60)
    assert r.returncode == 0 and r.stdout == b"200", r.stderr[-2000:]
    assert (tmp_path / "down.bin").read_bytes() == BLOB
    assert "Unhandled" not in gw.output()


@pytest.mark.parametrize("suite", SUITES)
def test_h2load_with_each_suite(mirrored, suite):
    if shutil.which("h2load") is None:
        pytest.fail("h2load is not installed (tests/run.sh installs nghttp2-client)")
    gw = mirrored
    r = subprocess.run(["h2load", "-n", "200", "-c", "4", "-m", "4", "--tls13-ciphers", suite,
                        "--connect-to", f"127.0.0.1:{gw.port}", f"https://localhost:{gw.port}/blob"],
                       capture_output=True, timeout=120)
    assert f"Cipher: {suite}".encode() in r.stdout, r.stdout[-2000:]
    assert b"Application protocol: h2" in r.stdout, r.stdout[-2000:]
    assert b"200 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout[-2000:]
    assert b"status codes: 200 2xx" in r.stdout, r.stdout[-2000:]


@pytest.mark.parametrize("suite", SUITES)
def test_key_update_requested_by_s_client_with_each_suite(mirrored, suite):
    """`K` (update_requested) twice: the gateway reads under each new key and answers each with its
    own KeyUpdate before the next response; the bodies after them arrive whole."""
    gw = mirrored
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-servername", "localhost", "-CAfile", gw.ca,
         "-alpn", "http/1.1", "-tls1_3", "-ciphersuites", suite, "-msg"],  # (-ign_eof turns K off)
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    body = b"b" * 40_000  # more than two records each way

    def post(tag: bytes) -> bytes:
        proc.stdin.write(b"POST /mirror HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s-%s\n"
                         % (len(body) + len(tag) + 2, body, tag))
        proc.stdin.flush()
        return _read_until(proc, b"-" + tag + b"\n")

    try:
        out = _read_until(proc, b"Verify return code: 0")
        assert f"Cipher is {suite}".encode() in out, out[-2000:]
        out = post(b"first")
        for n in (1, 2):
            proc.stdin.write(b"K\n")
            proc.stdin.flush()
            out = _read_until(proc, b"KEYUPDATE")
            time.sleep(0.3)  # the update crosses before the next request (s_client reads stdin in chunks)
            out += post(b"after%d" % n)
            assert b"<<< TLS 1.3, Handshake [length 0005], KeyUpdate" in out, out[-3000:]
            assert out.count(b"HTTP/1.1 200 OK") == 1
    finally:
        proc.kill()
        proc.wait()
    assert "Unhandled" not in gw.output()


@pytest.mark.parametrize("block", ["512", "16384"])
def test_padded_records_from_s_client_are_read(mirrored, block):
    """s_client pads its records' TLSInnerPlaintext to a multiple of ``block`` bytes (16384: every
    record is 2^14 + 16 bytes long, seen with -msg; section 5.4 allows 2^14 + 1); a request with a
    body of several records is answered whole."""
    gw = mirrored
    body = bytes(range(256)) * 200  # 51200 bytes
    request = (b"POST /mirror HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
               % len(body)) + body
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-servername", "localhost", "-CAfile", gw.ca,
         "-alpn", "http/1.1", "-tls1_3", "-ign_eof", "-quiet", "-record_padding", block],
        input=request, capture_output=True, timeout=30)
    assert r.stdout.startswith(b"HTTP/1.1 200 OK"), (r.stdout[:500], r.stderr[-2000:])
    assert r.stdout.endswith(b"\r\n\r\n" + body), r.stdout[-500:]
    assert "Unhandled" not in gw.output()
