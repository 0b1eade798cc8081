# -*- test-case-name: tests.test_proxy_unit -*-
"""One persistent HTTP/1.1 connection to an upstream target (plain or TLS)."""
from __future__ import annotations

import httptools
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txgate.http.closing import abort_connection
from txgate.directwrite import no_delay

log = Logger()


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
        if ex is not None and not self.response_done:
            if self.response_started and self.delimited_by_close:
                # A body without length or chunking ends with the connection (httptools has no
                # feed_eof: the end is ours to call).
                self.response_done = True
                ex.response_finished()
                return
            ex.upstream_lost(self, reason, self.response_started)

    def close(self) -> None:
        """Drop the connection (it cannot be reused)."""
        self.no_reuse = True
        self.exchange = None
        if not self.lost:
            abort_connection(self.transport)

    # -- one exchange -----------------------------------------------------------------
    def start(self, exchange, head: bytes, head_only: bool) -> None:
        """Send a request head; body follows through write_body/end_body."""
        self.exchange = exchange
        self.response_started = False
        self.response_done = False
        self.request_done = False
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

    def _release(self) -> None:
        self.exchange = None
        if self.read_paused:
            # Paused by the downstream of the exchange that just ended: it will not resume us.
            self.resume_reading()
        self.pool.checkin(self)

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
        if self.exchange is None:
            # Bytes with no request outstanding: the upstream is confused; drop it.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            ex = self.exchange
            self.close()
            if ex is not None:
                ex.upstream_protocol_error(self, f"malformed response: {e}", self.response_started)

    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # 1xx: interim, not forwarded
        self.response_started = True
        if not self.parser.should_keep_alive():
            self.no_reuse = True
        content_length = None
        self.delimited_by_close = True
        for k, v in self._headers:
            if k == b"content-length":
                content_length = int(v)
                self.delimited_by_close = False
            elif k == b"transfer-encoding":
                content_length = None
                self.delimited_by_close = False
                break
        ex = self.exchange
        if ex is not None:
            ex.response_head(status, self._headers, content_length)
        if self.exchange is not None and ex.head_only:
            self.response_done = True
            self.request_done = True
            self._release()
            ex.response_finished()

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.response_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        self.response_done = True
        ex = self.exchange
        if ex is None:
            return
        if not self.request_done:
            # The upstream answered before the request body ended: it won't read the rest.
            self.no_reuse = True
        self._release()
        ex.response_finished()
