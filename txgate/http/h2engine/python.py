# -*- test-case-name: tests.test_h2engine_unit -*-
"""The hyper-h2 HTTP/2 engine: the pure-Python implementation of `H2Engine`, and the reference the
native engine is tested against."""
from __future__ import annotations

import logging

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack
from h2.connection import ConnectionState
from h2.stream import StreamState
from hyperframe.frame import GoAwayFrame

from txgate.http.h2engine.base import (
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
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
from txgate.http.h2lean import LeanSettings, slim


# hpack calls log.debug() per header field coded; a disabled logger makes each a cheap no-op.
_hpack_log = logging.getLogger("txgate.h2engine.hpack")
_hpack_log.disabled = True
hpack.hpack.log = _hpack_log

_SENDING = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
_GONE = (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError)


def _config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        # The protocol validates request blocks itself, the same way for every engine: h2's
        # validation loops over every byte in Python and turns a malformed request into a
        # connection-wide GOAWAY where a 400 on the stream is enough.
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        # Response blocks are built lower-case without connection headers.
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class PythonEngine:
    """`H2Engine` over hyper-h2's `H2Connection`."""

    name = "python"

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings = settings or EngineSettings()
        self._conn = conn = h2.connection.H2Connection(config=_config())
        slim(conn)  # memory per idle connection (h2lean); local settings: a LeanSettings in initiate()
        self._out: list[bytes] = []
        self._over = False
        self._refuse_above: int | None = None
        self._refused: set[int] = set()
        self._open: set[int] = set()      # accepted streams, pruned against h2's states when full
        self._refused_total = 0
        self._replies = 0                 # PING/SETTINGS ACKs queued since the last data_to_send()
        self._failure: ProtocolFailure | None = None
        self._conn_credit = 0
        self._acks: dict[int, int] = {}
        self._ack_threshold = max(1, settings.initial_window_size // 2)
        self._credit_threshold = max(1, settings.connection_window_size // 2)

    # -- setup -------------------------------------------------------------------------------
    def initiate(self) -> None:
        """Queue SETTINGS (applied at once) and the connection window increment."""
        conn = self._conn
        s = self.settings
        SC = h2.settings.SettingCodes
        conn.local_settings = LeanSettings(
            client=False,
            initial_values={
                SC.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
                SC.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
                SC.INITIAL_WINDOW_SIZE: s.initial_window_size,
            },
        )
        self._set_decoder_limit()
        conn.initiate_connection()
        # Advertised above; h2 itself gets a higher ceiling, since it makes a stream over the limit a
        # connection error: `_on_request` refuses it with RST_STREAM(REFUSED_STREAM) instead.
        conn.local_settings._settings[SC.MAX_CONCURRENT_STREAMS] = (
            s.max_concurrent_streams + s.max_refused_streams + 16)  # LeanSettings: the value itself
        if s.connection_window_size > 65535:
            conn.increment_flow_control_window(s.connection_window_size - 65535)
        # hyper-h2 buffers CONTINUATION frames up to a fixed backlog of 64 (HEADERS included).

    def _set_decoder_limit(self) -> None:
        # h2 puts the advertised value back on every SETTINGS ACK; we decode up to the hard cap.
        self._conn.decoder.max_header_list_size = self.settings.header_decode_limit

    # -- input -------------------------------------------------------------------------------
    def receive(self, data: bytes) -> list[Event]:
        """Feed client bytes; returns the events (see `H2Engine.receive`)."""
        if self._over:
            return []
        try:
            h2_events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._over = True
            code = int(getattr(e, "error_code", PROTOCOL_ERROR))
            if self._conn.state_machine.state is not ConnectionState.CLOSED:
                # A bad preface: h2 raises before queueing its GOAWAY.
                self._queue_goaway(code)
            return [ProtocolFailure(code, str(e) or type(e).__name__)]
        except Exception as e:  # an h2 bug must not leave the connection half-parsed
            self._over = True
            self._queue_goaway(INTERNAL_ERROR)
            return [ProtocolFailure(INTERNAL_ERROR, f"{type(e).__name__}: {e}")]
        out: list[Event] = []
        table = _TABLE
        for ev in h2_events:
            fn = table.get(ev.__class__)
            if fn is not None:
                fn(self, ev, out)
        if self._failure is None and self._replies > self.settings.max_control_replies:
            self._failure = ProtocolFailure(ENHANCE_YOUR_CALM, "too many PING/SETTINGS to acknowledge")
        if self._failure is not None:
            self._over = True
            self._queue_goaway(self._failure.error_code)
            return [self._failure]
        if self._conn_credit >= self._credit_threshold:
            credit, self._conn_credit = self._conn_credit, 0
            self._conn.increment_flow_control_window(credit)
        return out

    def _on_request(self, ev, out: list) -> None:
        sid = ev.stream_id
        if self._refuse_above is not None and sid > self._refuse_above:
            self._refused.add(sid)
            self._conn.reset_stream(sid, REFUSED_STREAM)
            return
        if len(self._open) >= self.settings.max_concurrent_streams:
            streams = self._conn.streams
            self._open = {i for i in self._open if (st := streams.get(i)) is not None and not st.closed}
            if len(self._open) >= self.settings.max_concurrent_streams:
                self._refused.add(sid)
                self._refused_total += 1
                if self._refused_total > self.settings.max_refused_streams:
                    self._failure = ProtocolFailure(ENHANCE_YOUR_CALM, "too many streams over the concurrency limit")
                self._conn.reset_stream(sid, REFUSED_STREAM)
                return
        self._open.add(sid)
        out.append(RequestReceived(sid, ev.headers, ev.stream_ended is not None))

    def _on_data(self, ev, out: list) -> None:
        sid = ev.stream_id
        fcl = ev.flow_controlled_length
        self._conn_credit += fcl
        if sid in self._refused:
            return
        out.append(DataReceived(sid, ev.data, fcl))

    def _on_ended(self, ev, out: list) -> None:
        sid = ev.stream_id
        self._acks.pop(sid, None)
        if sid not in self._refused:
            out.append(StreamEnded(sid))

    def _on_reset(self, ev, out: list) -> None:
        sid = ev.stream_id
        self._acks.pop(sid, None)
        if sid in self._refused:
            self._refused.discard(sid)
            return
        out.append(StreamReset(sid, int(ev.error_code), bool(ev.remote_reset)))

    def _on_window(self, ev, out: list) -> None:
        out.append(WindowOpened(ev.stream_id))

    def _on_settings(self, ev, out: list) -> None:
        self._replies += 1
        out.append(WindowOpened(0))

    def _on_ping(self, ev, out: list) -> None:
        self._replies += 1

    def _on_settings_acked(self, ev, out: list) -> None:
        self._set_decoder_limit()

    def _on_goaway(self, ev, out: list) -> None:
        # h2 refuses to send anything once it has received GOAWAY.
        self._over = True
        out.append(GoAwayReceived(int(ev.error_code), ev.last_stream_id or 0))

    # -- output ------------------------------------------------------------------------------
    def send_headers(self, stream_id: int, headers: list[Header], end_stream: bool = False) -> bool:
        """Queue the response head; False when the stream is gone."""
        try:
            self._conn.send_headers(stream_id, headers, end_stream=end_stream)
        except _GONE:
            return False
        return True

    def send_window(self, stream_id: int) -> int:
        """Bytes `send_data` may take now."""
        stream = self._conn.streams.get(stream_id)
        if stream is None or stream.state_machine.state not in _SENDING:
            return 0
        try:
            return max(0, self._conn.local_flow_control_window(stream_id))
        except _GONE:
            return 0

    @property
    def max_frame_size(self) -> int:
        return self._conn.max_outbound_frame_size

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Queue body bytes within the window, split into frames; False when the stream is gone."""
        conn = self._conn
        n = len(data)
        try:
            if not n:
                if end_stream:
                    conn.end_stream(stream_id)
                return True
            if n > conn.local_flow_control_window(stream_id):
                raise ValueError(f"send_data: {n} bytes exceed the send window of stream {stream_id}")
            maxf = conn.max_outbound_frame_size
            if n <= maxf:
                conn.send_data(stream_id, data, end_stream=end_stream)
                return True
            view = memoryview(data)
            for start in range(0, n, maxf):
                piece = view[start:start + maxf]
                conn.send_data(stream_id, piece, end_stream=end_stream and start + maxf >= n)
        except _GONE:
            return False
        return True

    def send_trailers(self, stream_id: int, headers: list[Header]) -> bool:
        """Queue trailers (they end the stream); False when the stream is gone."""
        return self.send_headers(stream_id, headers, end_stream=True)

    def reset(self, stream_id: int, error_code: int) -> None:
        """Queue RST_STREAM."""
        self._acks.pop(stream_id, None)
        try:
            self._conn.reset_stream(stream_id, error_code)
        except _GONE:
            pass

    def acknowledge(self, stream_id: int, n: int) -> None:
        """Reopen the stream's receive window by ``n`` (sent once half a window has gathered)."""
        if n <= 0:
            return
        acks = self._acks
        total = acks.get(stream_id, 0) + n
        if total < self._ack_threshold:
            acks[stream_id] = total
            return
        acks.pop(stream_id, None)
        try:
            self._conn.increment_flow_control_window(total, stream_id=stream_id)
        except (_GONE + (h2.exceptions.FlowControlError,)):
            pass

    def goaway(self, error_code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """Queue GOAWAY; streams up to ``last_stream_id`` may go on (not h2's close_connection(),
        after which h2 would not send another frame on any stream)."""
        if last_stream_id is None:
            last_stream_id = self.highest_stream_id
        if self._refuse_above is None or last_stream_id < self._refuse_above:
            self._refuse_above = last_stream_id
        self._queue_goaway(error_code, last_stream_id)
        if error_code != NO_ERROR:
            self._over = True

    def _queue_goaway(self, error_code: int, last_stream_id: int | None = None) -> None:
        if last_stream_id is None:
            last_stream_id = self.highest_stream_id
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code)
        self._out.append(self._conn.data_to_send())
        self._out.append(frame.serialize())

    @property
    def highest_stream_id(self) -> int:
        return self._conn.highest_inbound_stream_id

    def data_to_send(self) -> bytes:
        """Every byte queued so far."""
        data = self._conn.data_to_send()
        self._replies = 0
        if self._out:
            self._out.append(data)
            data = b"".join(self._out)
            self._out = []
        return data

    def idle(self) -> None:
        """No stream left at the protocol: h2 forgets its closed streams when it counts open ones."""
        self._conn.open_inbound_streams  # noqa: B018

    def close(self) -> None:
        """Nothing to free (symmetry with the native engine)."""


# hyper-h2 event class -> handler, shared by every engine (not a dict of bound methods per connection).
_TABLE = {
    h2.events.RequestReceived: PythonEngine._on_request,
    h2.events.DataReceived: PythonEngine._on_data,
    h2.events.StreamEnded: PythonEngine._on_ended,
    h2.events.StreamReset: PythonEngine._on_reset,
    h2.events.WindowUpdated: PythonEngine._on_window,
    h2.events.RemoteSettingsChanged: PythonEngine._on_settings,
    h2.events.SettingsAcknowledged: PythonEngine._on_settings_acked,
    h2.events.ConnectionTerminated: PythonEngine._on_goaway,
    h2.events.PingReceived: PythonEngine._on_ping,
}
