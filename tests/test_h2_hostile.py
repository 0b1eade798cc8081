"""Hostile HTTP/2 clients against a real gateway over real TLS, on each engine: values that are not
valid HTTP/1.1 after translation, control-frame floods from a peer that does not read, slow request
heads and prefaces, streams over SETTINGS_MAX_CONCURRENT_STREAMS."""
from __future__ import annotations

import select
import socket
import ssl
import struct
import time

import hpack
import pytest

from backends import rss_kib
from conftest import ADMIN_EPHEMERAL, Backend, curl, poll

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
END_STREAM, END_HEADERS = 0x1, 0x4
GOAWAY, RST_STREAM, HEADERS, DATA = 7, 3, 1, 0
ENHANCE_YOUR_CALM, REFUSED_STREAM = 11, 7


def config(upstream: str, **listener) -> str:
    keys = "".join(f"{k} = {v}\n" for k, v in listener.items())
    return (ADMIN_EPHEMERAL + "[gateway]\naccess_log = -\nshutdown_timeout = 1\n\n[listener:main]\nbind = 127.0.0.1:0\n" + keys
            + f"\n[api:main]\npath = /\nupstream = {upstream}\n")


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


class RawH2:
    """A raw HTTP/2 client over TLS: sends what it is told, parses frames, never validates."""

    def __init__(self, port: int, preface: bool = True) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                    server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.buf = b""
        self.ack_settings = True
        if preface:
            self.sock.sendall(PREFACE + frame(4, 0, 0))

    def headers(self, sid: int, fields, end_stream: bool = True) -> None:
        self.sock.sendall(frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, self.enc.encode(fields)))

    def frames(self, until, timeout: float = 5.0) -> list:
        """Read frames until ``until(frames)`` is true, the peer closes, or the deadline."""
        got = []
        deadline = time.monotonic() + timeout
        while not until(got) and time.monotonic() < deadline:
            while len(self.buf) >= 9 and len(self.buf) >= 9 + int.from_bytes(self.buf[:3], "big"):
                n = int.from_bytes(self.buf[:3], "big")
                f = (self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF, self.buf[9:9 + n])
                self.buf = self.buf[9 + n:]
                if f[0] == HEADERS:
                    f = f[:3] + (dict(self.dec.decode(f[3], raw=True)),)
                elif f[0] == 4 and not f[1] & 1 and self.ack_settings:
                    try:
                        self.sock.sendall(frame(4, 1, 0))
                    except (ssl.SSLError, OSError):
                        pass  # best effort: the peer may be gone, or not reading
                got.append(f)
                if until(got):
                    return got
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLError, OSError):
                break
            if not data:
                got.append(("closed",))
                break
            self.buf += data
        return got

    def close(self) -> None:
        self.sock.close()


def ended(sid):
    return lambda fs: any(f[0] in (HEADERS, DATA) and f[2] == sid and f[1] & END_STREAM or f[0] == RST_STREAM and f[2] == sid
                          or f[0] in (GOAWAY, "closed") for f in fs)


def status_of(frames, sid) -> int | None:
    for f in frames:
        if f[0] == HEADERS and f[2] == sid:
            return int(f[3][b":status"])
    return None


def req(method=b"GET", path=b"/ok", authority=b"localhost", extra=()):
    return [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", path), *extra]


# -- (5) HTTP/2 -> HTTP/1.1 translation --------------------------------------------------------------
BAD = [
    req(path=b"/x HTTP/1.1\r\nX-Smuggled: 1"),
    req(path=b"/a b"),
    req(path=b"/a\tb"),
    req(path=b"/a#b"),
    req(path=b"/\xc3\xa9"),
    req(method=b"GET /admin"),
    req(method=b"G(T"),
    req(authority=b"localhost /admin"),
    req(authority=b"evil@localhost"),
    req(extra=[(b"x-a b", b"1")]),
    req(extra=[(b"x(y)", b"1")]),
    req(extra=[(b"x-v", b"a\x01b")]),
    req(extra=[(b"x-v", b"a\x7fb")]),
]


def test_values_invalid_in_http11_get_400_and_never_reach_the_upstream(h2_engine, gateway_factory):
    be = Backend()
    try:
        gw = gateway_factory(config(be.url()))
        c = RawH2(gw.port)
        sid = 1
        for fields in BAD:
            c.headers(sid, fields)
            got = c.frames(ended(sid))
            assert status_of(got, sid) == 400, (fields, got)
            assert not any(f[0] == GOAWAY for f in got)
            sid += 2
        c.headers(sid, req(path=b"/ok"))  # the connection still serves
        assert status_of(c.frames(ended(sid)), sid) == 200
        assert [r["path"] for r in be.requests] == ["/ok"]
        c.close()
    finally:
        be.close()


# -- (6) PING / SETTINGS floods from a peer that does not read -----------------------------------------
def test_ping_flood_without_reading_is_cut_off_with_bounded_memory(h2_engine, gateway_factory):
    # (SETTINGS and mixed floods: tests/test_h2_limits_unit.py, in memory, on each engine.)
    kind = "ping"
    gw = gateway_factory(config("builtin:echo"))
    c = RawH2(gw.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it does not read: fill up fast
    unit = frame(6, 0, 0, b"12345678") if kind == "ping" else frame(4, 0, 0)
    chunk = unit * 500
    before = rss_kib(gw.proc.pid)
    sent = 0
    c.sock.settimeout(2)
    deadline = time.monotonic() + 20
    cut = False
    try:
        while time.monotonic() < deadline and sent < 2_000_000:
            c.sock.sendall(chunk)
            sent += 500
    except (socket.timeout, ssl.SSLError, OSError):
        cut = True  # the gateway stopped reading (or closed)
    grown = rss_kib(gw.proc.pid) - before
    c.ack_settings = False
    assert cut, f"the gateway read {sent} {kind} frames from a client that never reads"
    assert grown < 40_000, f"gateway grew by {grown} KiB"
    # Whatever was answered: no more than the kernel buffers held, then GOAWAY or silence.
    got = c.frames(lambda fs: any(f[0] in (GOAWAY, "closed") for f in fs), timeout=3)
    goaways = [int.from_bytes(f[3][4:8], "big") for f in got if f[0] == GOAWAY]
    assert goaways in ([], [ENHANCE_YOUR_CALM])
    c.close()
    r = curl("-k", "--http2", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", gw.url("/echo"))
    assert r.stdout == b"200"


# -- (7) header_timeout --------------------------------------------------------------------------------
def test_slow_continuations_hit_header_timeout(h2_engine, gateway_factory):
    gw = gateway_factory(config("builtin:echo", header_timeout=1, idle_timeout=60))
    c = RawH2(gw.port)
    block = c.enc.encode(req(extra=[(b"x-pad-%d" % i, b"v" * 20) for i in range(20)]))
    # The preface exchange first (both SETTINGS acknowledged), so that nothing but CONTINUATION follows.
    c.frames(lambda fs: any(f[0] == 4 and f[1] & 1 for f in fs) and any(f[0] == 4 and not f[1] & 1 for f in fs))
    c.ack_settings = False
    start = time.monotonic()
    c.sock.sendall(frame(HEADERS, END_STREAM, 1, block[:5]))
    try:
        for i in range(5, len(block)):  # one byte of CONTINUATION every 0.25 s, until answered
            if select.select([c.sock], [], [], 0.25)[0]:
                break
            c.sock.sendall(frame(9, 0, 1, block[i:i + 1]))
    except (ssl.SSLError, OSError):
        pass
    got = c.frames(lambda fs: any(f[0] in (GOAWAY, "closed") for f in fs), timeout=5)
    cut_after = time.monotonic() - start
    assert any(f[0] in (GOAWAY, "closed") for f in got)
    assert not any(f[0] == HEADERS for f in got)
    assert cut_after < 2.5, f"cut only after {cut_after:.1f}s (header_timeout = 1)"
    c.close()


@pytest.mark.parametrize("sent", [b"", PREFACE[:10], PREFACE])
def test_connection_without_a_complete_preface_hits_header_timeout(h2_engine, gateway_factory, sent):
    gw = gateway_factory(config("builtin:echo", header_timeout=1, idle_timeout=60))
    c = RawH2(gw.port, preface=False)
    c.ack_settings = False  # not a byte more than ``sent``
    start = time.monotonic()
    if sent:
        c.sock.sendall(sent)
    got = c.frames(lambda fs: any(f[0] == "closed" for f in fs), timeout=5)
    assert got and got[-1] == ("closed",) and time.monotonic() - start < 3
    c.close()


# -- (8) streams over SETTINGS_MAX_CONCURRENT_STREAMS -----------------------------------------------------
def test_stream_over_max_concurrent_streams_gets_refused_stream_and_the_others_go_on(h2_engine, gateway_factory):
    gw = gateway_factory(config("builtin:echo"))
    c = RawH2(gw.port)
    got = c.frames(lambda fs: any(f[0] == 4 and not f[1] & 1 for f in fs))
    settings = [f[3] for f in got if f[0] == 4 and not f[1] & 1][0]
    limit = dict((int.from_bytes(settings[i:i + 2], "big"), int.from_bytes(settings[i + 2:i + 6], "big"))
                 for i in range(0, len(settings), 6))[3]
    sids = [1 + 2 * i for i in range(limit + 3)]
    for sid in sids:  # POSTs whose bodies never end: every stream stays open
        c.headers(sid, req(method=b"POST", path=b"/echo"), end_stream=False)
    over = sids[limit:]
    got = c.frames(lambda fs: {f[2] for f in fs if f[0] == RST_STREAM} >= set(over) or any(f[0] == GOAWAY for f in fs))
    assert not any(f[0] in (GOAWAY, "closed") for f in got)
    assert {(f[2], int.from_bytes(f[3], "big")) for f in got if f[0] == RST_STREAM} == {(s, REFUSED_STREAM) for s in over}
    # The streams in flight are unharmed.
    c.sock.sendall(frame(DATA, END_STREAM, sids[0], b"hello"))
    done = c.frames(ended(sids[0]))
    assert status_of(done, sids[0]) == 200
    assert b'"body_bytes": 5' in b"".join(f[3] for f in done if f[0] == DATA and f[2] == sids[0])
    c.close()


def test_client_that_keeps_opening_streams_over_the_limit_gets_enhance_your_calm(h2_engine, gateway_factory):
    gw = gateway_factory(config("builtin:echo"))
    c = RawH2(gw.port)
    sid = 1
    for _ in range(100):  # fill the limit (100)
        c.headers(sid, req(method=b"POST", path=b"/echo"), end_stream=False)
        sid += 2
    goaway = None
    for _ in range(300):
        try:
            c.headers(sid, req(method=b"POST", path=b"/echo"), end_stream=False)
        except (ssl.SSLError, OSError):
            break
        sid += 2
    got = c.frames(lambda fs: any(f[0] == GOAWAY for f in fs))
    goaway = [int.from_bytes(f[3][4:8], "big") for f in got if f[0] == GOAWAY]
    assert goaway == [ENHANCE_YOUR_CALM]
    poll(lambda: "h2 flood" in gw.output() or "Unhandled" in gw.output(), 5, what="flood log line")
    assert "Unhandled Error" not in gw.output()
    c.close()
