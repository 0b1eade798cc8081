# -*- test-case-name: tests.test_h2_unit -*-
"""The downstream HTTP/2 server protocol: hyper-h2 driven directly, one object per stream.

Output is batched: frames accumulate inside the h2 connection object and are handed to the
TLS transport once per ``dataReceived`` and once per burst of handler calls (a single
``callLater(0)``), never once per frame.  Response bodies are queued per stream and sent
within the flow-control windows, round-robin between streams, so a slow stream never
stalls the others.  Request bodies are acknowledged (WINDOW_UPDATE) only while the
handler is reading, so a paused handler closes its own stream's window, not the
connection's.

Request-head rules live in `txgate.http.requests`, error responses in `txgate.errors`, the
per-stream state in `txgate.http.h2stream`; what is left here is the hyper-h2 driving (events,
flow control, flushing, teardown). It is still over 600 lines because that driving is one piece
until the sans-IO engine interface (issue 10) splits it into an engine (hyper-h2 or nghttp2) and
this thin protocol.
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
from txgate.errors import GatewayError, InternalError
from txgate.http.closing import Closer
from txgate.http.errors import send_gateway_error
from txgate.http.exchange import ConnectionInfo, Limits, NullHandler, RequestHead
from txgate.http.h2lean import LeanSettings, slim
from txgate.http.h2stream import HIGH_WATER, LOW_WATER, H2Stream, StreamLost
from txgate.http.requests import dispatch_request, h2_request_head


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

STREAM_WINDOW = 1 << 20          # per-stream receive window we advertise (request bodies)
CONNECTION_WINDOW = 16 << 20     # connection receive window

_INTERNAL_ERROR = ErrorCodes.INTERNAL_ERROR
_REFUSED_STREAM = ErrorCodes.REFUSED_STREAM


# The handler of a stream we answered ourselves (malformed request): discards the body.
_REJECTED = NullHandler()


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
        self._dispatch_table = {
            h2.events.RequestReceived: self._on_request,
            h2.events.DataReceived: self._on_data,
            h2.events.StreamEnded: self._on_stream_ended,
            h2.events.StreamReset: self._on_stream_reset,
            h2.events.WindowUpdated: self._on_window_opened,
            h2.events.RemoteSettingsChanged: self._on_window_opened,
            h2.events.SettingsAcknowledged: self._on_settings_acked,
            h2.events.ConnectionTerminated: self._on_terminated,
        }

    # -- Twisted protocol ---------------------------------------------------------------
    def connectionMade(self) -> None:
        no_delay(self.transport)
        limits = self.limits
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # requests.h2_request_head validates the request block (same rules): h2's validation
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
            table = self._dispatch_table
            for ev in events:
                fn = table.get(ev.__class__)
                if fn is not None:
                    fn(ev)
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
        self._reset(s, _INTERNAL_ERROR)

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
        if ev.stream_ended:
            s.remote_ended = True
        head, refusal = h2_request_head(ev.headers, not ev.stream_ended, self.limits.max_header_bytes)
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
            piece = s.take(min(window, maxf, budget))
            size = len(piece)
            window -= size
            budget -= size
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
            send_gateway_error(s, InternalError(), detail=getattr(self.dispatcher, "error_detail", False))
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
        s.report(self.dispatcher, self.clock.seconds(), None if handler is _REJECTED else handler)
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
