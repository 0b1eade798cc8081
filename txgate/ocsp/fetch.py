# -*- test-case-name: tests.test_ocsp_e2e -*-
"""Ask an OCSP responder over HTTP with Twisted's ``Agent`` (never blocks the reactor).

RFC 6960 appendix A: GET ``URL/base64(request)`` when that is under 255 bytes, else POST with
``application/ocsp-request``. The answer must be a 200 with a body under ``MAX_RESPONSE`` bytes.
"""
from __future__ import annotations

import base64
from io import BytesIO
from urllib.parse import quote

from twisted.internet import defer
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from txgate.ocsp.check import OCSPError

MAX_RESPONSE = 64 * 1024
GET_LIMIT = 255


class FetchError(OCSPError):
    """The responder could not be asked or answered badly; ``reason`` is a metric label."""


def request_target(url: str, request_der: bytes) -> tuple[bytes, bytes, bytes | None]:
    """(method, url, body) for one OCSP request: GET for small requests, else POST."""
    encoded = quote(base64.b64encode(request_der).decode("ascii"), safe="")
    get_url = url + ("" if url.endswith("/") else "/") + encoded
    if len(get_url) <= GET_LIMIT:
        return b"GET", get_url.encode("ascii"), None
    return b"POST", url.encode("ascii"), request_der


class Fetcher:
    """Fetches OCSP responses with one Agent (HTTP and HTTPS responders)."""

    def __init__(self, reactor, agent=None) -> None:
        self.reactor = reactor
        self.agent = agent if agent is not None else Agent(reactor, connectTimeout=10)

    def __call__(self, url: str, request_der: bytes, timeout: float) -> defer.Deferred:
        """Deferred[bytes] of the DER response; fails with FetchError (timeouts included)."""
        method, target, body = request_target(url, request_der)
        headers = Headers({b"user-agent": [b"txgate"], b"accept": [b"application/ocsp-response"]})
        producer = None
        if body is not None:
            headers.addRawHeader(b"content-type", b"application/ocsp-request")
            producer = FileBodyProducer(BytesIO(body))
        d = defer.maybeDeferred(self.agent.request, method, target, headers, producer)
        d.addCallback(_read)
        d.addTimeout(timeout, self.reactor)
        d.addErrback(_as_fetch_error, timeout)
        return d


def _read(response) -> defer.Deferred:
    if response.code != 200:
        response.deliverBody(_Discard())
        raise FetchError("http_status", f"HTTP {response.code}")
    length = response.length
    if isinstance(length, int) and length > MAX_RESPONSE:
        response.deliverBody(_Discard())
        raise FetchError("too_large", f"{length} bytes")
    d = readBody(response)

    def check(body: bytes) -> bytes:
        if len(body) > MAX_RESPONSE:
            raise FetchError("too_large", f"{len(body)} bytes")
        return body

    return d.addCallback(check)


def _as_fetch_error(failure, timeout: float):
    if failure.check(FetchError):
        return failure
    if failure.check(defer.TimeoutError, defer.CancelledError):
        raise FetchError("timeout", f"no answer within {timeout:g}s")
    raise FetchError("unreachable", failure.getErrorMessage() or failure.type.__name__)


class _Discard:
    """A body protocol that drops what it gets (a refused response)."""

    def makeConnection(self, transport) -> None:
        try:
            transport.stopProducing()
        except Exception:
            pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason) -> None:
        pass
