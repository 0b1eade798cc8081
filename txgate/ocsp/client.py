# -*- test-case-name: tests.test_ocsp_unit,tests.test_ocsp_e2e -*-
"""OCSP status of client certificates: asked after the handshake, cached, one query in flight per certificate.

pyOpenSSL's verify callback runs inside the handshake and cannot wait for I/O, so the question is
asked when the handshake has completed and answered before the connection's first request is
dispatched (``txgate.runtime.listener.Negotiator`` holds the bytes meanwhile). A cache hit answers at
once. ``decide`` turns an answer and the listener's mode (soft/hard) into the refusal the
dispatcher gives every mTLS request of that connection.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from twisted.internet import defer
from twisted.logger import Logger

from txgate.errors import ClientCertificateRevoked, ClientCertificateStatusUnknown, GatewayError
from txgate.ocsp.check import OCSPError, Status, build_request, cert_key, responder_url, verify_response

log = Logger(namespace="txgate.ocsp")

#: ConnectionInfo.extra key: the GatewayError every mTLS request of the connection gets (absent: allowed).
OCSP_REFUSAL = "ocsp-refusal"
#: Cached answers kept at most (least recently used dropped first).
MAX_ENTRIES = 10000


@dataclass(frozen=True)
class Answer:
    """What the check found: good | revoked | unknown (the responder does not know, or could not be asked)."""

    status: str
    detail: str = ""


def decide(answer: Answer, mode: str) -> GatewayError | None:
    """The refusal for a connection (None: serve it), by answer and ``client_ocsp`` mode."""
    if answer.status == "revoked":
        return ClientCertificateRevoked()
    if answer.status == "good" or mode != "hard":
        return None
    return ClientCertificateStatusUnknown()


class ClientStatusChecker:
    """One per process (survives reloads): the answer cache and the in-flight queries."""

    def __init__(self, clock, fetch, *, max_entries: int = MAX_ENTRIES, metrics=None) -> None:
        self.clock = clock
        self.fetch = fetch  # (url, request_der, timeout) -> Deferred[bytes]
        self.max_entries = max_entries
        self.metrics = metrics
        self.cache: OrderedDict[str, Status] = OrderedDict()
        self.inflight: dict[str, list[defer.Deferred]] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), timezone.utc)

    def check(self, cert: x509.Certificate, issuer: x509.Certificate, responder: str | None,
              timeout: float) -> defer.Deferred:
        """Deferred[Answer] (already fired on a cache hit); never fails."""
        url = responder or responder_url(cert)
        if url is None:
            return defer.succeed(Answer("unknown", "no OCSP responder known for this certificate"))
        key = cert_key(cert, issuer)
        cached = self.cache.get(key)
        if cached is not None:
            if cached.current(self._now()):
                self.cache.move_to_end(key)
                return defer.succeed(Answer(cached.status))
            del self.cache[key]
        waiter: defer.Deferred = defer.Deferred()
        waiters = self.inflight.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self.inflight[key] = [waiter]
        d = self.fetch(url, build_request(cert, issuer), timeout)
        d.addCallback(self._verify, key, cert, issuer)
        d.addErrback(lambda f: Answer("unknown", f.getErrorMessage()))
        d.addCallback(self._answer, key)
        return waiter

    def _verify(self, der: bytes, key: str, cert, issuer) -> Answer:
        try:
            status = verify_response(der, cert, issuer, self._now())
        except OCSPError as e:
            return Answer("unknown", f"response not usable: {e}")
        self.cache[key] = status
        self.cache.move_to_end(key)
        while len(self.cache) > self.max_entries:
            self.cache.popitem(last=False)
        return Answer(status.status, "" if status.status != "unknown" else "the responder does not know it")

    def _answer(self, answer: Answer, key: str) -> None:
        if answer.status == "unknown" and self.metrics is not None:
            self.metrics.ocsp_fetch_failed("client")
        for w in self.inflight.pop(key, []):
            w.callback(answer)


@dataclass(frozen=True)
class ClientPolicy:
    """One listener's client_ocsp settings, with the process's checker."""

    checker: ClientStatusChecker
    mode: str  # soft | hard
    responder: str | None
    timeout: float

    def check(self, cert: x509.Certificate, issuer: x509.Certificate) -> defer.Deferred:
        """Deferred[Answer] for this listener's settings."""
        return self.checker.check(cert, issuer, self.responder, self.timeout)
