# -*- test-case-name: tests.test_h2_unit,tests.test_h2_limits_unit,tests.test_h2_hostile -*-
"""The downstream HTTP/2 server protocol: the I/O around a sans-IO engine, one object per stream.

The engine (`txgate.http.h2engine`: libnghttp2 or hyper-h2) owns the framing; this class owns the
transport, the timers (idle, `header_timeout` for the preface and every request head), dispatch,
the access log, the rapid-reset limit and response scheduling. Output is batched: frames
accumulate in the engine and are handed to the TLS transport once per ``dataReceived`` and once
per burst of handler calls (a single ``callLater(0)``), never once per frame. Response bodies are
queued per stream and sent within the flow-control windows, round-robin between streams, so a
slow stream never stalls the others. Request bodies are acknowledged only while the handler is
reading, so a paused handler closes its own stream's window, not the connection's. A peer that
does not read what we send is not read either, and its control-frame replies stay queued in the
engine, which bounds them (GOAWAY ENHANCE_YOUR_CALM).
"""
from __future__ import annotations

import functools
from collections import deque

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate.directwrite import no_delay
from txgate.errors import GatewayError, InternalError
from txgate.http.closing import Closer
from txgate.http.errors import send_gateway_error
from txgate.http.exchange import ConnectionInfo, Limits, NullHandler, RequestHead
from txgate.http.h2engine import EngineSettings, select_engine
from txgate.http.h2engine.base import (ENHANCE_YOUR_CALM, INTERNAL_ERROR, NO_ERROR, DataReceived, GoAwayReceived,
                                       ProtocolFailure, RequestReceived, StreamEnded, StreamReset, WindowOpened)
from txgate.http.h2head import HeadClock
from txgate.http.h2stream import HIGH_WATER, LOW_WATER, H2Stream, StreamLost
from txgate.http.requests import dispatch_request, h2_request_head

log = Logger()

STREAM_WINDOW = 1 << 20          # per-stream receive window we advertise (request bodies)
CONNECTION_WINDOW = 16 << 20     # connection receive window

# The handler of a stream we answered ourselves (malformed request): discards the body.
_REJECTED = NullHandler()


def engine_settings(limits: Limits) -> EngineSettings:
    """What the engine advertises and enforces for a listener's limits (one frozen object shared by
    the connections of equal limits: engines keep it, so not one per connection)."""
    return _engine_settings(limits.max_concurrent_streams, limits.max_header_bytes)


@functools.lru_cache(maxsize=64)
def _engine_settings(max_concurrent_streams: int, max_header_bytes: int) -> EngineSettings:
    return EngineSettings(
        max_concurrent_streams=max_concurrent_streams,
        max_header_list_size=max_header_bytes,
        initial_window_size=STREAM_WINDOW,
        connection_window_size=CONNECTION_WINDOW,
    )


@implementer(IPushProducer)
class H2Connection(Protocol):
    """HTTP/2 server side of one downstream connection."""

    # Rapid Reset (CVE-2023-44487): more than this many client RST_STREAMs within the window
    # gets GOAWAY(ENHANCE_YOUR_CALM).
    rapid_reset_limit = 200
    rapid_reset_window = 10.0

    def __init__(self, dispatcher, info: ConnectionInfo, limits: Limits, clock, engine: type | None = None) -> None:
        self.dispatcher = dispatcher
        self.info = info
        self.limits = limits
        self.clock = clock
        self.engine_class = engine or select_engine("auto")
        self.conn = None  # the engine, from connectionMade
        self._streams: dict[int, H2Stream] = {}
        self._dirty: list[H2Stream] = []
        self._blocked: dict[int, H2Stream] = {}
        self._in_receive = False
        self._flush_call = None
        self._idle_call = None
        self._idle_since = 0.0
        self._head_call = None
        self._head_armed = 0
        self._heads = HeadClock()
        self._transport_paused = False
        self._resets: deque | None = None  # made at the first client reset (memory per idle connection)
        self._shutting_down = False
        self._closing = False
        self._lost = False
        self._closer: Closer | None = None

    # -- Twisted protocol ---------------------------------------------------------------
    def connectionMade(self) -> None:
        no_delay(self.transport)
        conn = self.conn = self.engine_class(engine_settings(self.limits))
        conn.initiate()
        try:
            self.transport.registerProducer(self, True)
        except RuntimeError:
            pass
        self._idle_since = self.clock.seconds()
        self._idle_call = self.clock.callLater(self.limits.idle_timeout, self._idle_check)
        self._arm_head_timer()  # the client's preface
        self.transport.write(conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._lost:
            return
        heads = self._heads
        heads.feed(data)
        self._in_receive = True
        try:
            table = _EVENTS
            for ev in self.conn.receive(data):
                table[ev.__class__](self, ev)
                if self._closing:
                    return
        finally:
            self._in_receive = False
        if heads.pending:
            if self._head_call is None or self._head_armed != heads.heads:
                self._arm_head_timer()
        elif self._head_call is not None:
            self._head_call.cancel()
            self._head_call = None
        self._flush()

    def connectionLost(self, reason=None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._closer is not None:
            self._closer.cancel()
        self._closing = True
        self._cancel_timers()
        streams = list(self._streams.values())
        self._streams.clear()
        self._blocked.clear()
        self._dirty = []
        if streams:
            lost = StreamLost("connection_lost")
            for s in streams:
                self._end_stream(s, lost)
        if self.conn is not None:
            self.conn.close()

    # -- IPushProducer (the TLS transport's buffer) -----------------------------------
    def pauseProducing(self) -> None:
        if self._transport_paused:
            return
        self._transport_paused = True
        # The peer does not read: stop reading it too (its PINGs and SETTINGS would otherwise
        # queue replies without bound), and hold our output in the engine, which bounds it.
        self._reading(False)
        for s in list(self._streams.values()):
            if not s.producing_paused and not s.over and s.handler is not None:
                s.producing_paused = True
                self._call(s, s.handler.pause_producing)

    def resumeProducing(self) -> None:
        if not self._transport_paused:
            return
        self._transport_paused = False
        if not self._closing:
            self._reading(True)
        for s in list(self._streams.values()):
            if s.producing_paused and not s.over and s.buffered <= LOW_WATER:
                s.producing_paused = False
                self._call(s, s.handler.resume_producing)
        self._schedule_flush()

    def stopProducing(self) -> None:
        pass  # connectionLost follows and tells every stream

    def _reading(self, on: bool) -> None:
        try:
            if on:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()
        except Exception:
            pass

    # -- public ---------------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful shutdown: GOAWAY(last stream id), refuse new streams, close when idle."""
        if self._shutting_down or self._closing or self.conn is None:
            return
        self._shutting_down = True
        # Streams up to the highest one seen go on; the engine refuses any above it.
        self.conn.goaway(NO_ERROR)
        self.transport.write(self.conn.data_to_send())
        if not self._streams:
            self._close()

    @property
    def open_streams(self) -> int:
        """Number of streams still running."""
        return len(self._streams)

    # -- StreamOwner: what an H2Stream asks of its connection ----------------------------
    def stream_changed(self, s: H2Stream) -> None:
        """The stream has output: it goes out with the next flush (one per burst)."""
        self._dirty.append(s)
        self._schedule_flush()

    def send_now(self, s: H2Stream) -> None:
        """A large write: send what the windows allow now and apply the watermarks."""
        self._push(s, 1 << 62)
        self._watermarks(s)
        self._schedule_flush()

    def abort_stream(self, s: H2Stream) -> None:
        """Reset the stream (RST_STREAM INTERNAL_ERROR)."""
        self._reset(s, INTERNAL_ERROR)

    # -- events ---------------------------------------------------------------------
    def _on_request(self, ev: RequestReceived) -> None:
        sid = ev.stream_id
        s = H2Stream(self, sid, self.clock.seconds())
        self._streams[sid] = s
        if ev.end_stream:
            s.remote_ended = True
        head, refusal = h2_request_head(ev.headers, not ev.end_stream, self.limits.max_header_bytes)
        if refusal is not None:
            return self._reject(s, head, refusal)
        s.head = head
        try:
            dispatch_request(self.dispatcher, s, head)
        except Exception:
            log.failure("dispatch failed")
            s.handler = _REJECTED
            self._handler_failed(s)
            return
        if s.buffered > HIGH_WATER and not s.over:
            # It wrote during dispatch(), before we knew it: apply the watermarks now.
            self._watermarks(s)

    def _reject(self, s: H2Stream, head: RequestHead | None, err: GatewayError) -> None:
        s.head = head
        s.handler = _REJECTED
        send_gateway_error(s, err, detail=getattr(self.dispatcher, "error_detail", False))

    def _on_data(self, ev: DataReceived) -> None:
        sid = ev.stream_id
        fcl = ev.flow_len
        data = ev.data
        s = self._streams.get(sid)
        if s is None or s.handler is _REJECTED or not s._live():
            # Nobody wants it: hand the window straight back.
            if fcl:
                self.conn.acknowledge(sid, fcl)
            if s is not None:
                s.bytes_in += len(data)
            return
        s.bytes_in += len(data)
        if s.reading_paused or s.pending:
            if s.pending is None:
                s.pending = deque()
            s.pending.append(data)
            s.unacked += fcl
            return
        if data:
            try:
                s.handler.body_received(data)
            except Exception:
                log.failure("handler.body_received failed")
                self._handler_failed(s)
                return
        if not fcl:
            return
        if s.reading_paused:
            # The handler took this chunk but wants no more: hold its window.
            s.unacked += fcl
        else:
            self.conn.acknowledge(sid, fcl)

    def _on_stream_ended(self, ev: StreamEnded) -> None:
        s = self._streams.get(ev.stream_id)
        if s is None:
            return
        s.remote_ended = True
        if not s.pending:
            self._body_done(s)

    def _body_done(self, s: H2Stream) -> None:
        s.remote_done = True
        if s._live():
            try:
                s.handler.body_finished()
            except Exception:
                log.failure("handler.body_finished failed")
                self._handler_failed(s)
                return
        if s.local_done and not s.over:
            self._end_stream(s, None)

    def _on_stream_reset(self, ev: StreamReset) -> None:
        if ev.remote:
            now = self.clock.seconds()
            resets = self._resets
            if resets is None:
                resets = self._resets = deque(maxlen=self.rapid_reset_limit)
            if len(resets) == resets.maxlen and now - resets[0] < self.rapid_reset_window:
                log.info(
                    "h2 rapid reset from {client}: GOAWAY", client=self.info.client_host,
                    reason="h2_rapid_reset",
                )
                self._goaway(ENHANCE_YOUR_CALM)
                return
            resets.append(now)
        s = self._streams.get(ev.stream_id)
        if s is None or s.over:
            return
        s.local_done = True
        self._end_stream(s, StreamLost("stream_reset", ev.error_code))

    def _on_window_opened(self, ev: WindowOpened) -> None:
        # WINDOW_UPDATE, or SETTINGS (a new initial window or frame size): blocked streams may go on.
        if self._blocked:
            self._drain_blocked()

    def _on_terminated(self, ev: GoAwayReceived) -> None:
        # The client sent GOAWAY: close and report the streams in flight lost.
        self._close()

    def _on_failure(self, ev: ProtocolFailure) -> None:
        # The engine has queued GOAWAY with the right error code.
        log.debug("h2 protocol error from {client}: {error}", client=self.info.client_host, error=ev.reason)
        if ev.error_code == ENHANCE_YOUR_CALM:
            log.info("h2 flood from {client}: GOAWAY ({error})", client=self.info.client_host, error=ev.reason,
                     reason="h2_flood")
        self._close()
        # Stop reading (and decrypting) whatever the peer keeps sending; the closer aborts.
        self._reading(False)

    # -- request body backpressure --------------------------------------------------------
    def resume_stream_reading(self, s: H2Stream) -> None:
        """Deliver the stream's held request body and release its held WINDOW_UPDATEs."""
        pending = s.pending
        handler = s.handler
        if pending and not s._live():
            pending.clear()
        while pending and not s.reading_paused and not s.over:
            data = pending.popleft()
            if data:
                try:
                    handler.body_received(data)
                except Exception:
                    log.failure("handler.body_received failed")
                    self._handler_failed(s)
                    return
        if s.over:
            return
        if s.unacked and not s.reading_paused:
            n, s.unacked = s.unacked, 0
            self.conn.acknowledge(s.stream_id, n)
            self._schedule_flush()
        if s.remote_ended and not pending and not s.remote_done:
            self._body_done(s)

    # -- response output ---------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._in_receive and self._flush_call is None and not self._lost:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """Push every dirty stream into the engine and hand its pending frames to the transport."""
        self._flush_call = None
        if self._closing:
            return
        while self._dirty:
            dirty, self._dirty = self._dirty, []
            # One frame per stream first, then the rest round-robin: a stream that asked
            # first does not take the whole connection window.
            for s in dirty:
                s.dirty = False
                if not s.over:
                    self._push(s, 0)
            if self._blocked:
                self._drain_blocked()
            for s in dirty:
                self._watermarks(s)
        if self._transport_paused:
            return  # the peer is not reading: what we have stays in the engine (bounded there)
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def _push(self, s: H2Stream, budget: int) -> None:
        """Send this stream's head and up to ``budget`` bytes (0: one frame) of its body."""
        conn = self.conn
        sid = s.stream_id
        if s.headers is not None:
            block, s.headers = s.headers, None
            end = s.finishing and not s.buf
            if not conn.send_headers(sid, block, end_stream=end):
                return self._stream_gone(s)
            if end:
                return self._local_done(s)
        if s.buf:
            self._send_some(s, budget or conn.max_frame_size)
        elif s.finishing and not s.local_done:
            self._end_data(s)

    def _end_data(self, s: H2Stream) -> None:
        if self.conn.send_data(s.stream_id, b"", end_stream=True):
            self._local_done(s)
        else:
            self._stream_gone(s)

    def _stream_gone(self, s: H2Stream) -> None:
        """The engine refused to send on the stream: the client reset it (or the connection is closing)."""
        self._blocked.pop(s.stream_id, None)
        if not s.over:
            s.local_done = True
            self._end_stream(s, StreamLost("stream_reset") if s._live() else None)

    def _send_some(self, s: H2Stream, budget: int) -> bool:
        """Send up to ``budget`` bytes of queued body; returns whether anything went out."""
        conn = self.conn
        sid = s.stream_id
        window = conn.send_window(sid)
        if window <= 0:
            self._blocked[sid] = s
            return False
        maxf = conn.max_frame_size
        buf = s.buf
        sent = False
        while buf and window > 0 and budget > 0:
            piece = s.take(min(window, maxf, budget))
            size = len(piece)
            window -= size
            budget -= size
            end = s.finishing and not buf
            if not conn.send_data(sid, piece, end_stream=end):
                self._stream_gone(s)
                return sent
            sent = True
            if end:
                self._blocked.pop(sid, None)
                self._local_done(s)
                return True
        if buf:
            self._blocked[sid] = s
        else:
            self._blocked.pop(sid, None)
            if s.finishing and not s.local_done:
                self._end_data(s)
        return sent

    def _drain_blocked(self) -> None:
        """Share the windows between blocked streams, one frame each per round."""
        conn = self.conn
        while self._blocked:
            progress = False
            frame = conn.max_frame_size
            for s in list(self._blocked.values()):
                if s.over:
                    self._blocked.pop(s.stream_id, None)
                    continue
                if self._send_some(s, frame):
                    progress = True
                if not s.over:
                    self._watermarks(s)
            if not progress:
                break

    def _watermarks(self, s: H2Stream) -> None:
        if s.over or s.handler is None:
            return
        if s.buffered > HIGH_WATER:
            if not s.producing_paused:
                s.producing_paused = True
                self._call(s, s.handler.pause_producing)
        elif s.producing_paused and s.buffered <= LOW_WATER and not self._transport_paused:
            s.producing_paused = False
            self._call(s, s.handler.resume_producing)

    def _local_done(self, s: H2Stream) -> None:
        s.local_done = True
        if s.over:
            return
        if s.remote_done or s.remote_ended:
            self._end_stream(s, None)
        else:
            # Complete response, request body still coming: nobody will read it, so stop
            # the upload (RFC 9113 8.1: RST_STREAM NO_ERROR after a complete response).
            self._reset(s, NO_ERROR)

    # -- stream teardown ----------------------------------------------------------------
    def _reset(self, s: H2Stream, code: int) -> None:
        s.local_done = True
        self.conn.reset(s.stream_id, code)
        s.unacked = 0  # the engine credited the connection on arrival; the stream is gone
        self._end_stream(s, None)
        self._schedule_flush()

    def _handler_failed(self, s: H2Stream) -> None:
        if s.over:
            return
        if not s.status:
            s.handler = _REJECTED
            send_gateway_error(s, InternalError(), detail=getattr(self.dispatcher, "error_detail", False))
        else:
            s.aborted = True
            self._reset(s, INTERNAL_ERROR)

    def _end_stream(self, s: H2Stream, lost) -> None:
        """The stream is over: tell a live handler it was lost, log it, forget it."""
        if s.over:
            return
        s.over = True
        sid = s.stream_id
        streams = self._streams
        if streams.pop(sid, None) is not None and not streams:
            self.conn.idle()  # the engine may drop closed streams' state (memory per idle connection)
            self._idle_since = self.clock.seconds() if not self._lost else 0.0
            if self._idle_call is None and not self._lost:
                self._idle_call = self.clock.callLater(self.limits.idle_timeout, self._idle_check)
        self._blocked.pop(sid, None)
        s.buf.clear()
        s.pending = None
        handler = s.handler
        if lost is not None and handler is not None and s._live():
            try:
                handler.stream_lost(Failure(lost))
            except Exception:
                log.failure("handler.stream_lost failed")
        s.report(self.dispatcher, self.clock.seconds(), None if handler is _REJECTED else handler)
        if self._shutting_down and not streams and not self._closing:
            self._close()

    def _call(self, s: H2Stream, fn) -> None:
        try:
            fn()
        except Exception:
            log.failure("handler callback failed")
            self._handler_failed(s)

    # -- timers and connection teardown -------------------------------------------------
    def _arm_head_timer(self) -> None:
        if self._head_call is not None and self._head_call.active():
            self._head_call.cancel()
        self._head_armed = self._heads.heads
        self._head_call = self.clock.callLater(self.limits.header_timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_call = None
        if self._closing or not self._heads.pending:
            return
        what = "preface" if self._heads.heads == 1 else "request head"
        log.info("h2 {what} from {client} not completed within {t}s; closing", what=what,
                 client=self.info.client_host, t=self.limits.header_timeout, reason="header_timeout")
        self._goaway(NO_ERROR)

    def _idle_check(self) -> None:
        self._idle_call = None
        if self._closing or self._streams:
            return  # re-armed when the last stream ends
        remaining = self._idle_since + self.limits.idle_timeout - self.clock.seconds()
        if remaining > 0:
            self._idle_call = self.clock.callLater(remaining, self._idle_check)
            return
        self._goaway(NO_ERROR)

    def _goaway(self, code: int) -> None:
        if self._closing:
            return
        self.conn.goaway(code)
        self._close()

    def _cancel_timers(self) -> None:
        for call in (self._flush_call, self._idle_call, self._head_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._idle_call = self._head_call = None

    def _close(self) -> None:
        """Send what the engine has queued (GOAWAY included) and close the transport."""
        if self._closing:
            return
        self._closing = True
        self._cancel_timers()
        if not self._lost:
            data = self.conn.data_to_send()
            if data:
                self.transport.write(data)
            # close_notify after what is queued; abort if the peer never completes the close
            # (or keeps sending: a flood after GOAWAY must not keep the connection being read).
            self._closer = Closer(self.transport, self.clock)
            self._closer.close()


# Engine event class -> handler, shared by every connection (not a dict of bound methods per connection).
_EVENTS = {
    RequestReceived: H2Connection._on_request,
    DataReceived: H2Connection._on_data,
    StreamEnded: H2Connection._on_stream_ended,
    StreamReset: H2Connection._on_stream_reset,
    WindowOpened: H2Connection._on_window_opened,
    GoAwayReceived: H2Connection._on_terminated,
    ProtocolFailure: H2Connection._on_failure,
}
