# -*- test-case-name: tests.test_h1_unit -*-
"""The contract between downstream protocols (HTTP/1.1, HTTP/2) and request handlers.

A downstream protocol parses one request head, builds a `RequestHead`, and asks the
dispatcher for a handler: ``handler = dispatcher.dispatch(stream, head)``.  The dispatcher
decides and does not write: a refused request gets a `txgate.http.requests.Refusal`, which
the protocol answers with its error (`requests.dispatch_request`).  From then on:

* the protocol feeds the request body to the handler: ``handler.body_received(data)``
  and finally ``handler.body_finished()``; if the client goes away or resets the stream,
  ``handler.stream_lost(reason)`` (after which the handler must not touch the stream);
* the handler answers through the `Stream`: ``start_response`` once, ``write`` any number
  of times, then ``finish`` (or ``abort`` when the response cannot be completed);
* backpressure, both ways: the handler calls ``stream.pause_reading()`` /
  ``resume_reading()`` when it cannot take more request body; the protocol calls
  ``handler.pause_producing()`` / ``resume_producing()`` when the client cannot take more
  response body.

Header names are lower-case bytes everywhere; hop-by-hop headers are removed by whoever
crosses a hop (see `txgate.http.headers`).
"""
from __future__ import annotations

from typing import Protocol

from twisted.logger import Logger

from txgate.http.memo import Memo

log = Logger()


class ConnectionInfo:
    """Per-connection facts, computed once when the connection (or its handshake) is up."""

    __slots__ = (
        "listener",
        "client_host",
        "client_port",
        "tls",
        "scheme",
        "sni",
        "tls_version",
        "cipher",
        "alpn",
        "extra",
    )

    def __init__(
        self,
        listener: str,
        client_host: str,
        client_port: int,
        tls: bool = False,
    ) -> None:
        self.listener = listener
        self.client_host = client_host
        self.client_port = client_port
        self.tls = tls
        # b"https" or b"http" (X-Forwarded-Proto, Forwarded): an attribute, read once per request.
        self.scheme = b"https" if tls else b"http"
        self.sni: str | None = None
        self.tls_version: str | None = None
        self.cipher: str | None = None
        self.alpn: str | None = None
        # Room for later per-connection decisions (allowlists), keyed by API name.
        self.extra: dict = {}


class RequestHead:
    """One parsed request head, the same shape for HTTP/1.1 and HTTP/2."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "authority",
        "host",
        "headers",
        "content_length",
        "has_body",
        "version",
        "request_id",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        authority: bytes,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        has_body: bool,
        version: bytes,
    ) -> None:
        self.method = method
        self.target = target
        path, sep, query = target.partition(b"?")
        self.path = path
        self.query = query
        self.authority = authority
        # The authority without its port, lower-cased, as text (for routing).
        self.host = _HOSTS[authority]
        self.headers = headers
        self.content_length = content_length
        self.has_body = has_body
        # b"1.1", b"1.0" or b"2"
        self.version = version
        # X-Request-Id: decided once per request (txgate.http.requestid.ensure_request_id).
        self.request_id = b""


def _host_of(a: bytes) -> str:
    if a.startswith(b"["):
        end = a.find(b"]")
        return a[1:end].decode("latin-1").lower() if end > 0 else ""
    return a.partition(b":")[0].decode("latin-1").lower()


_HOSTS = Memo(_host_of, 4096)  # authority -> host: a connection's requests repeat theirs


class Stream(Protocol):
    """The downstream side of one request, implemented by the h1 and h2 protocols."""

    info: ConnectionInfo

    def start_response(
        self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None
    ) -> None:
        """Send the status and headers; ``content_length`` None means 'until finish()'."""

    def write(self, data: bytes) -> None:
        """Send part of the response body."""

    def finish(self) -> None:
        """End the response normally."""

    def abort(self) -> None:
        """End the response abnormally (h1: close the connection; h2: RST_STREAM)."""

    def pause_reading(self) -> None:
        """Stop delivering request body to the handler until resume_reading()."""

    def resume_reading(self) -> None:
        """Deliver request body again."""


class StreamRecord:
    """What both protocols keep of one request for its access-log line (h1 and h2 streams extend it)."""

    __slots__ = ("info", "head", "handler", "status", "bytes_in", "bytes_out", "started")

    def __init__(self, info: ConnectionInfo, head: RequestHead | None, started: float) -> None:
        self.info = info
        self.head = head
        self.handler = None
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = started

    def report(self, dispatcher: Dispatcher, ended: float, handler: Handler | None) -> None:
        """Hand the finished request to ``dispatcher.log_request`` (a failure there is only logged)."""
        try:
            dispatcher.log_request(
                self.info, self.head, self.status, self.bytes_in, self.bytes_out, handler, self.started, ended
            )
        except Exception:
            log.failure("access log failed")


class Handler(Protocol):
    """The request-processing side of one request (proxy, echo, error responder)."""

    def body_received(self, data: bytes) -> None: ...

    def body_finished(self) -> None: ...

    def stream_lost(self, reason: object) -> None: ...

    def pause_producing(self) -> None: ...

    def resume_producing(self) -> None: ...


class Dispatcher(Protocol):
    """Chooses and creates the handler of each request (routing, policy, errors)."""

    def dispatch(self, stream: Stream, head: RequestHead) -> Handler:
        """The request's handler, or a `Refusal` for the protocol to answer (nothing written here)."""

    def log_request(
        self,
        info: ConnectionInfo,
        head: RequestHead | None,
        status: int,
        bytes_in: int,
        bytes_out: int,
        handler: Handler | None,
        started: float,
        ended: float,
    ) -> None:
        """Called once per request by the protocol when it is over (finished, aborted, lost).

        ``handler`` may carry ``api`` and ``upstream_label`` attributes (str or None).
        ``status`` is 0 when no response was started.  Times come from the injected clock.
        """


class Limits:
    """Per-listener protocol limits (from `[listener:NAME]`)."""

    __slots__ = ("max_header_bytes", "header_timeout", "idle_timeout", "max_concurrent_streams")

    def __init__(
        self,
        max_header_bytes: int = 65536,
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        max_concurrent_streams: int = 100,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_concurrent_streams = max_concurrent_streams


class NullHandler:
    """The handler of a request that was answered at once (an error): ignores the rest of it."""

    __slots__ = ("api", "upstream_label")

    def __init__(self, api: str | None = None) -> None:
        self.api = api
        self.upstream_label = None

    def body_received(self, data: bytes) -> None:
        pass

    def body_finished(self) -> None:
        pass

    def stream_lost(self, reason: object) -> None:
        pass

    def pause_producing(self) -> None:
        pass

    def resume_producing(self) -> None:
        pass
