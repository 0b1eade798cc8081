# -*- test-case-name: tests.test_h1_unit -*-
"""Downstream HTTP/1.1 server protocol: httptools parsing, streaming both ways, keep-alive."""
from __future__ import annotations

from http import HTTPStatus

import httptools
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgate.directwrite import no_delay
from txgate.http.closing import GRACE, Closer, abort_connection
from txgate.errors import BadRequest, GatewayError, HeadersTooLarge, InternalError
from txgate.http.errors import error_body, log_error, send_gateway_error
from txgate.http.headers import field_bytes, header_lines
from txgate.http.exchange import ConnectionInfo, Limits, NullHandler, RequestHead, StreamRecord
from txgate.http.requestid import ensure_request_id
from txgate.http.requests import dispatch_request, h1_request_head

log = Logger()

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

IDLE, HEADERS, ACTIVE, CLOSING = range(4)


def status_line(status: int) -> bytes:
    """b'HTTP/1.1 200 OK\\r\\n', cached per status."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
        _STATUS_LINES[status] = line
    return line


class _Exchange(StreamRecord):
    """One request on the connection: the `Stream` the handler answers through."""

    __slots__ = ("conn", "chunked", "pending", "done", "request_complete", "keep_alive", "head_only", "queued_body")

    def __init__(self, conn: H1Connection, head: RequestHead, keep_alive: bool, started: float) -> None:
        StreamRecord.__init__(self, conn.info, head, started)  # (no super object per request)
        self.conn = conn
        self.chunked = False
        self.pending: bytes | None = None
        self.done = False
        self.request_complete = False
        self.keep_alive = keep_alive
        self.head_only = head.method == b"HEAD"
        self.queued_body: list[bytes] | None = None

    # -- Stream ---------------------------------------------------------------
    def start_response(self, status: int, headers, content_length) -> None:
        if self.done or self.status:
            return
        self.status = status
        conn = self.conn
        if not self.request_complete:
            # The body was not read: we cannot find the next request's start safely.
            self.keep_alive = False
        if conn.shutting_down:
            self.keep_alive = False
        head = self.head
        if self.head_only or status in (204, 304):
            framing = b"content-length: %d\r\n" % content_length if content_length is not None and status != 204 else b""
        elif content_length is not None:
            framing = b"content-length: %d\r\n" % content_length
        elif head.version == b"1.1":
            self.chunked = True
            framing = b"transfer-encoding: chunked\r\n"
        else:
            self.keep_alive = False
            framing = b""
        if not self.keep_alive:
            end = b"connection: close\r\n\r\n"
        else:
            end = b"connection: keep-alive\r\n\r\n" if head.version == b"1.0" else b"\r\n"
        self.pending = b"".join((
            _STATUS_LINES.get(status) or status_line(status), header_lines(headers),
            b"x-request-id: ", head.request_id or ensure_request_id(head), b"\r\n", framing, end))

    def write(self, data: bytes) -> None:
        if self.done or not data:
            return
        if self.head_only:
            return
        self.bytes_out += len(data)
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        pending = self.pending
        if pending is not None:
            self.pending = None
            self.conn.transport.writeSequence((pending, data))
        else:
            self.conn.transport.write(data)

    def finish(self) -> None:
        if self.done:
            return
        if not self.status:
            self.start_response(502, [], 0)
        tail = b"0\r\n\r\n" if self.chunked else b""
        pending = self.pending
        self.pending = None
        if pending is not None:
            tail = pending + tail
        if tail:
            self.conn.transport.write(tail)
        self.done = True
        self.conn.exchange_done(self, True)

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        self.keep_alive = False
        self.conn.exchange_done(self, False)

    def pause_reading(self) -> None:
        if not self.done and self.conn.current is self:
            self.conn.pause_body()

    def resume_reading(self) -> None:
        if self.conn.current is self:
            self.conn.resume_body()


class H1Connection(Protocol):
    """HTTP/1.1 on one downstream connection (after TLS, when ALPN chose http/1.1 or nothing)."""

    def __init__(self, dispatcher, info: ConnectionInfo, limits: Limits, clock, timer=None) -> None:
        self.dispatcher = dispatcher
        self.info = info
        self.limits = limits
        self.clock = clock
        self.parser = None  # made with the first bytes: an idle connection has none (~1 KiB)
        self.current: _Exchange | None = None
        self.queue: list[_Exchange] = []
        self.phase = IDLE
        self.mark = 0.0
        # The connection's one timer (None, or due and not cancelled: ours alone until the close takes
        # it); ``timer``: the negotiator's handshake timer, handed over to be reused.
        self.timer = timer
        self.shutting_down = False
        self.body_paused = False
        self.read_paused = False
        self.lost = False
        self.closer: Closer | None = None
        # Parser scratch state for the head being read.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._header_bytes = 0  # field_bytes of _headers[:_counted]
        self._counted = 0
        self._fed_in_head = 0  # bytes of the reads that ended inside the head being read
        self._feed = 0  # bytes of the read being parsed
        self._parsing: _Exchange | None = None
        self._expect_continue = False
        self._raw_head_bytes = 0

    # -- connection lifetime -------------------------------------------------
    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        no_delay(self.transport)
        self.mark = now = self.clock.seconds()
        timer = self.timer
        idle = self.limits.idle_timeout
        if timer is not None:
            if timer.getTime() <= now + idle:
                # The handshake timer, due before the idle deadline: reused rather than replaced (one
                # timer per connection); when it fires, _check_timeout re-arms it for what is left.
                timer.func = self._check_timeout
                return
            timer.cancel()
        # First due within the close's grace, as the listener's (see txgate.http.closing): re-armed
        # then for the rest, unless the connection is gone or closing by then.
        self.timer = self.clock.callLater(idle if idle < GRACE else GRACE, self._check_timeout)

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        if self.closer is not None:
            self.closer.cancel()
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        exchanges = ([self.current] if self.current else []) + self.queue
        if self._parsing is not None and self._parsing not in exchanges:
            exchanges.append(self._parsing)
        self.current = None
        self.queue = []
        for ex in exchanges:
            if not ex.done:
                ex.done = True
                if ex.handler is not None:
                    try:
                        ex.handler.stream_lost(reason)
                    except Exception:
                        log.failure("handler.stream_lost failed")
                self._log(ex)

    def _check_timeout(self) -> None:
        self.timer = None
        if self.lost:
            return
        now = self.clock.seconds()
        if self.phase == ACTIVE:
            wait = self.limits.idle_timeout
        else:
            limit = self.limits.header_timeout if self.phase == HEADERS else self.limits.idle_timeout
            wait = self.mark + limit - now
            if wait <= 0:
                if self.phase == HEADERS:
                    log.info(
                        "client {client} did not send request headers within {timeout}s; closing",
                        client=self.info.client_host, timeout=self.limits.header_timeout,
                    )
                self._close(1.0 if self.phase == HEADERS else None)
                return
        self.timer = self.clock.callLater(wait, self._check_timeout)

    def _arm_header_timer(self) -> None:
        """The head must be complete within header_timeout (the idle timer may be due later)."""
        due = self.mark + self.limits.header_timeout
        timer = self.timer
        if timer is not None:
            if timer.getTime() <= due:
                return
            self.timer = None
            timer.cancel()
        if not self.lost and self.closer is None:
            self.timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._check_timeout)

    def _close(self, grace: float | None = None) -> None:
        """Close after what is written, and abort if the peer does not let the close finish."""
        if self.lost:
            return
        closer = self.closer
        if closer is None:
            closer = self.closer = Closer(self.transport, self.clock, grace or GRACE)
            # The connection's timer goes to the close: no deadline of h1's outlives it.
            timer, self.timer = self.timer, None
            closer.close(timer)
            return
        closer.close()

    def shutdown(self) -> None:
        """Graceful shutdown: finish the request in flight, then close; close now if idle."""
        self.shutting_down = True
        if self.current is None and self.phase != HEADERS:
            self._close()

    # -- producer (response backpressure) -------------------------------------
    def pauseProducing(self) -> None:
        cur = self.current
        if cur is not None and cur.handler is not None:
            cur.handler.pause_producing()

    def resumeProducing(self) -> None:
        cur = self.current
        if cur is not None and cur.handler is not None:
            cur.handler.resume_producing()

    def stopProducing(self) -> None:
        pass

    # -- request body backpressure --------------------------------------------
    def pause_body(self) -> None:
        if not self.body_paused:
            self.body_paused = True
            self._update_reading()

    def resume_body(self) -> None:
        if self.body_paused:
            self.body_paused = False
            self._update_reading()

    def _update_reading(self) -> None:
        # (a pipelined head begun behind the request in flight: the rest waits, as a whole one would)
        want_paused = self.body_paused or bool(self.queue) or (self.phase == ACTIVE and self._headers is not None)
        if want_paused and not self.read_paused:
            self.read_paused = True
            self.transport.pauseProducing()
        elif not want_paused and self.read_paused:
            self.read_paused = False
            self.transport.resumeProducing()

    # -- parsing --------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self.lost or self.phase == CLOSING:
            # After an error or the last response the byte stream is ignored.
            return
        in_head = self.phase != ACTIVE
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        self._feed = len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades are not supported: the request was handled without the Upgrade header;
            # whatever follows is not HTTP/1.1, so the connection ends after the response.
            if self._parsing is not None:
                self._parsing.keep_alive = False
            return
        except httptools.HttpParserError as e:
            # Exceptions raised in parser callbacks arrive wrapped, with the original as context.
            cause = e.__context__
            if isinstance(cause, GatewayError):
                self._protocol_error(cause)
            elif cause is None or isinstance(cause, httptools.HttpParserError):
                self._protocol_error(BadRequest(f"malformed HTTP/1.1 request: {cause or e}"))
            else:
                log.failure("request handling failed", failure=Failure(cause))
                self._protocol_error(InternalError())
            return
        if self._headers is not None:
            # A head still incomplete (a pipelined one too): its fields so far against the limit.
            self._fed_in_head += self._feed
            self._count_fields()
            if len(self._url) + self._header_bytes > self.limits.max_header_bytes:
                self._protocol_error(HeadersTooLarge())
                return
            if self.phase == ACTIVE and not self.read_paused:
                # Pipelined behind the request in flight: read no more of it until that one is
                # answered (_next), then its header timeout and raw byte limit apply from there.
                self._update_reading()
        if self.phase == HEADERS:
            # A head that did not arrive whole: it must be complete within header_timeout.
            # (Checked here, not per request, so a head in one packet costs no timer.)
            self._arm_header_timer()
        if in_head and self.phase == HEADERS:
            # A head still incomplete: httptools buffers a partial header line itself, so
            # count raw bytes too, or one endless header line would never hit the limit.
            self._raw_head_bytes += self._feed
            if self._raw_head_bytes > self.limits.max_header_bytes + 1024:
                self._protocol_error(HeadersTooLarge())

    def _protocol_error(self, err: GatewayError) -> None:
        """Answer a broken request directly and close: the byte stream cannot be trusted."""
        status = err.status
        cur = self.current
        if cur is not None and not cur.done and not cur.status and cur is self._parsing:
            # The request being streamed turned malformed (e.g. a bad chunk) before any response
            # byte: its handler is told the client is gone, and the client gets the 400.
            cur.done = True
            if cur.handler is not None:
                try:
                    cur.handler.stream_lost(Failure(ValueError(err.message)))
                except Exception:
                    log.failure("handler.stream_lost failed")
            self.current = None
            cur.done = False
        if self.current is None or self.current.done:
            ex = self._parsing
            if ex is None:
                ex = _Exchange(self, RequestHead(b"-", b"-", b"", [], None, False, b"1.1"), False, self.clock.seconds())
            rid = ensure_request_id(ex.head)
            log_error(err, rid, self.info.listener)
            body = error_body(err, rid, getattr(self.dispatcher, "error_detail", False))
            self.transport.write(
                status_line(status)
                + b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
                  b"connection: close\r\n\r\n" % (len(body), rid)
                + body
            )
            ex.status = status
            ex.bytes_out = len(body)
            if not ex.done:
                ex.done = True
                self._log(ex)
            self._parsing = None
        self.phase = CLOSING
        self._close()

    def on_message_begin(self) -> None:
        if self.phase != ACTIVE:
            self.phase = HEADERS
            self.mark = self.clock.seconds()
            self._raw_head_bytes = 0
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._counted = 0
        self._fed_in_head = 0
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def _count_fields(self) -> None:
        self._header_bytes += field_bytes(self._headers, self._counted)
        self._counted = len(self._headers)

    def on_headers_complete(self) -> None:
        # The head against max_header_bytes: the URL and each field (name, value, 4). Fields are
        # counted at the end of a read inside the head, and here only when the head could be over:
        # the fields not counted yet came in the reads since (_fed_in_head, _feed), each at most
        # twice its raw line.
        limit = self.limits.max_header_bytes
        if self._header_bytes + 2 * (self._fed_in_head + self._feed) > limit:
            self._count_fields()
            if len(self._url) + self._header_bytes > limit:
                raise HeadersTooLarge()
        parser = self.parser
        head, self._expect_continue = h1_request_head(
            parser.get_method(), self._url, parser.get_http_version().encode(), self._headers
        )
        self._headers = None  # the head keeps them; the idle connection does not
        self._raw_head_bytes = 0
        keep_alive = parser.should_keep_alive() and not self.shutting_down
        ex = _Exchange(self, head, keep_alive, self.mark if self.phase == HEADERS else self.clock.seconds())
        self._parsing = ex
        if self.current is None:
            self._start(ex)
        else:
            # Pipelined: hold it (and stop reading) until the current response is done.
            ex.queued_body = []
            self.queue.append(ex)
            self._update_reading()

    def _start(self, ex: _Exchange) -> None:
        self.current = ex
        self.phase = ACTIVE
        expect = self._expect_continue and ex.queued_body is None
        try:
            dispatch_request(self.dispatcher, ex, ex.head)
        except Exception:
            log.failure("dispatch failed")
            ex.handler = _NULL_HANDLER
            if not ex.status:
                ex.keep_alive = False
                send_gateway_error(ex, InternalError(), detail=getattr(self.dispatcher, "error_detail", False))
            else:
                ex.abort()
            return
        if expect and not ex.status and not ex.done:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is None:
            return
        ex.bytes_in += len(body)
        if ex.queued_body is not None and ex is not self.current:
            ex.queued_body.append(body)
        elif not ex.done and ex.handler is not None:
            ex.handler.body_received(body)

    def on_message_complete(self) -> None:
        ex = self._parsing
        self._parsing = None
        if ex is None:
            return
        ex.request_complete = True
        if ex is self.current and not ex.done and ex.handler is not None:
            ex.handler.body_finished()
        if ex.done and ex is self.current:
            # The response finished before the request body did: now the next one can start.
            self._next()

    # -- completion -------------------------------------------------------------
    def exchange_done(self, ex: _Exchange, clean: bool) -> None:
        """Called by the exchange when its response is over."""
        ex.report(self.dispatcher, self.clock.seconds(), ex.handler)
        if ex is not self.current:
            return
        if not clean or not ex.keep_alive:
            self.current = None
            self.phase = CLOSING
            if clean:
                self._close()
            else:
                abort_connection(self.transport, self._close)
            return
        if ex.request_complete:
            self._next()
        # else: wait for on_message_complete to drain the rest of the body.

    def _next(self) -> None:
        self.current = None
        # A body pause belongs to the exchange that asked for it (its upstream may never resume).
        self.body_paused = False
        self.phase = IDLE
        self.mark = self.clock.seconds()
        if self.shutting_down:
            self._close()
            return
        if not self.queue:
            if self._headers is not None:
                # A pipelined head came in part while the last request was in flight: from now
                # on it is a head being read like any other (header timeout, raw byte limit).
                self.phase = HEADERS
                self._raw_head_bytes = 0
                self._arm_header_timer()
            if self.read_paused:  # (else nothing to change: no pause, nothing queued)
                self._update_reading()
            return
        ex = self.queue.pop(0)
        body = ex.queued_body or []
        ex.queued_body = None
        self._start(ex)
        for chunk in body:
            if ex.done:
                break
            ex.handler.body_received(chunk)
        if ex.request_complete and not ex.done:
            ex.handler.body_finished()
        if ex.done and ex.request_complete and self.current is ex:
            self._next()
            return
        self._update_reading()

    def _log(self, ex: _Exchange) -> None:
        ex.report(self.dispatcher, self.clock.seconds(), ex.handler)


_NULL_HANDLER = NullHandler()
