"""The downstream HTTP/2 server protocol: hyper-h2 driven directly, one object per stream.

Output is batched: frames accumulate inside the h2 connection object and are handed to the
TLS transport once per ``dataReceived`` and once per burst of handler calls (a single
``callLater(0)``), never once per frame.  Response bodies are queued per stream and sent
within the flow-control windows, round-robin between streams, so a slow stream never
stalls the others.  Request bodies are acknowledged (WINDOW_UPDATE) only while the
handler is reading, so a paused handler closes its own stream's window, not the
connection's.
"""
from __future__ import annotations

from collections import deque

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from txgate.directwrite import no_delay
from txgate.http.closing import Closer
from txgate.http.errors import send_error
from txgate.http.exchange import ConnectionInfo, Limits, NullHandler, RequestHead
from txgate.http.h2lean import LeanSettings, slim


class _QuietLog:
    """hpack formats a stdlib `logging.debug` call per header field coded (~24 per request);
    the gateway never enables them, so they get a no-op logger in this process."""

    def debug(self, *args, **kwargs) -> None:
        pass

    def isEnabledFor(self, level) -> bool:
        return False


def _quiet_hpack() -> None:
    import hpack.hpack

    hpack.hpack.log = _QuietLog()


_quiet_hpack()

log = Logger()

# Connection-specific headers never sent in HTTP/2 (RFC 9113 8.2.2).
_RESPONSE_DROP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te",
     b"content-length"}
)
_STATUS = {n: str(n).encode() for n in range(100, 600)}
# Bytes allowed in a request header name (RFC 9113 8.2.1): visible ASCII, no upper case, no ":".
_NAME_OK = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
_WS = b" \t"
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

STREAM_WINDOW = 1 << 20          # per-stream receive window we advertise (request bodies)
CONNECTION_WINDOW = 16 << 20     # connection receive window
HIGH_WATER = 64 * 1024           # per-stream queued response bytes before pause_producing()
LOW_WATER = 16 * 1024            # ... and before resume_producing()

_INTERNAL_ERROR = ErrorCodes.INTERNAL_ERROR
_REFUSED_STREAM = ErrorCodes.REFUSED_STREAM


class StreamLost(Exception):
    """The stream ended before the response did (client reset or connection lost)."""

    def __init__(self, code: str, error_code: int = 0) -> None:
        super().__init__(code)
        self.code = code
        self.error_code = error_code


# The handler of a stream we answered ourselves (malformed request): discards the body.
_REJECTED = NullHandler()


class H2Stream:
    """One request/response exchange on an HTTP/2 connection (implements `Stream`)."""

    __slots__ = (
        "proto",
        "stream_id",
        "info",
        "head",
        "handler",
        "status",
        "bytes_in",
        "bytes_out",
        "started",
        # response side
        "headers",        # pending response header block (sent at the next flush)
        "buf",            # deque of queued body chunks (bytes or memoryview)
        "buffered",       # total bytes in buf
        "finishing",      # finish() called
        "local_done",     # END_STREAM sent (or stream reset)
        "aborted",
        "dirty",          # on the connection's dirty list
        "producing_paused",  # handler.pause_producing() in effect
        # request side
        "reading_paused",
        "pending",        # deque of (data, flow_controlled_length) held while paused
        "unacked",        # flow-controlled bytes held back from the client
        "remote_ended",   # END_STREAM received from the client
        "remote_done",    # ... and body_finished() delivered
        "over",
    )

    def __init__(self, proto: H2Connection, stream_id: int, started: float) -> None:
        self.proto = proto
        self.stream_id = stream_id
        self.info = proto.info
        self.head: RequestHead | None = None
        self.handler = None
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = started
        self.headers: list | None = None
        self.buf: deque = deque()
        self.buffered = 0
        self.finishing = False
        self.local_done = False
        self.aborted = False
        self.dirty = False
        self.producing_paused = False
        self.reading_paused = False
        self.pending: deque | None = None
        self.unacked = 0
        self.remote_ended = False
        self.remote_done = False
        self.over = False

    # -- Stream contract ------------------------------------------------------------
    def start_response(
        self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None
    ) -> None:
        """Queue the response head; it goes out with the next flush."""
        if self.status or self.over:
            return
        self.status = status
        block = [(b":status", _STATUS.get(status) or str(status).encode())]
        append = block.append
        drop = _RESPONSE_DROP
        for k, v in headers:
            k = k.lower()
            if k in drop:
                continue
            append((k, v))
        if content_length is not None:
            append((b"content-length", str(content_length).encode()))
        self.headers = block
        self._mark()

    def write(self, data: bytes) -> None:
        """Queue part of the response body."""
        if self.over or self.finishing or not data:
            return
        if not self.status:
            raise RuntimeError("write() before start_response()")
        self.buf.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER:
            # A large write: push what the windows allow now, and pause the handler if the
            # rest does not fit.
            proto = self.proto
            proto._push(self, 1 << 62)
            proto._watermarks(self)
            proto._schedule_flush()
        else:
            self._mark()

    def finish(self) -> None:
        """End the response once the queued body has been sent."""
        if self.over or self.finishing:
            return
        if not self.status:
            raise RuntimeError("finish() before start_response()")
        self.finishing = True
        self._mark()

    def abort(self) -> None:
        """Reset the stream (RST_STREAM INTERNAL_ERROR)."""
        if self.over:
            return
        self.aborted = True
        self.proto._reset(self, _INTERNAL_ERROR)

    def pause_reading(self) -> None:
        """Stop delivering request body; hold this stream's WINDOW_UPDATEs."""
        self.reading_paused = True

    def resume_reading(self) -> None:
        """Deliver held request body and release the held WINDOW_UPDATEs."""
        if not self.reading_paused:
            return
        self.reading_paused = False
        if not self.over:
            self.proto._resume_reading(self)

    # -- internals --------------------------------------------------------------------
    def _mark(self) -> None:
        if not self.dirty:
            self.dirty = True
            proto = self.proto
            proto._dirty.append(self)
            if not proto._in_receive and proto._flush_call is None:
                proto._flush_call = proto.clock.callLater(0, proto._flush)

    def _live(self) -> bool:
        return not (self.aborted or self.finishing)


@implementer(IPushProducer)
class H2Connection(Protocol):
    """HTTP/2 server side of one downstream connection."""

    # Rapid Reset (CVE-2023-44487): more than this many client RST_STREAMs within the window
    # gets GOAWAY(ENHANCE_YOUR_CALM).
    rapid_reset_limit = 200
    rapid_reset_window = 10.0

    def __init__(self, dispatcher, info: ConnectionInfo, limits: Limits, clock) -> None:
        self.dispatcher = dispatcher
        self.info = info
        self.limits = limits
        self.clock = clock
        self.conn: h2.connection.H2Connection | None = None
        self._streams: dict[int, H2Stream] = {}
        self._dirty: list[H2Stream] = []
        self._blocked: dict[int, H2Stream] = {}
        self._in_receive = False
        self._flush_call = None
        self._idle_call = None
        self._idle_since = 0.0
        self._transport_paused = False
        self._conn_credit = 0
        self._resets: deque | None = None  # made at the first client reset (memory per idle connection)
        self._shutting_down = False
        self._goaway_last = 0
        self._closing = False
        self._lost = False
        self._closer: Closer | None = None

    # -- Twisted protocol ---------------------------------------------------------------
    def connectionMade(self) -> None:
        no_delay(self.transport)
        limits = self.limits
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # _on_request validates the request block itself (same rules): h2's validation
            # loops over every byte of every header in Python (the largest single cost per
            # request), and turns a malformed request into a connection-wide GOAWAY where
            # a 400 on the stream is enough.
            validate_inbound_headers=False,
            # We join cookie crumbs ourselves (in place, not moved to the end).
            normalize_inbound_headers=False,
            # Our response blocks are built lower-case without connection headers; h2's
            # generator pipeline over them is pure overhead on the hot path.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config=config)
        slim(conn)  # memory per idle connection (h2lean)
        SC = h2.settings.SettingCodes
        # initial_values apply at once (not after the client's ACK) and all go out in the
        # first SETTINGS frame.
        conn.local_settings = LeanSettings(
            client=False,
            initial_values={
                SC.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                SC.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
                SC.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        self._set_decoder_limit(conn)
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.conn = conn
        try:
            self.transport.registerProducer(self, True)
        except RuntimeError:
            pass
        self._idle_since = self.clock.seconds()
        self._idle_call = self.clock.callLater(limits.idle_timeout, self._idle_check)
        self.transport.write(conn.data_to_send())

    def _set_decoder_limit(self, conn) -> None:
        # We advertise max_header_bytes, but let h2 decode up to twice that so an oversized
        # request gets a 431 on its stream rather than a connection-killing GOAWAY.
        conn.decoder.max_header_list_size = 2 * self.limits.max_header_bytes + 4096

    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._lost:
            return
        self._in_receive = True
        try:
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                # h2 has queued a GOAWAY with the right error code.
                log.debug("h2 protocol error from {client}: {error}", client=self.info.client_host, error=e)
                self._close()
                # Stop reading (and decrypting) whatever the peer keeps sending; the closer aborts.
                try:
                    self.transport.pauseProducing()
                except Exception:
                    pass
                return
            table = _DISPATCH
            for ev in events:
                fn = table.get(ev.__class__)
                if fn is not None:
                    fn(self, ev)
                if self._closing:
                    return
            if self._conn_credit:
                credit, self._conn_credit = self._conn_credit, 0
                self.conn.increment_flow_control_window(credit)
        finally:
            self._in_receive = False
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

    # -- IPushProducer (the TLS transport's buffer) -----------------------------------
    def pauseProducing(self) -> None:
        if self._transport_paused:
            return
        self._transport_paused = True
        for s in list(self._streams.values()):
            if not s.producing_paused and not s.over and s.handler is not None:
                s.producing_paused = True
                self._call(s, s.handler.pause_producing)

    def resumeProducing(self) -> None:
        if not self._transport_paused:
            return
        self._transport_paused = False
        for s in list(self._streams.values()):
            if s.producing_paused and not s.over and s.buffered <= LOW_WATER:
                s.producing_paused = False
                self._call(s, s.handler.resume_producing)
        self._schedule_flush()

    def stopProducing(self) -> None:
        # connectionLost follows and tells every stream.
        pass

    # -- public ---------------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful shutdown: GOAWAY(last stream id), refuse new streams, close when idle."""
        if self._shutting_down or self._closing or self.conn is None:
            return
        self._shutting_down = True
        conn = self.conn
        self._goaway_last = conn.highest_inbound_stream_id
        # Not conn.close_connection(): h2 moves its state machine to CLOSED on any GOAWAY
        # it sends, after which the streams still running could not send a single frame.
        frame = GoAwayFrame(0, last_stream_id=self._goaway_last, error_code=0)
        self.transport.write(conn.data_to_send() + frame.serialize())
        if not self._streams:
            self._close()

    @property
    def open_streams(self) -> int:
        """Number of streams still running."""
        return len(self._streams)

    # -- events ---------------------------------------------------------------------
    def _on_request(self, ev) -> None:
        sid = ev.stream_id
        conn = self.conn
        if self._shutting_down and sid > self._goaway_last:
            conn.reset_stream(sid, _REFUSED_STREAM)
            return
        now = self.clock.seconds()
        s = H2Stream(self, sid, now)
        self._streams[sid] = s
        method = path = authority = host = cl = scheme = None
        headers = []
        append = headers.append
        size = 0
        cookies = None
        cookie_at = 0
        bad = None
        regular = False
        # RFC 9113 8.2/8.3 checks, done here in one pass with C-speed byte operations rather
        # than by h2's per-byte generator pipeline (see connectionMade).
        for h in ev.headers:
            n, v = h
            size += len(n) + len(v) + 32
            if v and (v[0] in _WS or v[-1] in _WS or b"\r" in v or b"\n" in v or b"\x00" in v):
                bad = "invalid header value"
            if not n:
                bad = "empty header name"
            elif n[0] == 58:  # b":"
                if regular:
                    bad = "pseudo-header after regular header"
                if n == b":method":
                    if method is not None:
                        bad = "duplicate :method"
                    method = v
                elif n == b":path":
                    if path is not None:
                        bad = "duplicate :path"
                    path = v
                elif n == b":authority":
                    if authority is not None:
                        bad = "duplicate :authority"
                    authority = v
                elif n == b":scheme":
                    if scheme is not None:
                        bad = "duplicate :scheme"
                    scheme = v
                else:
                    bad = "unsupported pseudo-header"
            else:
                regular = True
                if n.translate(None, _NAME_OK):
                    bad = "invalid header name"
                elif n == b"cookie":
                    if cookies is None:
                        cookies = [v]
                        cookie_at = len(headers)
                        append(h)
                    else:
                        cookies.append(v)
                    continue
                elif n in _CONNECTION_SPECIFIC:
                    bad = "connection-specific header"
                elif n == b"content-length":
                    if cl is not None and cl != v:
                        bad = "conflicting content-length headers"
                    cl = v
                elif n == b"host":
                    if host is not None:
                        bad = "duplicate host header"
                    host = v
                elif n == b"te" and v.lower() != b"trailers":
                    bad = "invalid te header"
                append(h)
        if cookies is not None and len(cookies) > 1:
            headers[cookie_at] = (b"cookie", b"; ".join(cookies))
        has_body = not ev.stream_ended
        if ev.stream_ended:
            s.remote_ended = True
        if size > self.limits.max_header_bytes:
            return self._reject(s, None, 431, "headers_too_large", "request header list too large")
        if method is None:
            return self._reject(s, None, 400, "bad_request", "missing :method")
        if method == b"CONNECT":
            return self._reject(s, None, 400, "bad_request", "CONNECT is not supported")
        if scheme is None:
            bad = bad or "missing :scheme"
        if not path or not (path[0] == 47 or (path == b"*" and method == b"OPTIONS")):
            return self._reject(s, None, 400, "bad_request", "missing or invalid :path")
        if authority is None:
            authority = host
            if authority is None:
                bad = bad or "missing :authority and host"
                authority = b""
        elif host is not None and host != authority:
            bad = bad or ":authority and host differ"
        content_length = None
        if cl is not None:
            # h2 has already checked it is all digits.
            content_length = int(cl)
        head = RequestHead(method, path, authority, headers, content_length, has_body, b"2")
        s.head = head
        if bad is not None:
            return self._reject(s, head, 400, "bad_request", bad)
        try:
            s.handler = self.dispatcher.dispatch(s, head)
        except Exception:
            log.failure("dispatch failed")
            s.handler = _REJECTED
            self._handler_failed(s)
            return
        if s.buffered > HIGH_WATER and not s.over:
            # It wrote during dispatch(), before we knew it: apply the watermarks now.
            self._watermarks(s)

    def _reject(self, s: H2Stream, head, status: int, code: str, message: str) -> None:
        s.head = head
        s.handler = _REJECTED
        send_error(s, status, code, message)

    def _on_data(self, ev) -> None:
        sid = ev.stream_id
        fcl = ev.flow_controlled_length
        s = self._streams.get(sid)
        if s is None or s.handler is _REJECTED or not s._live():
            # Nobody wants it: hand the window straight back.
            if fcl:
                self.conn.acknowledge_received_data(fcl, sid)
            if s is not None:
                s.bytes_in += len(ev.data)
            return
        data = ev.data
        s.bytes_in += len(data)
        if s.reading_paused or s.pending:
            if s.pending is None:
                s.pending = deque()
            s.pending.append(data)
            s.unacked += fcl
            self._conn_credit += fcl
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
            self._conn_credit += fcl
        else:
            self.conn.acknowledge_received_data(fcl, sid)

    def _on_stream_ended(self, ev) -> None:
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

    def _on_stream_reset(self, ev) -> None:
        if ev.remote_reset:
            now = self.clock.seconds()
            resets = self._resets
            if resets is None:
                resets = self._resets = deque(maxlen=self.rapid_reset_limit)
            if len(resets) == resets.maxlen and now - resets[0] < self.rapid_reset_window:
                log.info(
                    "h2 rapid reset from {client}: GOAWAY", client=self.info.client_host,
                    reason="h2_rapid_reset",
                )
                self._goaway(ErrorCodes.ENHANCE_YOUR_CALM)
                return
            resets.append(now)
        s = self._streams.get(ev.stream_id)
        if s is None or s.over:
            return
        s.local_done = True
        self._end_stream(s, StreamLost("stream_reset", ev.error_code))

    def _on_window_opened(self, ev) -> None:
        # WINDOW_UPDATE, or SETTINGS (a new initial window or frame size): blocked streams may go on.
        if self._blocked:
            self._drain_blocked()

    def _on_settings_acked(self, ev) -> None:
        # h2 resets the decoder limit to the advertised value on ACK; put our margin back.
        self._set_decoder_limit(self.conn)

    def _on_terminated(self, ev) -> None:
        # The client sent GOAWAY.  h2 4.4.1 refuses to send anything once it has received
        # one, so the streams in flight cannot complete: close and report them lost.
        self._close()

    # -- request body backpressure --------------------------------------------------------
    def _resume_reading(self, s: H2Stream) -> None:
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
            # The connection-level share was credited on arrival: this restores the stream's.
            n, s.unacked = s.unacked, 0
            self.conn.acknowledge_received_data(n, s.stream_id)
            self._schedule_flush()
        if s.remote_ended and not pending and not s.remote_done:
            self._body_done(s)

    # -- response output ---------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._in_receive and self._flush_call is None and not self._lost:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """Push every dirty stream into h2 and hand all pending frames to the transport."""
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
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def _push(self, s: H2Stream, budget: int) -> None:
        """Send this stream's head and up to ``budget`` bytes (0: one frame) of its body."""
        conn = self.conn
        sid = s.stream_id
        try:
            if s.headers is not None:
                block, s.headers = s.headers, None
                end = s.finishing and not s.buf
                conn.send_headers(sid, block, end_stream=end)
                if end:
                    self._local_done(s)
                    return
            if s.buf:
                self._send_some(s, budget or conn.max_outbound_frame_size)
            elif s.finishing and not s.local_done:
                conn.end_stream(sid)
                self._local_done(s)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._stream_gone(s)

    def _stream_gone(self, s: H2Stream) -> None:
        """h2 refused to send on the stream: the client reset it (or the connection is closing)."""
        if not s.over:
            s.local_done = True
            self._end_stream(s, StreamLost("stream_reset") if s._live() else None)

    def _send_some(self, s: H2Stream, budget: int) -> bool:
        """Send up to ``budget`` bytes of queued body; returns whether anything went out."""
        conn = self.conn
        sid = s.stream_id
        window = conn.local_flow_control_window(sid)
        if window <= 0:
            self._blocked[sid] = s
            return False
        maxf = conn.max_outbound_frame_size
        buf = s.buf
        sent = False
        while buf and window > 0 and budget > 0:
            limit = min(window, maxf, budget)
            chunk = buf[0]
            n = len(chunk)
            if n > limit:
                if not isinstance(chunk, memoryview):
                    chunk = memoryview(chunk)
                piece = chunk[:limit]
                buf[0] = chunk[limit:]
                size = limit
            else:
                buf.popleft()
                size = n
                if buf and size < limit and len(buf[0]) <= limit - size:
                    # Coalesce small writes into one frame.
                    parts = [chunk]
                    while buf and len(buf[0]) <= limit - size:
                        c = buf.popleft()
                        parts.append(c)
                        size += len(c)
                    piece = b"".join(parts)
                else:
                    piece = chunk
            s.buffered -= size
            window -= size
            budget -= size
            s.bytes_out += size
            end = s.finishing and not buf
            conn.send_data(sid, piece, end_stream=end)
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
                conn.end_stream(sid)
                self._local_done(s)
        return sent

    def _drain_blocked(self) -> None:
        """Share the windows between blocked streams, one frame each per round."""
        conn = self.conn
        while self._blocked and conn.outbound_flow_control_window > 0:
            progress = False
            frame = conn.max_outbound_frame_size
            for s in list(self._blocked.values()):
                if s.over:
                    self._blocked.pop(s.stream_id, None)
                    continue
                try:
                    if self._send_some(s, frame):
                        progress = True
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    self._blocked.pop(s.stream_id, None)
                    self._stream_gone(s)
                    continue
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
            self._reset(s, ErrorCodes.NO_ERROR)

    # -- stream teardown ----------------------------------------------------------------
    def _reset(self, s: H2Stream, code) -> None:
        s.local_done = True
        try:
            self.conn.reset_stream(s.stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        if s.unacked:
            # Already credited to the connection; the stream is gone.
            s.unacked = 0
        self._end_stream(s, None)
        self._schedule_flush()

    def _handler_failed(self, s: H2Stream) -> None:
        if s.over:
            return
        if not s.status:
            s.handler = _REJECTED
            send_error(s, 500, "internal_error", "internal error")
        else:
            s.aborted = True
            self._reset(s, _INTERNAL_ERROR)

    def _end_stream(self, s: H2Stream, lost) -> None:
        """The stream is over: tell a live handler it was lost, log it, forget it."""
        if s.over:
            return
        s.over = True
        sid = s.stream_id
        streams = self._streams
        if streams.pop(sid, None) is not None and not streams:
            if self.conn is not None:
                self.conn.open_inbound_streams  # noqa: B018 - h2 forgets its closed streams when counting
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
        ended = self.clock.seconds()
        try:
            self.dispatcher.log_request(
                self.info, s.head, s.status, s.bytes_in, s.bytes_out,
                None if handler is _REJECTED else handler, s.started, ended,
            )
        except Exception:
            log.failure("log_request failed")
        if self._shutting_down and not streams and not self._closing:
            self._close()

    def _call(self, s: H2Stream, fn) -> None:
        try:
            fn()
        except Exception:
            log.failure("handler callback failed")
            self._handler_failed(s)

    # -- connection teardown --------------------------------------------------------------
    def _idle_check(self) -> None:
        self._idle_call = None
        if self._closing or self._streams:
            return  # re-armed when the last stream ends
        remaining = self._idle_since + self.limits.idle_timeout - self.clock.seconds()
        if remaining > 0:
            self._idle_call = self.clock.callLater(remaining, self._idle_check)
            return
        self._goaway(ErrorCodes.NO_ERROR)

    def _goaway(self, code) -> None:
        if self._closing:
            return
        try:
            self.conn.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            pass
        self._close()

    def _cancel_timers(self) -> None:
        for call in (self._flush_call, self._idle_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._idle_call = None

    def _close(self) -> None:
        """Send what h2 has queued (GOAWAY included) and close the transport."""
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


# Event class -> handler, shared by every connection (not a dict of bound methods per connection).
_DISPATCH = {
    h2.events.RequestReceived: H2Connection._on_request,
    h2.events.DataReceived: H2Connection._on_data,
    h2.events.StreamEnded: H2Connection._on_stream_ended,
    h2.events.StreamReset: H2Connection._on_stream_reset,
    h2.events.WindowUpdated: H2Connection._on_window_opened,
    h2.events.RemoteSettingsChanged: H2Connection._on_window_opened,
    h2.events.SettingsAcknowledged: H2Connection._on_settings_acked,
    h2.events.ConnectionTerminated: H2Connection._on_terminated,
}
