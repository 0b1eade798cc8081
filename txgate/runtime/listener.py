# -*- test-case-name: tests.test_negotiator_unit -*-
"""Downstream connections: TLS wrapping, ALPN choice of HTTP/1.1 or HTTP/2, connection limits."""
from __future__ import annotations

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txgate.http.closing import GRACE, Closer
from txgate.http.exchange import ConnectionInfo, Limits
from txgate.http.h1 import H1Connection
from txgate.tls.outcomes import HandshakeFailure, HandshakeOutcome, classify_handshake_failure
from txgate.tls.server import connection_facts
from txgate.tls.serverconn import TLSServerFactory

log = Logger(namespace="txgate.listener")


@implementer(IHandshakeListener)
class Negotiator(Protocol):
    """Waits for the TLS handshake, then hands the connection to the h1 or h2 protocol."""

    def __init__(self, factory: ListenerFactory, info: ConnectionInfo, tls: bool) -> None:
        self.factory = factory
        self.info = info
        self.tls = tls
        self.inner: Protocol | None = None
        self.timer = None
        self.handshake_timed_out = False
        # Bytes received while the client certificate's OCSP status is asked (None: not waiting).
        self.held: list[bytes] | None = None
        self.accepted = 0.0
        self.handshake_due = 0.0

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.connection_opened(self.info.listener)
        if self.tls:
            # A client that never completes the handshake is a slowloris too. The connection's one
            # timer (handed on to HTTP/1.1, then to the close) is first due within the close's grace:
            # a short connection's close then takes it over as it is (txgate.http.closing); one that
            # lives longer has it re-armed once for what is left.
            wait = self.factory.limits.header_timeout
            first = wait if wait < GRACE else GRACE
            self.timer = timer = self.factory.clock.callLater(first, self._handshake_timeout)
            self.accepted = timer.time - first  # the clock read callLater made (no second one)
            self.handshake_due = timer.time + (wait - first)
        else:
            self._start(None)

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.inner is None:
            clock = self.factory.clock
            left = self.handshake_due - clock.seconds()
            if left > 0:  # first due early (see connectionMade)
                self.timer = clock.callLater(left, self._handshake_timeout)
                return
            self.handshake_timed_out = True
            log.info("TLS handshake from {client} not completed within {t}s; closing",
                     client=self.info.client_host, t=self.factory.limits.header_timeout)
            self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def handshakeCompleted(self) -> None:
        # The handshake timer stays armed: _start hands it to the HTTP/1.1 protocol (one timer per connection).
        info = self.info
        info.sni, info.tls_version, info.cipher, info.alpn = connection_facts(self.transport)
        if self.factory.client_certs:
            self._capture_client_certificate()
        metrics = self.factory.metrics  # one O(1) count per handshake
        if metrics is not None:
            metrics.handshake(info.listener, info.tls_version, "ok", self.factory.clock.seconds() - self.accepted)
        if self.factory.client_ocsp is not None and self._ask_client_status(info.alpn):
            self._cancel_timer()  # the status check has its own deadline
            return
        self._start(info.alpn)

    def _ask_client_status(self, alpn: str | None) -> bool:
        """Start the OCSP check of a verified client certificate; True when it decides when to start."""
        from txgate.tls.clientauth import PEER

        peer = self.info.extra.get(PEER)
        if peer is None or not peer.verified:
            return False
        try:
            chain = self.transport.getHandle().get_verified_chain(as_cryptography=True)
        except Exception:
            chain = None
        if not chain or len(chain) < 2:
            return False
        self.held = []
        policy = self.factory.client_ocsp
        d = policy.check(chain[0], chain[1])
        d.addCallback(self._client_status, policy.mode, chain[0], alpn)
        d.addErrback(lambda f: log.failure("client OCSP check failed", f))
        return True

    def _client_status(self, answer, mode: str, cert, alpn: str | None) -> None:
        """The OCSP answer for this connection's client certificate: record the refusal, then start HTTP."""
        from txgate.ocsp.client import OCSP_REFUSAL, decide

        held, self.held = self.held, None
        if held is None:  # the connection went away meanwhile
            return
        refusal = decide(answer, mode)
        if refusal is not None:
            self.info.extra[OCSP_REFUSAL] = refusal
        if answer.status != "good":
            log.info("client {client} on {listener}: certificate serial {serial:x} OCSP status {status}{detail}: "
                     "{outcome}", client=self.info.client_host, listener=self.info.listener,
                     serial=cert.serial_number, status=answer.status,
                     detail=f" ({answer.detail})" if answer.detail else "",
                     outcome=refusal.code if refusal is not None else "allowed (client_ocsp = soft)")
        self._start(alpn)
        for data in held:
            if self.inner is None:
                break
            self.inner.dataReceived(data)

    def _capture_client_certificate(self) -> None:
        """Once per connection: the client's leaf DER and what its verification proved."""
        from cryptography.hazmat.primitives.serialization import Encoding

        from txgate.tls.clientauth import PEER, PeerCertificate

        try:
            conn = self.transport.getHandle()
            state = self.factory.client_certs.state_of(conn)
            leaf = getattr(state, "leaf", None)  # what the verify callback already parsed
            if leaf is not None:
                der, cert = leaf
            else:
                cert = conn.get_peer_certificate(as_cryptography=True)
                if cert is None:
                    return
                der = cert.public_bytes(Encoding.DER)
            called = getattr(state, "called", False)
            # No callback facts (e.g. a resumed session): never claim a verified chain.
            verified = bool(called and state.verified)
            cas = state.ca_fingerprints if verified else ()
            self.info.extra[PEER] = PeerCertificate(der, verified, cas, cert)
        except Exception:
            # Fail closed: the connection then has no client certificate for any API.
            log.failure("capturing the client certificate from {client} failed", client=self.info.client_host)

    def _start(self, alpn: str | None) -> None:
        f = self.factory
        if alpn == "acme-tls/1":
            # An ACME TLS-ALPN-01 validation: the handshake was the answer (RFC 8737 section 3).
            # Not a failed handshake: nothing more is read, and the close is any connection's (txgate.http.closing),
            # on the connection's one timer: a peer that never finishes it does not keep the connection.
            closer = Closer(self.transport, f.clock)
            self.inner = ChallengeAnswered(closer)
            timer, self.timer = self.timer, None
            closer.close(timer)
            return
        if alpn == "h2":
            from txgate.http.h2 import H2Connection

            self._cancel_timer()
            inner = H2Connection(f.dispatcher, self.info, f.limits, f.clock, engine=f.h2_engine)
        else:
            timer, self.timer = self.timer, None
            inner = H1Connection(f.dispatcher, self.info, f.limits, f.clock, timer=timer)
        self.inner = inner
        inner.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        inner = self.inner
        if inner is not None:
            inner.dataReceived(data)
        elif self.held is not None:
            self.held.append(data)

    def connectionLost(self, reason=None) -> None:
        self.factory.connections.discard(self)
        if self.factory.metrics is not None:
            self.factory.metrics.connection_closed(self.info.listener)
        if self.timer is not None:  # (handed to the HTTP/1.1 protocol once it started)
            self._cancel_timer()
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif self.held is not None:
            self.held = None  # lost while its client certificate's status was asked
        elif self.tls:
            failure = classify_handshake_failure(reason)
            refused = self.factory.client_certs and self._client_certificate_refused(failure)
            if not refused and failure.outcome is not HandshakeOutcome.ABORTED:
                log.info("TLS handshake with {client} on {listener} failed: {why}",
                         client=self.info.client_host, listener=self.info.listener, why=failure.why)
            metrics = self.factory.metrics  # the failed handshake's result (a refusal reason code, or its kind)
            if metrics is not None:
                from txgate.metrics import result_for_refusal

                if refused:
                    result = result_for_refusal(refused)
                elif self.handshake_timed_out:
                    result = "timeout"
                else:
                    result = failure.outcome.value
                metrics.handshake(self.info.listener, None, result)
                if result != "aborted":  # scanners and health checks that just connect are no news
                    metrics.handshake_failure(self.factory.clock.seconds(), self.info.listener,
                                              self.info.client_host, result)

    def _client_certificate_refused(self, failure: HandshakeFailure) -> str | None:
        """Log the one line of a handshake refused for its client certificate; its reason code, or None."""
        code, detail = self.factory.client_certs.refusal(self.transport.getHandle(), failure.no_client_certificate)
        if code is None:
            return None
        log.info("TLS handshake with {client} on {listener} refused: {code}: {detail}",
                 client=self.info.client_host, listener=self.info.listener, code=code, detail=detail)
        return code

    def shutdown(self) -> None:
        """Graceful shutdown of this connection."""
        if self.inner is not None and hasattr(self.inner, "shutdown"):
            self.inner.shutdown()
        else:
            self.transport.loseConnection()


class ChallengeAnswered(Protocol):
    """After an ACME TLS-ALPN-01 handshake: reads nothing; its close ends with the connection."""

    def __init__(self, closer: Closer) -> None:
        self.closer = closer

    def connectionLost(self, reason=None) -> None:
        self.closer.cancel()


class ListenerFactory(Factory):
    """Builds one Negotiator per accepted connection; the one place that refuses connections above the limit."""

    def __init__(self, name: str, dispatcher, limits: Limits, clock, *, tls: bool, max_connections: int,
                 client_certs=None, metrics=None, client_ocsp=None, h2_engine: type | None = None) -> None:
        self.name = name
        # txgate.ocsp.client.ClientPolicy when client_ocsp is on: asked after the handshake, before HTTP.
        self.client_ocsp = client_ocsp
        # The HTTP/2 engine class (`txgate.http.h2engine.select_engine`); None: "auto".
        self.h2_engine = h2_engine
        self.metrics = metrics  # txgate.metrics.Metrics: handshake outcomes (None: not counted)
        # The listener's ClientVerifier when it asks for client certificates: captured at handshakeCompleted.
        self.client_certs = client_certs
        self.dispatcher = dispatcher
        self.limits = limits
        self.clock = clock
        self.tls = tls
        self.max_connections = max_connections
        self.connections: set[Negotiator] = set()
        self.refused = 0

    def accepting(self) -> bool:
        """False (and a throttled warning) when max_connections are open: refuse the connection.

        ``wrap_tls`` passes the refusal through, so nothing is built for it (TLS included)."""
        if len(self.connections) < self.max_connections:
            return True
        self.refused += 1
        if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
            log.warn("listener {name}: {n} connections open (max_connections); refusing new ones",
                     name=self.name, n=len(self.connections), refused=self.refused)
        return False

    def buildProtocol(self, addr):
        if len(self.connections) >= self.max_connections and not self.accepting():
            return None
        try:
            host, port = addr.host, addr.port
        except AttributeError:  # not an IP address
            host, port = getattr(addr, "host", "?"), getattr(addr, "port", 0)
        info = ConnectionInfo(self.name, host, port, tls=self.tls)
        return Negotiator(self, info, self.tls)


def wrap_tls(factory: ListenerFactory, server_tls, clock):
    """Put TLS under a listener factory: txgate's own server-side TLS protocol (``clock``: unused).

    A connection the factory refuses gets no TLS protocol either (``TLSServerFactory`` passes the None on)."""
    return TLSServerFactory(server_tls, factory)
