# -*- test-case-name: tests.test_upstream_framing_unit -*-
"""One persistent HTTP/1.1 connection to an upstream target (plain or TLS).

Its framing rules: a response head is bounded (`max_response_header_bytes`); a response ends where
its Content-Length or last chunk says, or with a clean close of the connection when it has neither
(RFC 9112 6.3); a connection that ends anywhere else cuts the response short (`upstream_truncated`);
bytes after a complete response, before the next request, mean the connection is out of step and it
is never reused.
"""
from __future__ import annotations

import httptools
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txgate.errors import UpstreamHeadersTooLarge, UpstreamProtocolError, UpstreamTruncated
from txgate.http.closing import abort_connection
from txgate.http.headers import LOWER_NAMES, field_bytes
from txgate.directwrite import no_delay
from txgate.tls.serverconn import hold_writes, release_writes

log = Logger()


class _Stop(Exception):
    """Raised in a parser callback to stop parsing; carries the error to report (or None)."""

    def __init__(self, error=None) -> None:
        super().__init__()
        self.error = error


@implementer(IHandshakeListener)
class UpstreamConnection(Protocol):
    """Carries one exchange at a time; returns itself to its pool when the exchange is clean."""

    def __init__(self, pool, tls: bool) -> None:
        self.pool = pool
        self.tls = tls
        self.parser = httptools.HttpResponseParser(self)
        self.exchange = None
        self.ready = False
        self.lost = False
        self.response_started = False
        self.request_done = False
        self.response_done = False
        self.delimited_by_close = False
        self.no_reuse = False
        self._headers: list[tuple[bytes, bytes]] = []
        self.idle_since = 0.0
        self.checked_out = False
        self.handshake_timed_out = False
        self.handshake_timer = None
        self.read_paused = False
        self.max_head = getattr(pool, "max_response_header_bytes", 65536)
        # When the read being parsed came (one clock read per read): the exchange's progress and
        # response times, and the pool's idle mark when the response ends in it, are taken from it.
        self._clock = pool.reactor.seconds
        self.read_at = 0.0
        # Response head bytes of this exchange (interim 1xx heads included): the fields counted so far
        # (field_bytes of _headers[:_counted]) and the raw bytes of each read that ended inside a head.
        # Fields are counted at the end of such a read and when a head completes, not one by one: a
        # head completed within the current read (_feed bytes) is counted only when it could be over.
        self._head_bytes = 0
        self._counted = 0
        self._feed = 0
        self._content_length: int | None = None
        self._body_bytes = 0
        self._completed = False  # a final response ended inside the current feed_data call
        self.parser_stopped = False  # bytes followed a complete response: the parser is done for good

    # -- lifetime -----------------------------------------------------------------
    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        no_delay(self.transport)
        if not self.tls:
            self.ready = True
            self.pool.connection_ready(self)
        else:
            self.handshake_timer = self.pool.reactor.callLater(self.pool.connect_timeout, self._handshake_timeout)

    def _handshake_timeout(self) -> None:
        self.handshake_timer = None
        if not self.ready and not self.lost:
            self.handshake_timed_out = True
            self.close()

    def handshakeCompleted(self) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if not self.lost:
            self.ready = True
            self.pool.connection_ready(self)

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        ready = self.ready
        self.ready = False
        timer = self.handshake_timer
        if timer is not None and timer.active():
            timer.cancel()
        self.handshake_timer = None
        ex = self.exchange
        self.exchange = None
        if not ready:
            self.pool.connection_failed(self, reason)
            return
        self.pool.connection_closed(self)
        if ex is None or self.response_done:
            return
        if not self.response_started:
            ex.upstream_lost(self, reason, False)
            return
        clean = reason is None or isinstance(getattr(reason, "value", None), ConnectionDone)
        if self.delimited_by_close and clean:
            # A body without length or chunking ends with the connection (httptools has no
            # feed_eof: the end is ours to call). Only a clean close ends it: a reset, or a TLS
            # close without close_notify (Twisted reports ConnectionLost), may have cut it.
            self.response_done = True
            ex.response_finished()
            return
        ex.upstream_error(UpstreamTruncated(f"{self.pool.label}: {self._cut_short(reason)}"))

    def _cut_short(self, reason) -> str:
        n = self._body_bytes
        if self._content_length is not None:
            return f"response cut short after {n} of {self._content_length} body bytes"
        if not self.delimited_by_close:
            return f"response cut short after {n} body bytes (no last chunk)"
        why = reason.getErrorMessage() if hasattr(reason, "getErrorMessage") else str(reason)
        return f"response cut short after {n} body bytes (the connection did not close cleanly: {why})"

    def close(self) -> None:
        """Drop the connection (it cannot be reused)."""
        self.no_reuse = True
        self.exchange = None
        if not self.lost:
            abort_connection(self.transport)

    # -- one exchange -----------------------------------------------------------------
    def start(self, exchange, head: bytes, head_only: bool, request_done: bool = False) -> None:
        """Send a request head; body follows through write_body/end_body, unless ``request_done`` (all in ``head``)."""
        self.exchange = exchange
        self.response_started = False
        self.response_done = False
        self.request_done = request_done
        self._head_bytes = 0
        self._content_length = None
        self._body_bytes = 0
        if head_only:
            # A response to HEAD has headers that announce a body it does not carry; the
            # parser cannot be told, so this connection is not reused.
            self.no_reuse = True
        self.transport.write(head)

    def write_body(self, data: bytes) -> None:
        self.transport.write(data)

    def end_body(self, tail: bytes) -> None:
        if tail:
            self.transport.write(tail)
        self.request_done = True
        if self.response_done:
            self._release()

    def _release(self, now: float | None = None) -> None:
        self.exchange = None
        if self.read_paused:
            # Paused by the downstream of the exchange that just ended: it will not resume us.
            self.resume_reading()
        self.pool.checkin(self, now)

    # -- backpressure ---------------------------------------------------------------
    def pauseProducing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_write_paused()

    def resumeProducing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_write_resumed()

    def stopProducing(self) -> None:
        pass

    def pause_reading(self) -> None:
        if not self.lost and not self.read_paused:
            self.read_paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if not self.lost and self.read_paused:
            self.read_paused = False
            self.transport.resumeProducing()

    # -- parsing ------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None or self.response_done:
            # Bytes with no request outstanding: the upstream is confused; drop it.
            self.close()
            return
        in_head = not self.response_started
        error = None
        self._feed = len(data)
        self.read_at = self._clock()
        # What this read makes the client's side write (head, body chunks, end) leaves in one send.
        started = hold_writes()
        try:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as e:
                cause = e.__context__
                if isinstance(cause, _Stop):
                    error = cause.error
                else:
                    error = UpstreamProtocolError(f"{self.pool.label}: malformed response: {e}")
            if self._completed:
                # The response ended in this read. Anything after it answered nothing (on_message_begin
                # stopped the parser there): the connection is out of step and is not reused.
                self._completed = False
                if error is not None or self.parser_stopped or not self.request_done:
                    # (not request_done: the upstream answered before the request body ended; it
                    # won't read the rest)
                    self.no_reuse = True
                if self.exchange is ex:
                    self._release(self.read_at)
                    ex.response_finished()
                return
            if error is None and in_head and not self.response_started:
                # A head still incomplete: httptools buffers a partial line itself, so count raw
                # bytes too, or one endless header (or status) line would never hit the limit.
                self._count_fields()
                self._head_bytes += len(data)
                if self._head_bytes > self.max_head:
                    error = self._head_too_large()
            if error is not None:
                self.close()
                ex.upstream_error(error)
        finally:
            release_writes(started)

    def _head_too_large(self) -> UpstreamHeadersTooLarge:
        return UpstreamHeadersTooLarge(f"{self.pool.label}: response head exceeds {self.max_head} bytes")

    def on_message_begin(self) -> None:
        if self.response_done:
            self.parser_stopped = True
            raise _Stop()
        self._headers = []
        self._counted = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((LOWER_NAMES[name], value))

    def _count_fields(self) -> None:
        self._head_bytes += field_bytes(self._headers, self._counted)
        self._counted = len(self._headers)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        # The fields not counted yet came in this read (a field split across reads: its first part
        # is in _head_bytes as raw bytes), and each counts at most twice its raw line: below half the
        # limit, the head cannot be over it.
        if status < 200 or 2 * (self._head_bytes + self._feed) > self.max_head:
            self._count_fields()
            if self._head_bytes > self.max_head:
                raise _Stop(self._head_too_large())
        if status < 200:
            return  # 1xx: interim, not forwarded (its bytes still count toward the head limit)
        content_length = None
        self.delimited_by_close = True
        for k, v in self._headers:
            if k == b"content-length":
                content_length = int(v)
                self.delimited_by_close = False
            elif k == b"transfer-encoding":
                if v.strip().lower() != b"chunked":
                    # Another coding would reach the client undecoded and no longer announced
                    # (nginx answers it with 502 too).
                    raise _Stop(UpstreamProtocolError(
                        f"{self.pool.label}: unsupported transfer coding '{v.decode('latin-1')}' in the response"))
                content_length = None
                self.delimited_by_close = False
                break
        self.response_started = True
        if not self.parser.should_keep_alive():
            self.no_reuse = True
        self._content_length = content_length
        ex = self.exchange
        if ex is not None:
            ex.response_head(status, self._headers, content_length)
        if self.exchange is not None and ex.head_only:
            self.response_done = True
            self.request_done = True
            self._release(self.read_at)
            ex.response_finished()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        ex = self.exchange
        if ex is not None:
            ex.response_body(body)

    def on_message_complete(self) -> None:
        if not self.response_started:
            return  # the end of an interim (1xx) response: its final one follows
        self.response_done = True
        if self.exchange is not None:
            # Finished once feed_data returns, so bytes after the response are seen first.
            self._completed = True

