# -*- test-case-name: tests.test_h2_limits_unit -*-
"""Where a client's HTTP/2 byte stream stands for `header_timeout`: in its preface, inside a request
head (HEADERS + CONTINUATION), or between heads. A frame-boundary walk over the bytes (no decoding),
the same for every engine: the engines hide partial frames and open header blocks."""
from __future__ import annotations

_MAGIC = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS = 0x1
_CONTINUATION = 0x9
_END_HEADERS = 0x4
_SETTINGS = 0x4
_ACK = 0x1


class HeadClock:
    """Feed it every byte the client sends; `pending` is True while the preface or a request head
    is incomplete, and `heads` counts the heads begun (a new one restarts the timer)."""

    __slots__ = ("_magic", "_hdr", "_left", "_in_head", "_block_open", "_first", "_first_done", "heads")

    def __init__(self) -> None:
        self._magic = _MAGIC       # preface bytes still expected
        self._hdr = b""            # a partial 9-byte frame header
        self._left = 0             # payload bytes left in the current frame
        self._in_head = False      # the current frame is HEADERS or CONTINUATION
        self._block_open = False   # a header block waits for CONTINUATION (no END_HEADERS yet)
        self._first = None         # the first frame is SETTINGS without ACK (None: not seen yet)
        self._first_done = False   # ... and it is complete: the preface is over
        self.heads = 1             # the preface counts as the first head

    @property
    def pending(self) -> bool:
        """The preface or a request head is incomplete (a frame header cut short counts too)."""
        return (not self._first_done or self._block_open or bool(self._hdr)
                or (self._in_head and self._left > 0))

    def feed(self, data: bytes) -> None:
        """Walk the frame boundaries in ``data``."""
        pos = 0
        n = len(data)
        if self._magic:
            take = min(self._magic, n)
            self._magic -= take
            pos = take
        left = self._left
        while pos < n:
            if left:
                step = min(left, n - pos)
                left -= step
                pos += step
                if left:
                    break
                self._first_done = self._first
                continue
            hdr = self._hdr
            if hdr or n - pos < 9:
                need = 9 - len(hdr)
                hdr += data[pos:pos + need]
                pos += min(need, n - pos)
                if len(hdr) < 9:
                    self._hdr = hdr
                    break
                self._hdr = b""
            else:
                hdr = data[pos:pos + 9]
                pos += 9
            left = (hdr[0] << 16) | (hdr[1] << 8) | hdr[2]
            kind = hdr[3]
            if self._first is None:
                # A preface whose first frame is not a SETTINGS frame never completes.
                self._first = kind == _SETTINGS and not hdr[4] & _ACK
            if kind == _HEADERS or kind == _CONTINUATION:
                if kind == _HEADERS and not self._block_open:
                    self.heads += 1
                self._in_head = True
                self._block_open = not hdr[4] & _END_HEADERS
            else:
                self._in_head = False
                self._block_open = False
            if not left:
                self._first_done = self._first
        self._left = left
