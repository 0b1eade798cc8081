# -*- test-case-name: tests.test_testing_harness -*-
"""Upstream doubles: HTTP/1.1 servers in memory that record what they receive and answer from a script."""
from __future__ import annotations

import enum
import json as _json
from collections import deque
from typing import Any, Callable, Union
from urllib.parse import urlsplit

import attrs
import httptools
from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from txgate.tls.certs import CertifiedKey
from txgate.testing.network import MemoryNetwork, address, never_answer, refuse


# -- what a double does with a request ----------------------------------------------------------
@attrs.frozen
class Respond:
    """Answer with a complete response: Content-Length, chunked (``chunked=True``) or ended by closing
    the connection (``close_delimited=True``)."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    chunked: bool = False
    close_delimited: bool = False

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Respond:
        """A JSON response."""
        return cls(status, _json.dumps(value).encode(), (("content-type", "application/json"), *headers))


@attrs.frozen
class Hang:
    """Do not answer (the connection stays open) until `UpstreamDouble.release` says how."""


@attrs.frozen
class Drop:
    """Close the connection without answering (a reset), e.g. a keep-alive connection the server had closed."""


@attrs.frozen
class CloseMidBody:
    """Send the head announcing ``length`` bytes, then ``body`` (fewer), then reset the connection."""

    status: int = 200
    body: bytes = b"partial"
    length: int = 1000


Action = Union[Respond, Hang, Drop, CloseMidBody]


class Connect(enum.Enum):
    """How a double answers connection attempts."""

    ACCEPT = "accept"  #: TCP (and TLS, with a certificate) succeed
    REFUSE = "refuse"  #: ``ConnectionRefusedError`` at once, like a closed port
    NEVER = "never"  #: no answer: the attempt fails after the caller's connect timeout
    SILENT = "silent"  #: TCP is accepted but nothing is ever sent (a TLS handshake that never ends)


# -- what a double received ---------------------------------------------------------------------
@attrs.define
class RecordedRequest:
    """One request as the upstream received it (header names lower-cased, in arrival order)."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    connection: int  #: index into `UpstreamDouble.connections` of the connection it came on
    body: bytes = b""
    complete: bool = False

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of a header, in order."""
        name = name.lower()
        return [v for k, v in self.headers if k == name]


@attrs.define
class UpstreamConnectionRecord:
    """One connection a double accepted."""

    index: int
    transport: Any = None
    closed: bool = False
    tls_version: str | None = None

    @property
    def write_paused(self) -> bool:
        """Whether the gateway stopped reading, so this connection was told to stop sending."""
        return bool(getattr(self.transport, "producer_paused", False))


class UpstreamDouble:
    """An HTTP/1.1 upstream at one URL of a `MemoryNetwork` (``https://`` needs ``certificate``).

    Requests get the next queued `Action` (`queue`), else ``handler(request)``'s, else ``Respond(200, b"ok")``.
    Everything received is in `requests`; accepted connections in `connections`; ``connect``
    (a `Connect`) says how connection attempts are answered.
    """

    def __init__(self, network: MemoryNetwork, url: str, *, certificate: CertifiedKey | None = None,
                 handler: Callable[[RecordedRequest], Action] | None = None,
                 require_client_certificate: bool = False, tls_max: str = "1.3",
                 connect: Connect = Connect.ACCEPT) -> None:
        parts = urlsplit(url)
        self.network = network
        self.url = url
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.handler = handler
        self.connect = connect
        self.requests: list[RecordedRequest] = []
        self.connections: list[UpstreamConnectionRecord] = []
        self._queue: deque[Action] = deque()
        self.held: deque[tuple[_UpstreamServer, RecordedRequest]] = deque()
        self._tls_creator = None
        if self.tls:
            if certificate is None:
                raise ValueError(f"{url}: an https:// upstream double needs a certificate")
            from txgate.tls.server import ServerTLS

            verify = None
            if require_client_certificate:
                verify = (SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
            self._tls_creator = ServerTLS(default=certificate, alpn=("http/1.1",), max_tls=tls_max, verify=verify)
        network.register(self.host, self.port, self)

    def queue(self, *actions: Action) -> UpstreamDouble:
        """Answer the next requests (in arrival order) with these actions."""
        self._queue.extend(actions)
        return self

    def release(self, action: Action | None = None) -> RecordedRequest:
        """Answer the oldest request held by `Hang` (default ``Respond(200, b"ok")``); that request."""
        server, request = self.held.popleft()
        if not server.gone:
            server._perform(action or Respond(200, b"ok"))
        self.network.flush()
        return request

    @property
    def bodies(self) -> list[bytes]:
        """The bodies of the requests received so far."""
        return [r.body for r in self.requests]

    # -- the network's side --------------------------------------------------------------------
    def connection_attempt(self, network: MemoryNetwork, factory: Any, connector: Any, timeout: float) -> None:
        """Answer one connectTCP call according to `connect`."""
        if self.connect is Connect.REFUSE:
            refuse(factory, connector)
            return
        if self.connect is Connect.NEVER:
            never_answer(network, factory, connector, timeout)
            return
        record = UpstreamConnectionRecord(len(self.connections))
        self.connections.append(record)
        server: Any = _Silent(record) if self.connect is Connect.SILENT else _UpstreamServer(self, record)
        if self._tls_creator is not None and self.connect is not Connect.SILENT:
            inner = Factory.forProtocol(lambda: server)
            tls_factory = TLSMemoryBIOFactory(self._tls_creator, False, inner, clock=network.reactor)
            server = tls_factory.buildProtocol(None)
        link = network.accept(factory, server, to=address(self.host, self.port), connector=connector)
        record.transport = link.server

    def _next_action(self, request: RecordedRequest) -> Action:
        if self._queue:
            return self._queue.popleft()
        if self.handler is not None:
            return self.handler(request)
        return Respond(200, b"ok")


class _Silent(Protocol):
    """Accepts the connection and never says anything."""

    def __init__(self, record: UpstreamConnectionRecord) -> None:
        self.record = record

    def connectionLost(self, reason: Any = None) -> None:
        self.record.closed = True


class _UpstreamServer(Protocol):
    """One accepted connection: parses requests, records them and performs their actions."""

    def __init__(self, double: UpstreamDouble, record: UpstreamConnectionRecord) -> None:
        self.double = double
        self.record = record
        self.parser = httptools.HttpRequestParser(self)
        self.current: RecordedRequest | None = None
        self._headers: list[tuple[str, str]] = []
        self._url = b""
        self.gone = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(_Nothing(), True)

    def dataReceived(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self._write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.gone = True
        self.record.closed = True

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.record.tls_version is None and hasattr(self.transport, "getHandle"):
            self.record.tls_version = self.transport.getHandle().get_protocol_version_name()
        self.current = RecordedRequest(self.parser.get_method().decode("ascii"), self._url.decode("latin-1"),
                                       self._headers, self.record.index)
        self.double.requests.append(self.current)

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.body += body

    def on_message_complete(self) -> None:
        request, self.current = self.current, None
        if request is None:
            return
        request.complete = True
        self._last = request
        self._perform(self.double._next_action(request))

    def _perform(self, action: Action) -> None:
        if isinstance(action, Hang):
            self.double.held.append((self, self._last))
            return
        if isinstance(action, Drop):
            self.transport.abortConnection()
            return
        if isinstance(action, CloseMidBody):
            self._write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%b" % (action.status, action.length, action.body))
            self.transport.abortConnection()
            return
        head = [b"HTTP/1.1 %d X\r\n" % action.status]
        names = {k.lower() for k, _ in action.headers}
        for k, v in action.headers:
            head.append(f"{k}: {v}\r\n".encode("latin-1"))
        if action.chunked:
            if "transfer-encoding" not in names:
                head.append(b"transfer-encoding: chunked\r\n")
            body = (b"%x\r\n%b\r\n" % (len(action.body), action.body) if action.body else b"") + b"0\r\n\r\n"
        elif action.close_delimited:
            body = action.body
        else:
            if "content-length" not in names:
                head.append(b"content-length: %d\r\n" % len(action.body))
            body = action.body
        self._write(b"".join(head) + b"\r\n" + body)
        if action.close_delimited or not self.parser.should_keep_alive() or "close" in {v.lower() for k, v in action.headers if k.lower() == "connection"}:
            # TLS sends close_notify only once no producer is registered.
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def _write(self, data: bytes) -> None:
        self.transport.write(data)


class _Nothing:
    """A streaming producer with nothing to pause: lets the link report backpressure on the record."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
