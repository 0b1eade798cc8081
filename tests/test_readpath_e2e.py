"""The read path of txgate's transports (one frame per read, records13 straight from the TCP read),
over real sockets: bodies byte-exact both ways at record and write-loop sizes (TLS 1.2 on OpenSSL,
TLS 1.3 handed over), a backend that stops reading stops the client's upload (no unbounded buffer),
resets mid-transfer, hostile first bytes on the TLS port, a KeyUpdate then a large response, and an
upstream over TLS."""
from __future__ import annotations

import hashlib
import random
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

from backends import StreamingBackend, rss_kib
from conftest import ADMIN_EPHEMERAL, curl, poll
from test_streaming_e2e import stalled

MiB = 1 << 20


def pattern(n: int) -> bytes:
    """``n`` deterministic, incompressible-looking bytes."""
    return random.Random(n).randbytes(n)


class ByteBackend(StreamingBackend):
    """GET /bytes/N: `pattern(N)` with a content-length; GET /chunked/N: the same, chunked in uneven
    pieces; POST /sha: the body's SHA-256 in hex; POST /stall: reads the head, then nothing (``stalled``
    is set) until the connection ends."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.tls = None
        if tls is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        super().__init__()

    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        super()._serve(conn)

    def _answer(self, conn: socket.socket, f, target: str, headers: dict) -> bool:
        if target.startswith("/bytes/"):
            body = pattern(int(target.split("/")[2]))
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
            conn.sendall(body)
        elif target.startswith("/chunked/"):
            body = pattern(int(target.split("/")[2]))
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            rng, at = random.Random(7), 0
            while at < len(body):
                piece = body[at:at + rng.choice((1, 100, 16383, 16384, 16385, 70000, 300000))]
                at += len(piece)
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.sendall(b"0\r\n\r\n")
        elif target.startswith("/sha"):
            digest = hashlib.sha256()
            left = int(headers.get("content-length", "0"))
            while left:
                got = f.read(min(left, 65536))
                if not got:
                    return False
                digest.update(got)
                left -= len(got)
            out = digest.hexdigest().encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out))
        elif target.startswith("/stall"):
            self.stalled.set()
            self.release.wait(60)
            return False
        else:
            return super()._answer(conn, f, target, headers)
        return True

    def close(self) -> None:
        self.release.set()
        super().close()


def front(gateway_factory, be, extra: str = ""):
    """A gateway with one API, everything to ``be``."""
    return gateway_factory(ADMIN_EPHEMERAL + "[listener:main]\nbind = 127.0.0.1:0\n\n"
                           f"[api:b]\npath = /\nupstream = {be.url()}\ntimeout = 60\n{extra}")


@pytest.fixture
def bytes_gw(gateway_factory):
    be = ByteBackend()
    yield front(gateway_factory, be), be
    be.close()


SIZES = [16 * 1024 + 1, 1 * MiB + 7, 5 * MiB + 3]


def test_large_bodies_arrive_byte_exact_from_and_to_a_tls_upstream(gateway_factory, certs, tmp_path):
    """The upstream connection reads through the same one-frame read, under Twisted's TLS."""
    be = ByteBackend(tls=certs.leaf("readpath-upstream", ["127.0.0.1"]))
    try:
        gw = front(gateway_factory, be, f"upstream_ca = {certs.root_pem}\n")
        bodies_arrive_byte_exact(gw, tmp_path, [])
    finally:
        be.close()


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_large_bodies_arrive_byte_exact_both_ways(bytes_gw, tmp_path, tls, http):
    """Responses with a content-length and chunked from the upstream, and uploads, at sizes past a
    record and past the write loop's first MiB, over TLS 1.3 (handed over) and TLS 1.2 (OpenSSL)."""
    tls_args = ["--tlsv1.3"] if tls == "1.3" else ["--tlsv1.2", "--tls-max", "1.2"]
    bodies_arrive_byte_exact(bytes_gw[0], tmp_path, [http, *tls_args])


def bodies_arrive_byte_exact(gw, tmp_path, args: list[str]) -> None:
    """Each of `SIZES` down (with a content-length and chunked) and up, compared by SHA-256."""
    for n in SIZES:
        want = hashlib.sha256(pattern(n)).hexdigest()
        for kind in ("bytes", "chunked"):
            out = tmp_path / f"{kind}-{n}"
            r = curl("-sS", *args, "--cacert", gw.ca, "-o", str(out), gw.url(f"/{kind}/{n}"), timeout=60)
            assert r.returncode == 0, r.stderr
            got = out.read_bytes()
            assert len(got) == n and hashlib.sha256(got).hexdigest() == want, (kind, n, len(got))
        src = tmp_path / f"up-{n}"
        src.write_bytes(pattern(n))
        r = curl("-sS", *args, "--cacert", gw.ca, "--data-binary", f"@{src}",
                 "-H", "content-type: application/octet-stream", gw.url("/sha"), timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode() == want, n


def _client(port: int, version: ssl.TLSVersion, rcvbuf: int | None = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return ctx.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_a_backend_that_stops_reading_stops_the_clients_upload(bytes_gw, version):
    """The gateway pauses its reads from the client when the upstream takes no more: the client's
    sends stall after a bounded amount, and the gateway's memory stays bounded."""
    gw, be = bytes_gw
    base = rss_kib(gw.proc.pid)
    s = _client(gw.port, version)
    sent = [0]
    stop = threading.Event()

    def upload():
        block = bytes(256 * 1024)
        try:
            s.settimeout(60)
            s.sendall(b"POST /stall HTTP/1.1\r\nHost: localhost\r\ncontent-length: %d\r\n\r\n" % (1 << 30))
            while not stop.is_set():
                s.sendall(block)
                sent[0] += len(block)
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    try:
        assert be.stalled.wait(10)
        poll(stalled(lambda: sent[0]), timeout=30, what="the client's sends to stall")
        assert sent[0] < 64 * MiB, f"the gateway took {sent[0] >> 20} MiB for a backend that reads nothing"
        assert rss_kib(gw.proc.pid) - base < 64 * 1024
    finally:
        stop.set()
        be.release.set()
        s.close()
        t.join(10)
    r = curl("-sS", "--cacert", gw.ca, gw.url("/bytes/10"))
    assert r.returncode == 0 and r.stdout == pattern(10)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_a_client_reset_mid_transfer_ends_only_its_connection(bytes_gw, version, direction):
    gw, _ = bytes_gw
    s = _client(gw.port, version, rcvbuf=32 * 1024)
    if direction == "download":
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % (20 * MiB))
        assert s.recv(65536)
    else:
        s.sendall(b"POST /sha HTTP/1.1\r\nHost: localhost\r\ncontent-length: %d\r\n\r\n" % (20 * MiB))
        s.sendall(bytes(3 * MiB))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # (no close_notify: a reset)
    for _ in range(3):
        r = curl("-sS", "--cacert", gw.ca, gw.url(f"/bytes/{MiB}"), timeout=20)
        assert r.returncode == 0 and r.stdout == pattern(MiB), r.stderr
    assert gw.proc.poll() is None
    assert "Unhandled" not in gw.output() and "Traceback" not in gw.output()


def _first_bytes_answer(port: int, first: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(first)
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        return got


@pytest.mark.parametrize("first", [
    b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + bytes(37),  # an SSLv2-style ClientHello
    b"\x00" * 64,
    b"\xff" * 64,
    b"\x16\x03\x01\x00\x05hello" + b"\xee" * 40,  # a handshake record with garbage in it
    b"get / HTTP/1.1\r\n\r\n",
    b"\x17\x03\x03\x00\x10" + bytes(16),  # application data before any handshake
])
def test_hostile_first_bytes_get_a_closed_connection_not_the_plain_http_hint(bytes_gw, first):
    gw, _ = bytes_gw
    got = _first_bytes_answer(gw.port, first)
    assert b"HTTP/1.1 400" not in got
    assert got == b"" or got[:1] == b"\x15", got[:40]  # nothing, or a TLS alert
    assert _first_bytes_answer(gw.port, b"PUT /x HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    r = curl("-sS", "--cacert", gw.ca, gw.url("/bytes/10"))
    assert r.returncode == 0 and r.stdout == pattern(10), r.stderr
    assert gw.proc.poll() is None and "Traceback" not in gw.output()


def test_key_update_then_a_large_response(bytes_gw):
    """s_client's `K` (KeyUpdate, update requested) after a request, then a response of several MiB
    under the new keys arrives whole (records13 reads the KeyUpdate straight from the TCP read). (Not
    with -ign_eof or -quiet: they turn s_client's command letters off, `K` would go as data.)"""
    from test_records13_e2e import _read_until

    gw, _ = bytes_gw
    n = 3 * MiB + 5
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-servername", "localhost",
         "-CAfile", gw.ca, "-alpn", "http/1.1", "-tls1_3", "-crlf"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = _read_until(proc, b"Verify return code: 0")
        proc.stdin.write(b"GET /bytes/11 HTTP/1.1\nHost: localhost\n\n")
        proc.stdin.flush()
        out += _read_until(proc, pattern(11))
        proc.stdin.write(b"K\n")
        proc.stdin.flush()
        out += _read_until(proc, b"KEYUPDATE")
        time.sleep(0.3)  # (s_client reads stdin in chunks: the update crosses first)
        proc.stdin.write(b"GET /bytes/%d HTTP/1.1\nHost: localhost\n\n" % n)
        proc.stdin.flush()
        out += _read_until(proc, pattern(n)[-64:], timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert out.count(b"HTTP/1.1 200") == 2
    assert pattern(n) in out


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_a_client_that_stops_reading_stops_the_upstreams_download(gateway_factory, version):
    """The other way: a client that reads nothing pauses the gateway's reads from the upstream
    (TLS 1.2: OpenSSL's write loop of many records; TLS 1.3: records13's), memory bounded, and the
    body still arrives whole once the client reads."""
    be = StreamingBackend()
    gw = front(gateway_factory, be)
    total = 256 * MiB
    s = _client(gw.port, version, rcvbuf=64 * 1024)
    try:
        base = rss_kib(gw.proc.pid)
        s.sendall(b"GET /download/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % total)
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
        poll(stalled(lambda: be.sent), timeout=30, what="the backend's sends to stall")
        assert be.finished == 0 and be.sent < 64 * MiB, be.sent >> 20
        assert rss_kib(gw.proc.pid) - base < 64 * 1024
        received = len(got) - (got.index(b"\r\n\r\n") + 4)
        while received < total:
            chunk = s.recv(1 << 20)
            assert chunk, "connection closed early"
            received += len(chunk)
        assert received == total
    finally:
        s.close()
        be.close()
