"""Streaming with backpressure, for real: 1 GiB each way within a small RSS bound, slow readers pause upstreams."""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time

import pytest

from backends import H2Client, StreamingBackend, rss_kib
from conftest import ADMIN_EPHEMERAL, curl, poll

GiB = 1 << 30
MiB = 1 << 20
RSS_BOUND_KIB = 64 * 1024


@pytest.fixture
def streaming(gateway_factory):
    be = StreamingBackend()
    gw = gateway_factory(
        ADMIN_EPHEMERAL + "[listener:main]\nbind = 127.0.0.1:0\n\n"
        f"[api:stream]\npath = /\nupstream = {be.url()}\ntimeout = 60\n"
    )
    yield gw, be
    be.close()


class RssSampler:
    """Samples a process's VmRSS every 20 ms in a thread; peak() is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.samples.append(rss_kib(self.pid))
            except (OSError, AssertionError):
                return
            self.stop_flag.wait(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join()

    def peak(self) -> int:
        return max(self.samples)


def warm_up(gw, be) -> int:
    """A small transfer each way first, so the baseline includes the code paths' own memory."""
    r = curl("--cacert", gw.ca, "-o", "/dev/null", gw.url("/download/4194304"))
    assert r.returncode == 0, r.stderr
    r = subprocess.run(f"head -c 4194304 /dev/zero | curl -sS --cacert {gw.ca} -T - {gw.url('/upload')}",
                       shell=True, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return rss_kib(gw.proc.pid)


def test_1gib_download_rss_bound(streaming):
    gw, be = streaming
    base = warm_up(gw, be)
    with RssSampler(gw.proc.pid) as s:
        r = curl("--http1.1", "--cacert", gw.ca, "-o", "/dev/null", "-w", "%{size_download}",
                 gw.url(f"/download/{GiB}"), timeout=60)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == GiB
    growth = s.peak() - base
    assert growth < RSS_BOUND_KIB, f"RSS grew by {growth} KiB during a 1 GiB download"


def test_1gib_upload_rss_bound(streaming):
    gw, be = streaming
    base = warm_up(gw, be)
    with RssSampler(gw.proc.pid) as s:
        # -T - sends chunked (unknown length); the backend counts without storing.
        r = subprocess.run(f"head -c {GiB} /dev/zero | curl -sS --http1.1 --cacert {gw.ca} -T - {gw.url('/upload')}",
                           shell=True, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"received": GiB}
    growth = s.peak() - base
    assert growth < RSS_BOUND_KIB, f"RSS grew by {growth} KiB during a 1 GiB upload"


def stalled(read_counter, quiet: float = 0.5):
    """A predicate for poll(): true once the counter has not moved for `quiet` seconds."""
    state = {"value": -1, "since": time.monotonic()}

    def check():
        v = read_counter()
        now = time.monotonic()
        if v != state["value"]:
            state["value"], state["since"] = v, now
            return False
        return now - state["since"] >= quiet

    return check


def test_slow_client_pauses_the_upstream(streaming):
    gw, be = streaming
    base = warm_up(gw, be)
    fin0, sent0 = be.finished, be.sent
    total = 512 * MiB
    ctx = ssl.create_default_context(cafile=gw.ca)
    raw = socket.create_connection(("127.0.0.1", gw.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.settimeout(10)
    try:
        s.sendall(b"GET /download/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % total)
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
        # Stop reading: the backend's sends must stall well before the end of the body.
        poll(stalled(lambda: be.sent), timeout=20, what="backend sends to stall")
        assert be.finished == fin0
        sent = be.sent - sent0
        assert sent < 64 * MiB, f"backend sent {sent >> 20} MiB to a client that reads nothing"
        assert rss_kib(gw.proc.pid) - base < RSS_BOUND_KIB
        # Read slowly for a while: the backend only advances as the client reads.
        received = len(got)
        for _ in range(20):
            received += len(s.recv(65536))
        assert be.finished == fin0
        # Now read everything.
        head_len = got.index(b"\r\n\r\n") + 4
        while received - head_len < total:
            chunk = s.recv(1 << 20)
            assert chunk, "connection closed early"
            received += len(chunk)
        assert received - head_len == total
        poll(lambda: be.finished == fin0 + 1, what="backend to finish")
    finally:
        s.close()


def test_curl_limit_rate_pauses_the_upstream(streaming):
    gw, be = streaming
    warm_up(gw, be)
    fin0, sent0 = be.finished, be.sent
    p = subprocess.Popen(["curl", "-sS", "--cacert", gw.ca, "--limit-rate", "2M", "-o", "/dev/null",
                          gw.url(f"/download/{256 * MiB}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        poll(lambda: be.sent > sent0, what="download to start")
        poll(stalled(lambda: be.sent), timeout=20, what="backend sends to stall")
        assert be.finished == fin0 and be.sent - sent0 < 64 * MiB
    finally:
        p.kill()
        p.wait()


def test_h2_slow_stream_does_not_stall_another(h2_engine, streaming):
    gw, be = streaming
    c = H2Client(gw.port, gw.ca, window=1 * MiB)
    try:
        slow = c.request(f"/download/{128 * MiB}", auto_ack=False)
        # Let the slow stream exhaust its window, with the gateway holding what it may.
        poll(lambda: c.pump(0.05) and len(c.responses[slow]["body"]) > 0, what="slow stream data")
        quiet = stalled(lambda: be.sent)
        poll(lambda: c.pump(0.05) and quiet(), timeout=20, what="upstream of slow stream to stall")
        fast = c.request(f"/download/{8 * MiB}")
        r = c.wait(fast, timeout=20)
        assert dict(r["headers"])[":status"] == "200"
        assert len(r["body"]) == 8 * MiB
        assert not c.responses[slow]["ended"]
        assert be.finished == 1  # only the fast one
        assert be.sent < 8 * MiB + 48 * MiB
        # The slow stream finishes once its reader catches up.
        c.ack(slow)
        r = c.wait(slow, timeout=60)
        assert len(r["body"]) == 128 * MiB
    finally:
        c.close()
