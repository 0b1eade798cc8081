"""Test helpers for the HTTP/2 engines: a minimal in-memory application driving one engine, client
byte builders (hyper-h2 as the client, raw frames for malformed input) and a server-output decoder."""
from __future__ import annotations

import struct

import h2.config
import h2.connection
import hpack

from txgate.http.h2engine import available_engines
from txgate.http.h2engine.base import (
    DataReceived,
    GoAwayReceived,
    ProtocolFailure,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowOpened,
)

ENGINES = available_engines()
ENGINE_NAMES = sorted(ENGINES)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """One raw HTTP/2 frame."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split server output into (type, flags, stream id, payload)."""
    frames = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        frames.append((kind, flags, sid, bytes(data[pos + 9:pos + 9 + length])))
        pos += 9 + length
    return frames


def client(**settings) -> h2.connection.H2Connection:
    """A hyper-h2 client connection with its preface already queued."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None,
                                                             validate_outbound_headers=False,
                                                             normalize_outbound_headers=False))
    c.initiate_connection()
    if settings:
        c.update_settings(settings)
    return c


def request_headers(path: bytes = b"/", method: bytes = b"GET", extra=()) -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":scheme", b"https"), (b":authority", b"example.test"),
            (b":path", path), *extra]


class Driver:
    """The smallest application over an engine: records what it sees, acknowledges every body byte,
    and answers each request when its body has ended with 200 and ``body_for(stream_id)``."""

    def __init__(self, name: str, settings=None, respond: bool = True, body: bytes = b"ok") -> None:
        self.engine = ENGINES[name](settings)
        self.engine.initiate()
        self.respond = respond
        self.body = body
        self.out = bytearray(self.engine.data_to_send())
        self.requests: dict[int, list] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: list[int] = []
        self.resets: list[tuple[int, int, bool]] = []
        self.goaway_received: tuple[int, int] | None = None
        self.failure: int | None = None
        self.windows = 0
        self.closed = False
        self.pending: dict[int, bytes] = {}

    def feed(self, data: bytes) -> list:
        if self.closed:
            return []
        events = self.engine.receive(data)
        for ev in events:
            if isinstance(ev, RequestReceived):
                self.requests[ev.stream_id] = ev.headers
                self.bodies[ev.stream_id] = bytearray()
            elif isinstance(ev, DataReceived):
                self.bodies[ev.stream_id] += ev.data
                self.engine.acknowledge(ev.stream_id, ev.flow_len)
            elif isinstance(ev, StreamEnded):
                self.ended.append(ev.stream_id)
                if self.respond:
                    self.answer(ev.stream_id)
            elif isinstance(ev, StreamReset):
                self.resets.append((ev.stream_id, ev.error_code, ev.remote))
                self.pending.pop(ev.stream_id, None)
            elif isinstance(ev, WindowOpened):
                self.windows += 1
                self.push_pending()
            elif isinstance(ev, GoAwayReceived):
                self.goaway_received = (ev.error_code, ev.last_stream_id)
                self.closed = True
            elif isinstance(ev, ProtocolFailure):
                self.failure = ev.error_code
                self.closed = True
        self.flush()
        return events

    def answer(self, sid: int, body: bytes | None = None) -> None:
        body = self.body if body is None else body
        eng = self.engine
        if not eng.send_headers(sid, [(b":status", b"200"), (b"content-length", str(len(body)).encode())],
                                end_stream=not body):
            return
        if body:
            self.pending[sid] = body
            self.push_pending()

    def push_pending(self) -> None:
        for sid, rest in list(self.pending.items()):
            n = min(len(rest), self.engine.send_window(sid))
            if n or not rest:
                if not self.engine.send_data(sid, rest[:n], end_stream=n == len(rest)):
                    del self.pending[sid]
                    continue
                rest = rest[n:]
            if rest:
                self.pending[sid] = rest
            else:
                del self.pending[sid]

    def flush(self) -> None:
        self.out += self.engine.data_to_send()

    def server_view(self) -> dict:
        """What the client would see: responses per stream, RST_STREAMs, GOAWAYs."""
        dec = hpack.Decoder()
        dec.max_header_list_size = 1 << 30
        responses: dict[int, dict] = {}
        rsts, goaways = [], []
        for kind, flags, sid, payload in parse_frames(bytes(self.out)):
            if kind == HEADERS:
                hdrs = dec.decode(payload, raw=True)
                r = responses.setdefault(sid, {"status": None, "body": b"", "ended": False})
                r["status"] = dict(hdrs).get(b":status")
                r["ended"] = r["ended"] or bool(flags & 1)
            elif kind == DATA:
                r = responses.setdefault(sid, {"status": None, "body": b"", "ended": False})
                r["body"] += payload
                r["ended"] = r["ended"] or bool(flags & 1)
            elif kind == RST:
                rsts.append((sid, int.from_bytes(payload[:4], "big")))
            elif kind == GOAWAY:
                goaways.append(int.from_bytes(payload[4:8], "big"))
        return {"responses": responses, "rsts": rsts, "goaways": goaways}

    def outcome(self) -> dict:
        """Everything the differential test compares."""
        view = self.server_view()
        return {
            "requests": self.requests,
            "bodies": {k: bytes(v) for k, v in self.bodies.items()},
            "ended": sorted(self.ended),
            "resets": sorted(self.resets),
            "failure": self.failure,
            "goaway_received": self.goaway_received,
            **view,
        }
