# -*- test-case-name: tests.test_h2engine_unit -*-
"""The libnghttp2 HTTP/2 engine: `H2Engine` over the native session glue (``txgate._nghttp2``).

Request header blocks are gathered in C and arrive here once per request; body chunks and a few
frame events arrive through small callbacks; response bodies are pulled by nghttp2 from per-stream
queues (deferred data providers, resumed by `send_data`). Importing this module fails with
ImportError when the native module is not built.
"""
from __future__ import annotations

from collections import deque
from itertools import accumulate

from twisted.logger import Logger
from twisted.python.failure import Failure

from txgate._nghttp2 import ffi, lib  # type: ignore[import-not-found]
from txgate.http.h2engine.base import (
    NO_ERROR,
    DataReceived,
    EngineSettings,
    Event,
    GoAwayReceived,
    Header,
    ProtocolFailure,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowOpened,
)

log = Logger()

VERSION: str = ffi.string(lib.txg_h2_version()).decode()

_EOF = lib.TXG_H2_READ_EOF
_TRAILERS = lib.TXG_H2_READ_TRAILERS
_DEFERRED = lib.TXG_H2_DEFERRED
_REASONS = {1: "protocol error", 2: "internal error", 6: "frame size error", 9: "compression error",
            11: "enhance your calm", 3: "flow control error", 5: "stream closed"}


class _Out:
    """One stream's queued response body (what nghttp2's data provider reads from)."""

    __slots__ = ("chunks", "queued", "eof", "trailers", "deferred")

    def __init__(self) -> None:
        self.chunks: deque = deque()
        self.queued = 0
        self.eof = False
        self.trailers: tuple | None = None
        self.deferred = False


def _pack(headers: list[Header]) -> tuple[bytes, object, int]:
    """Headers as one blob plus a C array of name/value lengths."""
    parts = [x for field in headers for x in field]
    return b"".join(parts), ffi.new("uint32_t[]", [len(x) for x in parts]), len(headers)


# Out-parameters of one glue call, read right after it returns (no callback in between runs another
# engine's call): one pair for every engine rather than two cffi objects per connection.
_WINDOWS = ffi.new("int32_t[2]")
_OUTP = ffi.new("const uint8_t **")


class NativeEngine:
    """`H2Engine` over libnghttp2 (see the module docstring).

    Lean per connection (docs/benchmarks.md, idle memory): slots, streams' state only while they are
    live, and no output buffer kept in the glue between writes."""

    __slots__ = ("settings", "_handle", "_h", "_events", "_out", "_queued_total", "_live", "_over", "_early")

    name = "native"

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings = settings or EngineSettings()
        limits = ffi.new("txg_h2_limits *")
        limits.max_concurrent_streams = settings.max_concurrent_streams
        limits.max_header_list_size = settings.max_header_list_size
        limits.header_decode_limit = settings.header_decode_limit
        limits.initial_window_size = settings.initial_window_size
        limits.connection_window_size = settings.connection_window_size
        limits.max_continuations = settings.max_continuations
        limits.max_control_replies = settings.max_control_replies
        limits.max_refused_streams = settings.max_refused_streams
        self._handle = ffi.new_handle(self)
        err = ffi.new("int *")
        h = lib.txg_h2_new(self._handle, limits, err)
        if h == ffi.NULL:
            raise MemoryError(f"txgate._nghttp2: session not created (error {err[0]})")
        self._h = ffi.gc(h, lib.txg_h2_free)
        self._events: list[Event] = []
        self._out: dict[int, _Out] = {}   # streams whose response body is still queued or open
        self._queued_total = 0
        self._live: dict[int, None] = {}  # requests handed over and not ended (a dict: 64 bytes empty, a set 216)
        self._over = False
        self._early: list[bytes] | None = None  # serialized ahead of a reset, to keep frame order

    def initiate(self) -> None:
        """SETTINGS and the connection window were queued when the session was made."""

    # -- input -------------------------------------------------------------------------------
    def receive(self, data: bytes) -> list[Event]:
        """Feed client bytes; returns the events (see `H2Engine.receive`)."""
        if self._over:
            return []
        rc = lib.txg_h2_recv(self._h, data, len(data))
        events, self._events = self._events, []
        if rc:
            self._over = True
            return [ProtocolFailure(rc, _REASONS.get(rc, f"error {rc}"))]
        return events

    # -- output ------------------------------------------------------------------------------
    def send_headers(self, stream_id: int, headers: list[Header], end_stream: bool = False) -> bool:
        """Queue the response head; False when the stream is gone."""
        blob, lens, n = _pack(headers)
        flags = lib.TXG_H2_SUBMIT_END_STREAM if end_stream else 0
        if lib.txg_h2_submit(self._h, stream_id, blob, len(blob), lens, n, flags) != 0:
            return False
        if not end_stream:
            self._out[stream_id] = _Out()
        return True

    def send_window(self, stream_id: int) -> int:
        """Bytes `send_data` may take now."""
        w = _WINDOWS
        if lib.txg_h2_send_windows(self._h, stream_id, w) != 0:
            return 0
        out = self._out.get(stream_id)
        queued = out.queued if out is not None else 0
        return max(0, min(w[0] - queued, w[1] - self._queued_total))

    @property
    def max_frame_size(self) -> int:
        return lib.txg_h2_max_frame_size(self._h)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Queue body bytes within the window; nghttp2 frames them at `data_to_send`."""
        out = self._out.get(stream_id)
        if out is None or out.eof:
            return False
        n = len(data)
        if n:
            if n > self.send_window(stream_id):
                if lib.txg_h2_send_windows(self._h, stream_id, _WINDOWS) != 0:
                    return False
                raise ValueError(f"send_data: {n} bytes exceed the send window of stream {stream_id}")
            out.chunks.append(data)
            out.queued += n
            self._queued_total += n
        if end_stream:
            out.eof = True
        if out.deferred:
            out.deferred = False
            lib.txg_h2_resume(self._h, stream_id)
        return True

    def send_trailers(self, stream_id: int, headers: list[Header]) -> bool:
        """Queue trailers (they end the stream); False when the stream is gone."""
        out = self._out.get(stream_id)
        if out is None or out.eof:
            return False
        out.trailers = _pack(headers)
        out.eof = True
        if out.deferred:
            out.deferred = False
            lib.txg_h2_resume(self._h, stream_id)
        return True

    def reset(self, stream_id: int, error_code: int) -> None:
        """Queue RST_STREAM after what the stream has queued (nghttp2 would send RST_STREAM first)."""
        if stream_id in self._out:
            early = self._serialize()
            if self._early is None:
                self._early = [early]
            else:
                self._early.append(early)
        self._forget(stream_id)
        lib.txg_h2_reset(self._h, stream_id, error_code)

    def acknowledge(self, stream_id: int, n: int) -> None:
        """Reopen the stream's receive window by ``n`` (nghttp2 sends it once half a window gathered)."""
        if n > 0:
            lib.txg_h2_consume(self._h, stream_id, n)

    def goaway(self, error_code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """Queue GOAWAY; streams up to ``last_stream_id`` may go on."""
        if last_stream_id is None:
            last_stream_id = self.highest_stream_id
        lib.txg_h2_goaway(self._h, error_code, last_stream_id)
        if error_code != NO_ERROR:
            self._over = True

    @property
    def highest_stream_id(self) -> int:
        return lib.txg_h2_last_stream_id(self._h)

    def data_to_send(self) -> bytes:
        """Every byte queued so far (nghttp2 serializes the frames here)."""
        data = self._serialize()
        if self._early is not None:
            self._early.append(data)
            data = b"".join(self._early)
            self._early = None
        return data

    def _serialize(self) -> bytes:
        h = self._h
        n = lib.txg_h2_send(h, _OUTP)
        if n <= 0:
            return b""
        data = ffi.buffer(_OUTP[0], n)[:]
        lib.txg_h2_release(h)  # the glue's output buffer is not kept between writes
        return data

    def idle(self) -> None:
        """No stream left at the protocol: nothing to drop (nghttp2 keeps no closed streams here)."""

    def close(self) -> None:
        """Free the nghttp2 session now rather than at garbage collection."""
        h, self._h = self._h, ffi.NULL
        self._over = True
        if h != ffi.NULL:
            ffi.release(h)

    # -- internals ---------------------------------------------------------------------------
    def _forget(self, stream_id: int) -> None:
        self._live.pop(stream_id, None)
        out = self._out.pop(stream_id, None)
        if out is not None:
            self._queued_total -= out.queued

    def _read(self, stream_id: int, buf, length: int, flags) -> int:
        out = self._out.get(stream_id)
        if out is None:
            return -1
        chunks = out.chunks
        size = 0
        while chunks and size < length:
            chunk = chunks[0]
            n = len(chunk)
            room = length - size
            if n > room:
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                ffi.memmove(buf + size, view[:room], room)
                chunks[0] = view[room:]
                size = length
                break
            ffi.memmove(buf + size, chunk, n)
            chunks.popleft()
            size += n
        out.queued -= size
        self._queued_total -= size
        if not chunks:
            if out.eof:
                if out.trailers is not None:
                    flags[0] = _EOF | _TRAILERS
                    blob, lens, nf = out.trailers
                    lib.txg_h2_submit(self._h, stream_id, blob, len(blob), lens, nf, lib.TXG_H2_SUBMIT_TRAILERS)
                else:
                    flags[0] = _EOF
                del self._out[stream_id]
            elif not size:
                out.deferred = True
                return _DEFERRED
        return size


# -- callbacks from the C glue (called during txg_h2_recv / txg_h2_send) ------------------------

def _failed(exception, exc_value, traceback) -> None:
    # An exception in a callback must not escape into C: log it; the glue fails the connection.
    log.failure("h2 engine callback failed", Failure(exc_value, exception, traceback))


@ffi.def_extern(onerror=_failed, error=-1)
def txg_h2_on_request(user, stream_id, buf, buf_len, lens, nfields, end_stream):
    engine = ffi.from_handle(user)
    raw = ffi.buffer(buf, buf_len)[:] if buf_len else b""
    offs = list(accumulate(ffi.unpack(lens, 2 * nfields), initial=0))
    headers = [(raw[offs[i]:offs[i + 1]], raw[offs[i + 1]:offs[i + 2]]) for i in range(0, 2 * nfields, 2)]
    engine._live[stream_id] = None
    events = engine._events
    events.append(RequestReceived(stream_id, headers, bool(end_stream)))
    if end_stream:
        events.append(StreamEnded(stream_id))
    return 0


@ffi.def_extern(onerror=_failed, error=-1)
def txg_h2_on_data(user, stream_id, data, length):
    engine = ffi.from_handle(user)
    engine._events.append(DataReceived(stream_id, ffi.buffer(data, length)[:], length))
    return 0


@ffi.def_extern(onerror=_failed, error=-1)
def txg_h2_on_event(user, kind, stream_id, a, b):
    engine = ffi.from_handle(user)
    events = engine._events
    if kind == lib.TXG_H2_EV_END_STREAM:
        events.append(StreamEnded(stream_id))
    elif kind == lib.TXG_H2_EV_RST_STREAM:
        if stream_id in engine._live:
            engine._forget(stream_id)
            events.append(StreamReset(stream_id, a, True))
    elif kind == lib.TXG_H2_EV_WINDOW:
        events.append(WindowOpened(stream_id))
    elif kind == lib.TXG_H2_EV_CLOSED:
        if stream_id in engine._live:
            engine._forget(stream_id)
            if a != NO_ERROR:
                events.append(StreamReset(stream_id, a, False))
        else:
            engine._forget(stream_id)
    elif kind == lib.TXG_H2_EV_GOAWAY:
        events.append(GoAwayReceived(a, b))
    return 0


@ffi.def_extern(onerror=_failed, error=-1)
def txg_h2_on_read(user, stream_id, buf, length, flags):
    return ffi.from_handle(user)._read(stream_id, buf, length, flags)
