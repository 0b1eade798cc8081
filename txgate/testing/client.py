# -*- test-case-name: tests.test_testing_harness -*-
"""Clients in memory: one downstream connection (TLS with ALPN, or plain) speaking HTTP/1.1 or HTTP/2."""
from __future__ import annotations

import json as _json
from typing import Any, Iterable

import attrs
import httptools
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

Headers = Iterable[tuple[str, str]]


@attrs.define
class Response:
    """A response as the client saw it; it fills in while the network is pumped."""

    method: str
    path: str
    status: int | None = None
    headers: list[tuple[str, str]] = attrs.Factory(list)
    body: bytes = b""
    complete: bool = False  #: the whole response arrived
    reset: bool = False  #: the stream or connection ended before the response did
    stream_id: int | None = None
    chunked_upload: bool = attrs.field(default=False, repr=False)

    def header(self, name: str) -> str | None:
        """The first value of a response header (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.body)

    @property
    def code(self) -> str | None:
        """The code of a gateway error body (``{"error": CODE, "message": ...}``), e.g. ``upstream_timeout``; or None."""
        return self._error_field("error")

    @property
    def message(self) -> str | None:
        """The message of a gateway error body, or None."""
        return self._error_field("message")

    @property
    def request_id(self) -> str | None:
        """The response's X-Request-Id (every response txgate writes has one), or None."""
        for k, v in self.headers:
            if k.lower() == "x-request-id":
                return v
        return None

    def _error_field(self, key: str) -> str | None:
        try:
            value = self.json()
        except ValueError:
            return None
        return value.get(key) if isinstance(value, dict) else None


@implementer(IHandshakeListener)
class ClientConnection(Protocol):
    """One client connection; `GatewayClient` owns it and speaks HTTP/1.1 or HTTP/2 on it."""

    def __init__(self, owner: GatewayClient) -> None:
        self.owner = owner

    def connectionMade(self) -> None:
        self.owner._connected(self)

    def handshakeCompleted(self) -> None:
        self.owner._handshake_done()

    def dataReceived(self, data: bytes) -> None:
        self.owner._data(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.owner._lost(reason)


class GatewayClient:
    """A client connection to one listener of a `MemoryGateway` (made by ``MemoryGateway.client``).

    ``request`` sends a request and returns its `Response`, which fills in as the network is
    pumped (``gateway.flush()``/``advance()``); ``fetch`` does both. With ``body_follows=True`` the
    request body is sent with `send_body` and `end_body` (chunked on HTTP/1.1 unless a
    content-length header is given).
    """

    def __init__(self, gateway: Any, *, creator: Any = None, host: str = "localhost") -> None:
        self.gateway = gateway
        self.host = host
        self.tls = creator is not None
        self.alpn: str | None = None
        self.handshake_done = not self.tls
        self.closed = False
        self.close_reason: Any = None
        self.transport: Any = None
        self.protocol = "http/1.1"
        self.responses: list[Response] = []
        self._h1_waiting: list[Response] = []
        self._parser: Any = None
        self._h2: Any = None
        self._h2_streams: dict[int, Response] = {}
        self._h2_paused: list[tuple[int, int]] = []
        self._reading = True
        self._before_handshake: list[bytes] = []
        self.raw = b""  #: every byte received, for protocol-level assertions
        inner = Factory.forProtocol(lambda: ClientConnection(self))
        self.factory = TLSMemoryBIOFactory(creator, True, inner, clock=gateway.reactor) if self.tls else inner

    # -- connection events ---------------------------------------------------------------------
    def _connected(self, conn: ClientConnection) -> None:
        self.transport = conn.transport
        if not self.tls:
            self._start(None)

    def _handshake_done(self) -> None:
        self.handshake_done = True
        proto = self.transport.negotiatedProtocol
        self._start(proto.decode("ascii") if proto else None)

    def _start(self, alpn: str | None) -> None:
        self.alpn = alpn
        if alpn == "h2":
            import h2.config
            import h2.connection

            self.protocol = "h2"
            self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
            self._h2.initiate_connection()
            self._h2_flush()

    def _data(self, data: bytes) -> None:
        self.raw += data
        if self._h2 is not None:
            self._h2_data(data)
        else:
            self._h1_data(data)

    def _lost(self, reason: Any) -> None:
        self.closed = True
        self.close_reason = reason
        for r in self.responses:
            if not r.complete:
                if self._h1_delimited_by_close(r):
                    r.complete = True
                else:
                    r.reset = True

    # -- requests --------------------------------------------------------------------------------
    def request(self, method: str, path: str, headers: Headers = (), body: bytes = b"", *,
                body_follows: bool = False, host: str | None = None) -> Response:
        """Send a request now; its `Response` fills in as the network is pumped."""
        if not self.handshake_done:
            self.gateway.flush()
        if self.closed:
            raise ConnectionError(f"the connection is closed ({self.close_reason and self.close_reason.getErrorMessage()})")
        response = Response(method, path)
        self.responses.append(response)
        headers = list(headers)
        if self._h2 is not None:
            self._h2_request(response, headers, body, body_follows, host or self.host)
        else:
            self._h1_request(response, headers, body, body_follows, host or self.host)
        return response

    def fetch(self, method: str, path: str, headers: Headers = (), body: bytes = b"", **kw: Any) -> Response:
        """Send a request and pump the network until nothing moves; the (maybe incomplete) `Response`."""
        response = self.request(method, path, headers, body, **kw)
        self.gateway.flush()
        return response

    def get(self, path: str, headers: Headers = ()) -> Response:
        """``fetch("GET", path)``."""
        return self.fetch("GET", path, headers)

    def send_body(self, response: Response, data: bytes) -> None:
        """More request body for a request sent with ``body_follows=True``."""
        if self._h2 is not None:
            self._h2.send_data(response.stream_id, data)
            self._h2_flush()
        elif response.chunked_upload:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def end_body(self, response: Response) -> None:
        """End the body of a request sent with ``body_follows=True``."""
        if self._h2 is not None:
            self._h2.end_stream(response.stream_id)
            self._h2_flush()
        elif response.chunked_upload:
            self.transport.write(b"0\r\n\r\n")

    def pause_reading(self) -> None:
        """Stop reading (a slow client): unread bytes pile up and push back on the gateway."""
        self._reading = False
        self.wire.pauseProducing()

    def resume_reading(self) -> None:
        """Read again."""
        self._reading = True
        self.wire.resumeProducing()
        if self._h2 is not None:
            for length, sid in self._h2_paused:
                self._h2.acknowledge_received_data(length, sid)
            self._h2_paused.clear()
            self._h2_flush()
        self.gateway.flush()

    def close(self) -> None:
        """Close the connection (gracefully)."""
        if self.transport is not None:
            self.transport.loseConnection()
        self.gateway.flush()

    @property
    def wire(self) -> Any:
        """The in-memory TCP transport under this connection (below TLS)."""
        return self.transport.transport if self.tls else self.transport

    # -- HTTP/1.1 ----------------------------------------------------------------------------------
    def _h1_request(self, response: Response, headers: list, body: bytes, follows: bool, host: str) -> None:
        names = {k.lower() for k, _ in headers}
        lines = [f"{response.method} {response.path} HTTP/1.1\r\n"]
        if "host" not in names:
            lines.append(f"host: {host}\r\n")
        lines += [f"{k}: {v}\r\n" for k, v in headers]
        chunked = follows and "content-length" not in names and "transfer-encoding" not in names
        if chunked:
            lines.append("transfer-encoding: chunked\r\n")
        elif not follows and (body or response.method in ("POST", "PUT", "PATCH")) and "content-length" not in names:
            lines.append(f"content-length: {len(body)}\r\n")
        response.chunked_upload = chunked
        self._h1_waiting.append(response)
        self.transport.write("".join(lines).encode("latin-1") + b"\r\n" + body)

    def _h1_data(self, data: bytes) -> None:
        while data and self._h1_waiting:
            if self._parser is None:
                self._parser = httptools.HttpResponseParser(_H1Events(self))
            try:
                self._parser.feed_data(data)
                data = b""
            except httptools.HttpParserError:
                self._h1_waiting[0].reset = True
                self._h1_waiting.pop(0)
                data = b""

    def _h1_delimited_by_close(self, r: Response) -> bool:
        return (self._h2 is None and r.status is not None and r.header("content-length") is None
                and r.header("transfer-encoding") is None)

    # -- HTTP/2 --------------------------------------------------------------------------------------
    def _h2_request(self, response: Response, headers: list, body: bytes, follows: bool, host: str) -> None:
        conn = self._h2
        sid = conn.get_next_available_stream_id()
        response.stream_id = sid
        self._h2_streams[sid] = response
        pseudo = [(":method", response.method), (":path", response.path), (":scheme", "https"), (":authority", host)]
        conn.send_headers(sid, pseudo + [(k.lower(), v) for k, v in headers], end_stream=not body and not follows)
        if body:
            conn.send_data(sid, body, end_stream=not follows)
        self._h2_flush()

    def _h2_data(self, data: bytes) -> None:
        import h2.events
        import h2.exceptions

        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.loseConnection()
            return
        for ev in events:
            r = self._h2_streams.get(getattr(ev, "stream_id", None) or 0)
            if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                hs = [(k if isinstance(k, str) else k.decode("latin-1"), v if isinstance(v, str) else v.decode("latin-1"))
                      for k, v in ev.headers]
                r.status = int(dict(hs)[":status"])
                r.headers = [(k, v) for k, v in hs if not k.startswith(":")]
            elif isinstance(ev, h2.events.DataReceived) and r is not None:
                r.body += ev.data
                if self._reading:
                    self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                else:
                    self._h2_paused.append((ev.flow_controlled_length, ev.stream_id))
            elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                r.complete = True
            elif isinstance(ev, h2.events.StreamReset) and r is not None:
                r.reset = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                for other in self._h2_streams.values():
                    if not other.complete and other.stream_id > ev.last_stream_id:
                        other.reset = True
        self._h2_flush()

    def _h2_flush(self) -> None:
        out = self._h2.data_to_send()
        if out:
            self.transport.write(out)


class _H1Events:
    """httptools callbacks for the HTTP/1.1 response at the head of the queue."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.headers: list[tuple[str, str]] = []

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        c = self.client
        r = c._h1_waiting[0]
        status = c._parser.get_status_code()
        if status < 200:
            return
        r.status = status
        r.headers = self.headers
        if r.method == "HEAD":
            r.complete = True
            c._h1_waiting.pop(0)
            c._parser = None

    def on_body(self, body: bytes) -> None:
        c = self.client
        if c._h1_waiting:
            c._h1_waiting[0].body += body

    def on_message_complete(self) -> None:
        c = self.client
        if c._parser is not None and c._parser.get_status_code() < 200:
            return
        if c._h1_waiting:
            c._h1_waiting.pop(0).complete = True
