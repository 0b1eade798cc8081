# -*- test-case-name: tests.test_proxy_handler_unit -*-
"""The proxy handler: one downstream request forwarded over a pooled upstream connection."""
from __future__ import annotations

from twisted.logger import Logger

from txgate.errors import UpstreamTLSError, GatewayError, RequestTooLarge, UpstreamBusy, UpstreamTimeout, UpstreamUnavailable
from txgate.http.errors import log_error, send_gateway_error, stream_request_id
from txgate.http.headers import VIA_H1, downstream_response_headers
from txgate.tls.client import upstream_tls_error

log = Logger()

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
BUFFER_LIMIT = 65536  # request body held while no upstream connection is ready


class Upstream:
    """The targets of one API: round robin, next target when a connection cannot be made."""

    def __init__(self, api: str, pools: list, *, timeout: float, max_body_bytes: int,
                 error_detail: bool = False) -> None:
        self.api = api
        self.error_detail = error_detail  # `[gateway] error_detail`: details in error bodies
        self.pools = pools
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self.rr = 0
        # Timeouts: handlers in flight are swept every `tick` seconds (one timer per API while
        # busy, instead of a timer per request); precision is timeout + at most one tick.
        self.active: dict = {}
        self.tick = min(0.25, timeout / 4)
        self._tick_call = None

    def _sweep(self, clock) -> None:
        self._tick_call = None
        cutoff = clock.seconds() - self.timeout + 1e-9
        for handler in [h for h in self.active if h.last <= cutoff]:
            handler.timed_out()
        if self.active:
            self._tick_call = clock.callLater(self.tick, self._sweep, clock)

    def close(self) -> None:
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None
        for p in self.pools:
            p.close()


class ProxyHandler:
    """Streams one request to an upstream and its response back, with backpressure both ways."""

    __slots__ = (
        "upstream", "stream", "clock", "method", "target", "header_block", "host_override", "head_only", "chunked", "api", "upstream_label",
        "conn", "pool", "tried", "buffer", "buffered", "body_done", "done", "started", "sent_body",
        "last", "last_error", "reused", "body_bytes", "paused_downstream", "retryable", "client_paused",
        "sent_at", "upstream_seconds", "starting",
    )

    def __init__(self, upstream: Upstream, stream, head, target: bytes, header_block: bytes,
                 host_override: bytes | None, clock) -> None:
        # target: path and query (the pool's base path goes in front); header_block: every header
        # but Host, ending in a blank line; the Host is the chosen target's unless host_override.
        self.upstream = upstream
        self.stream = stream
        self.clock = clock
        self.method = head.method
        self.target = target
        self.header_block = header_block
        self.host_override = host_override
        self.head_only = head.method == b"HEAD"
        self.chunked = head.has_body and head.content_length is None
        self.api = upstream.api
        self.upstream_label = None
        self.conn = None
        self.pool = None
        self.tried = 0
        self.buffer: list[bytes] | None = None  # made with the first chunk (most requests have none)
        self.buffered = 0
        self.body_done = not head.has_body
        self.done = False
        self.started = False  # response head sent downstream
        self.sent_body = False
        self.last = 0.0
        self.last_error: GatewayError | None = None
        self.reused = False
        self.body_bytes = 0
        self.paused_downstream = False
        self.client_paused = False
        self.retryable = not head.has_body and head.method in IDEMPOTENT
        self.sent_at = 0.0
        self.upstream_seconds: float | None = None  # request sent -> response head (metrics)
        self.starting = False  # in the first start(): a connection handed out now is written to at its time

    # -- start -------------------------------------------------------------------------
    def start(self, index: int | None = None) -> None:
        """Watch the request for the API's timeout and ask the API's next pool (round robin) for a
        connection; with ``index`` (a connection could not be made), ask the pool at that index."""
        up = self.upstream
        pools = up.pools
        if index is None:
            self.last = self.clock.seconds()
            up.active[self] = None
            if up._tick_call is None:
                up._tick_call = self.clock.callLater(up.tick, up._sweep, self.clock)
            index = up.rr
            up.rr = (index + 1) % len(pools)
            self.starting = True
        pool = pools[index % len(pools)]
        self.pool = pool
        self.upstream_label = pool.label
        self.tried += 1
        try:
            pool.acquire(self)
        except UpstreamBusy as e:
            self._fail(e)
        self.starting = False

    def upstream_ready(self, conn, reused: bool) -> None:
        if self.done:
            self.pool.checkin(conn)
            return
        self.conn = conn
        self.reused = reused
        if self.client_paused:
            conn.pause_reading()
        pool = self.pool
        head = b"".join((self.method, b" ", pool.base_path, self.target, b" HTTP/1.1\r\nhost: ",
                         self.host_override or pool.host_value, b"\r\n", self.header_block))
        self.sent_at = self.last if self.starting else self.clock.seconds()
        # The head, the body read meanwhile and its end go out in one write.
        if self.buffer or (self.body_done and self.chunked):
            out = [head]
            if self.buffer:
                self.sent_body = True
                out.extend(self._framed(chunk) for chunk in self.buffer)
                self.buffer = None
                self.buffered = 0
            if self.body_done:
                out.append(self._body_tail())
            head = b"".join(out)
        conn.start(self, head, self.head_only, self.body_done)
        if self.paused_downstream:
            self.paused_downstream = False
            self.stream.resume_reading()

    def upstream_failed(self, pool, err: GatewayError) -> None:
        if self.done:
            return
        self.last_error = err
        pool.last_failure = (err.code, self.clock.seconds())
        # Next target when a connection could not be made; a TLS failure is not retried
        # elsewhere (it is a trust problem, not an availability one).
        if self.tried < len(self.upstream.pools) and not isinstance(err, UpstreamTLSError):
            log.warn(
                "api {api} upstream {target} {code}: {reason}; trying the next target (request {request_id})",
                api=self.api, target=self.upstream_label, code=err.code, reason=err.message,
                request_id=stream_request_id(self.stream).decode("ascii"),
            )
            self.start(self.upstream.pools.index(pool) + 1)
            return
        self._fail(err)

    # -- request body ------------------------------------------------------------------
    def body_received(self, data: bytes) -> None:
        if self.done:
            return
        self.body_bytes += len(data)
        limit = self.upstream.max_body_bytes
        if limit and self.body_bytes > limit:
            self._fail(RequestTooLarge(f"request body exceeds {limit} bytes"))
            return
        if self.conn is None:
            if self.buffer is None:
                self.buffer = [data]
            else:
                self.buffer.append(data)
            self.buffered += len(data)
            if self.buffered > BUFFER_LIMIT and not self.paused_downstream:
                self.paused_downstream = True
                self.stream.pause_reading()
            return
        self._send_body(data)

    def _framed(self, data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data

    def _body_tail(self) -> bytes:
        return b"0\r\n\r\n" if self.chunked else b""

    def _send_body(self, data: bytes) -> None:
        self.sent_body = True
        self.conn.write_body(self._framed(data))

    def body_finished(self) -> None:
        if self.done or self.body_done:
            # (body_done from the start: a request without a body, ended with its head)
            return
        self.body_done = True
        if self.conn is not None:
            self._end_body()

    def _end_body(self) -> None:
        self.conn.end_body(self._body_tail())

    def upstream_write_paused(self) -> None:
        self.stream.pause_reading()

    def upstream_write_resumed(self) -> None:
        self.stream.resume_reading()

    # -- response ------------------------------------------------------------------------
    def response_head(self, status: int, headers, content_length) -> None:
        if self.done:
            return
        self.started = True
        self.last = now = self.conn.read_at  # (the clock when this read came: UpstreamConnection)
        self.upstream_seconds = now - self.sent_at
        self.pool.last_success = now
        self.stream.start_response(status, downstream_response_headers(headers, VIA_H1), content_length)

    def response_body(self, data: bytes) -> None:
        if not self.done:
            self.last = self.conn.read_at  # progress: the timeout counts from here
            self.stream.write(data)

    def response_finished(self) -> None:
        if self.done:
            return
        # _end inline (one call less per request): the connection calls here once it has let go of
        # this exchange (released, or lost), so there is nothing to cancel, and nothing to close.
        self.done = True
        self.upstream.active.pop(self, None)
        conn = self.conn
        self.conn = None
        if conn is not None and conn.exchange is self:  # (never, as the connection calls; as in _end)
            conn.close()
        self.paused_downstream = False
        self.stream.finish()

    def pause_producing(self) -> None:
        self.client_paused = True
        if self.conn is not None:
            self.conn.pause_reading()

    def resume_producing(self) -> None:
        self.client_paused = False
        if self.conn is not None:
            self.conn.resume_reading()

    # -- failures ------------------------------------------------------------------------
    def upstream_lost(self, conn, reason, response_started: bool) -> None:
        if self.done:
            return
        if not response_started and self.reused and self.retryable and not self.sent_body:
            # A pooled connection the upstream had already closed: retry once on a new one.
            self.conn = None
            self.reused = False
            self.retryable = False
            try:
                self.pool.acquire(self)
            except UpstreamBusy as e:
                self._fail(e)
            return
        from OpenSSL.SSL import Error as SSLError

        if isinstance(getattr(reason, "value", None), SSLError):
            self._fail(upstream_tls_error(self.upstream_label, reason, in_handshake=False))
            return
        why = reason.getErrorMessage() if hasattr(reason, "getErrorMessage") else str(reason)
        self._fail(UpstreamUnavailable(f"{self.upstream_label}: connection lost: {why}"))

    def upstream_error(self, err: GatewayError) -> None:
        """The upstream broke the exchange (bad or oversized head, response cut short): fail with err."""
        self._fail(err)

    def timed_out(self) -> None:
        """No response progress within the API's timeout: 504 upstream_timeout (or an abort once started)."""
        if self.done:
            return
        if self.pool is not None and not self.started:
            self.pool.last_failure = ("upstream_timeout", self.clock.seconds())
        self._fail(UpstreamTimeout(f"{self.upstream_label or self.api}: no response within {self.upstream.timeout:g}s"))

    def _fail(self, err: GatewayError) -> None:
        if self.done:
            return
        started = self.started
        self._end()
        log_error(err, stream_request_id(self.stream), self.stream.info.listener, self.api, self.upstream_label)
        if started:
            self.stream.abort()
        else:
            send_gateway_error(self.stream, err, detail=self.upstream.error_detail, logged=True)

    def _end(self) -> None:
        self.done = True
        self.upstream.active.pop(self, None)
        conn = self.conn
        self.conn = None
        if conn is not None and conn.exchange is self:
            conn.close()
        elif conn is None and self.pool is not None:
            self.pool.cancel(self)
        self.paused_downstream = False

    def stream_lost(self, reason) -> None:
        if self.done:
            return
        self._end()
