# -*- test-case-name: tests.test_h2engine_unit -*-
"""The sans-IO HTTP/2 server engine interface: settings, events, error codes and the engine contract.

An engine owns the HTTP/2 framing of one downstream connection and nothing else: bytes in ->
events out; response heads, body chunks, trailers, resets and GOAWAY in -> bytes out. It never
validates request heads (the protocol does, the same way for every engine), never buffers a
response body beyond the flow-control window it was told about, and never does I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

# RFC 9113 section 7 error codes.
NO_ERROR = 0
PROTOCOL_ERROR = 1
INTERNAL_ERROR = 2
FLOW_CONTROL_ERROR = 3
STREAM_CLOSED = 5
FRAME_SIZE_ERROR = 6
REFUSED_STREAM = 7
CANCEL = 8
COMPRESSION_ERROR = 9
ENHANCE_YOUR_CALM = 11

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What an engine advertises and enforces (from the listener's `Limits`)."""

    max_concurrent_streams: int = 100
    # Advertised SETTINGS_MAX_HEADER_LIST_SIZE; the protocol answers a larger request with a 431.
    max_header_list_size: int = 65536
    # Per-stream and connection receive windows (request bodies).
    initial_window_size: int = 1 << 20
    connection_window_size: int = 16 << 20
    # CONTINUATION frames accepted after one HEADERS before the connection is failed (hyper-h2: 64).
    max_continuations: int = 63
    # PING and SETTINGS acknowledgements queued but not yet handed out by `data_to_send()` (a
    # peer that does not read is not read either, so they stay queued): beyond, GOAWAY(ENHANCE_YOUR_CALM).
    max_control_replies: int = 1000
    # Streams opened beyond max_concurrent_streams get RST_STREAM(REFUSED_STREAM); after this many
    # in one connection, GOAWAY(ENHANCE_YOUR_CALM).
    max_refused_streams: int = 100

    @property
    def header_decode_limit(self) -> int:
        """Hard cap on a decoded header list (HPACK-counted): beyond it, GOAWAY(ENHANCE_YOUR_CALM).

        Twice the advertised size plus slack, so that a request somewhat over the advertised size
        still decodes and gets its 431 on its own stream."""
        return 2 * self.max_header_list_size + 4096


# -- events ----------------------------------------------------------------------------------

@dataclass(slots=True)
class RequestReceived:
    """A request header block, raw: lower/upper case, order, pseudo-headers and duplicates as sent.

    ``end_stream``: the HEADERS frame carried END_STREAM (no body); a StreamEnded follows."""

    stream_id: int
    headers: list[Header]
    end_stream: bool


@dataclass(slots=True)
class DataReceived:
    """A piece of request body. ``flow_len`` is what the protocol must `acknowledge()` once the
    body has been consumed (it may include padding, and it may differ from ``len(data)``)."""

    stream_id: int
    data: bytes
    flow_len: int


@dataclass(slots=True)
class StreamEnded:
    """The client ended its side of the stream (END_STREAM, on HEADERS, DATA or trailers)."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The stream is gone: ``remote`` = the client sent RST_STREAM(error_code) (count it for the
    rapid-reset limit); otherwise the engine reset it itself on a stream-level protocol error."""

    stream_id: int
    error_code: int
    remote: bool = True


@dataclass(slots=True)
class WindowOpened:
    """Send windows may have grown: WINDOW_UPDATE on ``stream_id`` (0: the connection) or a
    SETTINGS frame (initial window, frame size). Blocked streams should try `send_window()` again."""

    stream_id: int


@dataclass(slots=True)
class GoAwayReceived:
    """The client sent GOAWAY."""

    error_code: int
    last_stream_id: int


@dataclass(slots=True)
class ProtocolFailure:
    """A connection error: the engine has queued GOAWAY(error_code) and is finished. Always the only
    event of its `receive()` call (events decoded earlier in the same call are dropped, as hyper-h2
    does). The protocol sends `data_to_send()` and closes."""

    error_code: int
    reason: str


Event = Union[RequestReceived, DataReceived, StreamEnded, StreamReset, WindowOpened, GoAwayReceived,
              ProtocolFailure]


class H2Engine(Protocol):
    """One server-side HTTP/2 connection's framing. All stream ids are client (odd) stream ids.

    Flow control: the engine credits the connection receive window as DATA arrives (one slow stream
    never stalls the connection); a stream's receive window reopens only through `acknowledge()`.
    Sending: `send_data()` never takes more than `send_window()`; when that is 0 the stream is
    blocked until a `WindowOpened` event. After `goaway()`, new streams above its last stream id are
    refused with RST_STREAM(REFUSED_STREAM) by the engine and never reported; so is a stream opened
    while ``max_concurrent_streams`` are open (a stream error, not a connection error)."""

    name: str

    def initiate(self) -> None:
        """Queue the server preface (SETTINGS, connection window); call once before anything else."""

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; returns the events they caused, in order. Never raises on
        client misbehaviour: a connection error is a `ProtocolFailure` event."""

    def send_headers(self, stream_id: int, headers: list[Header], end_stream: bool = False) -> bool:
        """Queue the response head (``:status`` first, lower-case names, no connection headers).
        False: the stream is gone (reset, closed, connection over); nothing was queued."""

    def send_window(self, stream_id: int) -> int:
        """Bytes of body that `send_data()` may take now on this stream (0 when blocked or gone)."""

    @property
    def max_frame_size(self) -> int:
        """The client's SETTINGS_MAX_FRAME_SIZE (the engine splits larger chunks itself)."""

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Queue body bytes, at most `send_window()` of them (ValueError beyond). ``end_stream`` with
        empty data ends the stream. False: the stream is gone."""

    def send_trailers(self, stream_id: int, headers: list[Header]) -> bool:
        """Queue trailers; they end the stream. False: the stream is gone."""

    def reset(self, stream_id: int, error_code: int) -> None:
        """Queue RST_STREAM; no event follows for this stream. A no-op on a stream already gone."""

    def acknowledge(self, stream_id: int, n: int) -> None:
        """The protocol consumed ``n`` flow-controlled bytes of this stream: reopen its window."""

    def goaway(self, error_code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """Queue GOAWAY (last stream id: the highest seen unless given). Streams up to it may still
        send; with an error code the engine is finished and `receive()` returns nothing more."""

    @property
    def highest_stream_id(self) -> int:
        """The highest client stream id seen so far."""

    def data_to_send(self) -> bytes:
        """Every byte queued so far (frames are serialized here); b"" when there is nothing."""

    def idle(self) -> None:
        """The protocol has no stream left: drop what is kept for closed streams (memory per idle connection)."""

    def close(self) -> None:
        """The connection is gone: free what the engine holds."""


def encode_goaway(last_stream_id: int, error_code: int) -> bytes:
    """A GOAWAY frame on the wire (for the rare case an engine cannot queue one itself)."""
    payload = (last_stream_id & 0x7FFFFFFF).to_bytes(4, "big") + error_code.to_bytes(4, "big")
    return len(payload).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00" + payload
