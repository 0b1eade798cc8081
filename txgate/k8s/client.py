# -*- test-case-name: tests.test_k8s_e2e,tests.test_k8s_unit -*-
"""A small Kubernetes API client over Twisted's HTTP client: JSON requests and watch streams, never blocking.

TLS verifies the API server against the cluster CA (kubeconfig or in-cluster ``ca.crt``); the bearer
token is read from its file again whenever the file changes (projected tokens rotate), so a rotated
token is used from the next request on.
"""
from __future__ import annotations

import json
import os
from urllib.parse import urlencode, urlsplit

from twisted.internet import defer, protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from txgate.k8s.kubeconfig import ClusterAccess


class ApiError(Exception):
    """An API call the server refused: ``status`` (HTTP), ``reason`` (Status.reason) and the server's message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status, self.reason, self.message = status, reason, message


def api_error(status: int, body: bytes) -> ApiError:
    """The ApiError of a refused request, from its Status object when there is one."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and obj.get("kind") == "Status":
        message = str(obj.get("message") or "")
        if status == 401:
            message += " (the API server accepted neither txgate's token nor its client certificate)"
        return ApiError(status, str(obj.get("reason") or ""), message)
    return ApiError(status, "", body[:200].decode("utf-8", "replace").strip() or "no message")


class TokenSource:
    """The bearer token: inline, or a file read again when its inode, size or mtime change."""

    def __init__(self, token: str | None, token_file: str | None) -> None:
        self.token, self.token_file = token, token_file
        self._stamp = None

    def current(self) -> str | None:
        """The token to send now (a file that cannot be read keeps the last token read)."""
        if self.token_file is None:
            return self.token
        try:
            st = os.stat(self.token_file)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp:
                with open(self.token_file, encoding="utf-8") as f:
                    self.token = f.read().strip() or None
                self._stamp = stamp
        except OSError:
            pass
        return self.token


@implementer(IPolicyForHTTPS)
class ClusterTLS:
    """TLS to the API server: the cluster CA as the only trust root, and the client certificate if any."""

    def __init__(self, access: ClusterAccess) -> None:
        from twisted.internet import ssl

        self.insecure = access.insecure
        self.trust = None
        if access.ca_pem:
            certs = [ssl.Certificate.loadPEM(block) for block in _pem_blocks(access.ca_pem)]
            self.trust = ssl.trustRootFromCertificates(certs)
        self.client = None
        if access.client_cert_pem:
            self.client = ssl.PrivateCertificate.loadPEM(access.client_cert_pem + b"\n" + access.client_key_pem)

    def creatorForNetloc(self, hostname: bytes, port: int):
        from twisted.internet import ssl

        if self.insecure:
            return ssl.CertificateOptions(verify=False)
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.trust,
                                       clientCertificate=self.client)


def _pem_blocks(pem: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [part + end for part in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in part]


class _Lines(protocol.Protocol):
    """A watch stream: one JSON event per line to ``on_event``; ``done`` fires when the stream ends."""

    def __init__(self, on_event, done: defer.Deferred, streams: set) -> None:
        self.on_event, self.done, self.streams = on_event, done, streams
        self.buf = b""

    def connectionMade(self) -> None:
        self.streams.add(self)

    def stop(self) -> None:
        """Drop the stream (the watch ends with a failure); nothing once it has ended."""
        if self in self.streams:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.on_event(event)

    def connectionLost(self, reason) -> None:
        self.streams.discard(self)
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class KubeClient:
    """JSON requests and watches against one API server."""

    def __init__(self, access: ClusterAccess, reactor, *, connect_timeout: float = 10.0) -> None:
        self.access = access
        self.reactor = reactor
        self.tokens = TokenSource(access.token, access.token_file)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.retryAutomatically = False
        self.agent = Agent(reactor, contextFactory=ClusterTLS(access), pool=self.pool,
                           connectTimeout=connect_timeout)
        self.base = access.server.encode("ascii")
        self.streams: set = set()  # open watch streams

    def url(self, path: str, query: dict | None = None) -> bytes:
        """The full URL of an API path (with its query)."""
        return self.base + path.encode("ascii") + (b"?" + urlencode(query).encode() if query else b"")

    def _headers(self, content_type: str | None = None) -> Headers:
        h = Headers({b"Accept": [b"application/json"], b"User-Agent": [b"txgate"]})
        token = self.tokens.current()
        if token:
            h.addRawHeader(b"Authorization", b"Bearer " + token.encode())
        if content_type:
            h.addRawHeader(b"Content-Type", content_type.encode())
        return h

    @defer.inlineCallbacks
    def request(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        """Deferred[dict]: the decoded JSON answer; an ApiError for a 4xx/5xx answer."""
        from twisted.web.client import FileBodyProducer
        from io import BytesIO

        producer = FileBodyProducer(BytesIO(json.dumps(body).encode())) if body is not None else None
        response = yield self.agent.request(method.encode(), self.url(path, query),
                                            self._headers("application/json" if body is not None else None),
                                            producer)
        data = yield readBody(response)
        if response.code >= 400:
            raise api_error(response.code, data)
        return json.loads(data)

    @defer.inlineCallbacks
    def watch(self, path: str, query: dict, on_event, on_stream=None):
        """Deferred firing when a watch stream ends (None) or breaks (failure); ``on_event(dict)`` per event.

        ``on_stream(stream)`` gets the open stream (``stream.stop()`` drops it)."""
        response = yield self.agent.request(b"GET", self.url(path, dict(query, watch="1")), self._headers())
        if response.code >= 400:
            data = yield readBody(response)
            raise api_error(response.code, data)
        done: defer.Deferred = defer.Deferred()
        stream = _Lines(on_event, done, self.streams)
        response.deliverBody(stream)
        if on_stream is not None:
            on_stream(stream)
        yield done

    def close(self) -> defer.Deferred:
        """Drop the watch streams and close the pooled connections."""
        for stream in list(self.streams):
            stream.stop()
        return self.pool.closeCachedConnections()


def host_of(server: str) -> str:
    """The host of an API server URL (for messages)."""
    return urlsplit(server).netloc
