# -*- test-case-name: tests.test_h2_unit -*-
"""One HTTP/2 stream's state: the `Stream` a handler answers through, its queued response body and
its held request body. No I/O: the connection (`StreamOwner`) sends and reads for it."""
from __future__ import annotations

from collections import deque
from typing import Protocol

from txgate.http.errors import stream_request_id
from txgate.http.exchange import StreamRecord
from txgate.http.headers import H2_RESPONSE_DROP

HIGH_WATER = 64 * 1024           # per-stream queued response bytes before pause_producing()
LOW_WATER = 16 * 1024            # ... and before resume_producing()

_STATUS = {n: str(n).encode() for n in range(100, 600)}


class StreamLost(Exception):
    """The stream ended before the response did (client reset or connection lost)."""

    def __init__(self, code: str, error_code: int = 0) -> None:
        super().__init__(code)
        self.code = code
        self.error_code = error_code


class StreamOwner(Protocol):
    """What an `H2Stream` needs of its connection."""

    def stream_changed(self, s: H2Stream) -> None:
        """The stream has a head, body or end to send: flush it soon (once per burst)."""

    def send_now(self, s: H2Stream) -> None:
        """A large write: send what the windows allow now and apply the watermarks."""

    def abort_stream(self, s: H2Stream) -> None:
        """Reset the stream (RST_STREAM INTERNAL_ERROR)."""

    def resume_stream_reading(self, s: H2Stream) -> None:
        """Deliver the stream's held request body and release its held WINDOW_UPDATEs."""


class H2Stream(StreamRecord):
    """One request/response exchange on an HTTP/2 connection (implements `Stream`)."""

    __slots__ = (
        "proto",
        "stream_id",
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

    def __init__(self, proto, stream_id: int, started: float) -> None:
        super().__init__(proto.info, None, started)
        self.proto: StreamOwner = proto
        self.stream_id = stream_id
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
        drop = H2_RESPONSE_DROP
        for k, v in headers:
            k = k.lower()
            if k in drop:
                continue
            append((k, v))
        if content_length is not None:
            append((b"content-length", str(content_length).encode()))
        head = self.head
        append((b"x-request-id", (head.request_id if head is not None else b"") or stream_request_id(self)))
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
            self.proto.send_now(self)
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
        self.proto.abort_stream(self)

    def pause_reading(self) -> None:
        """Stop delivering request body; hold this stream's WINDOW_UPDATEs."""
        self.reading_paused = True

    def resume_reading(self) -> None:
        """Deliver held request body and release the held WINDOW_UPDATEs."""
        if not self.reading_paused:
            return
        self.reading_paused = False
        if not self.over:
            self.proto.resume_stream_reading(self)

    # -- bookkeeping for the connection ---------------------------------------------------
    def take(self, limit: int):
        """Up to ``limit`` bytes from the front of the queued body, as one frame's payload: a large
        chunk is sliced (a memoryview, no copy), small ones are coalesced."""
        buf = self.buf
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
        self.buffered -= size
        self.bytes_out += size
        return piece

    def _mark(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.proto.stream_changed(self)

    def _live(self) -> bool:
        return not (self.aborted or self.finishing)
