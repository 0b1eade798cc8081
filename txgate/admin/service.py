# -*- test-case-name: tests.test_admin_e2e -*-
"""``AdminService``: the admin API listener (a twisted Service), plain HTTP or mTLS, optional bearer token.

Contract (for ``txgate.runtime``)::

    from txgate.admin.config import AdminConfig
    from txgate.admin.service import AdminService
    from txgate.metrics import Metrics

    metrics = Metrics()                      # also passed to every ListenerDispatcher(metrics=...)
    admin = AdminService(facade, admin_config, reactor, metrics=metrics)
    admin.setServiceParent(top)              # startService binds; stopService stops listening
    admin.port_of()                          # the bound port (bind_port may be 0)

- ``facade``: a ``txgate.admin.facade.GatewayFacade``; ``metrics.attach(facade)`` is done here.
- ``admin_config``: an ``AdminConfig``; check the token file (``txgate.admin.config.read_token``)
  and the CA bundle while validating the config, so a bad one is a config error rather than a
  startup crash (startService reads them again and raises ``AdminConfigError`` if they went bad).
- With ``client_ca``: TLS with a server certificate from the local CA in ``state_dir``
  (``state_dir/ca.pem`` is what admin clients trust), client certificates required and verified
  against ``client_ca`` by ``txgate.tls.clientverify.ClientVerifier`` (refusals logged with its
  reason codes, counted in ``txgate_tls_handshakes_total{listener="admin"}``).
- The startup line is ``admin API on http(s)://HOST:PORT (auth: token|mtls|mtls+token|none)``.
- Whatever the protection, requests a browser sends for another site (a ``Host`` or ``Origin``
  naming neither the bind address, a loopback name nor one of ``allowed_hosts``) are refused, and
  bodies must have a non-form Content-Type (see ``txgate.admin.api``). With ``client_ca`` the
  ``allowed_hosts`` names are also in the admin listener's server certificate.
"""
from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.web import http, server
from zope.interface import implementer

from txgate.admin.api import MAX_BODY, AdminResource
from txgate.admin.config import AdminConfig, AdminConfigError, read_token

log = Logger()


class _CappedContent(io.BytesIO):
    """A request body buffer that keeps at most MAX_BODY + 1 bytes (the API then answers 413)."""

    def write(self, data: bytes) -> int:  # type: ignore[override]
        room = MAX_BODY + 1 - self.tell()
        if room <= 0:
            return len(data)
        return super().write(data[:room]) if len(data) > room else super().write(data)


class AdminRequest(server.Request):
    """A request whose body buffer is bounded (no temporary files, no unbounded memory)."""

    def gotLength(self, length: int | None) -> None:
        self.content = _CappedContent()


@implementer(IHandshakeListener)
class AdminChannel(http.HTTPChannel):
    """HTTP/1.1 channel that logs (and counts) a refused or failed TLS handshake."""

    handshake_done = False

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        site = self.factory
        if site.metrics is not None:
            site.metrics.handshake("admin", _version(self.transport), "ok")

    def connectionLost(self, reason: Any) -> None:
        site = self.factory
        if site.tls and not self.handshake_done:
            _log_failed_handshake(site, self.transport, reason)
        super().connectionLost(reason)


def _version(transport: Any) -> str | None:
    try:
        v = transport.getHandle().get_protocol_version_name()
        return v if v and v != "Unknown" else None
    except Exception:
        return None


def _log_failed_handshake(site: AdminSite, transport: Any, reason: Any) -> None:
    from txgate.metrics import result_for_refusal
    from txgate.tls.outcomes import HandshakeOutcome, classify_handshake_failure

    failure = classify_handshake_failure(reason)
    code = detail = None
    if site.client_verifier is not None:
        code, detail = site.client_verifier.refusal(transport.getHandle(), failure.no_client_certificate)
    client = getattr(transport.getPeer(), "host", "?")
    if code is not None:
        result = result_for_refusal(code)
        log.info("admin API: TLS handshake with {client} refused: {code}: {detail}",
                 client=client, code=code, detail=detail)
    else:
        result = failure.outcome.value
        if failure.outcome is not HandshakeOutcome.ABORTED:
            log.info("admin API: TLS handshake with {client} failed: {why}", client=client, why=failure.why)
    if site.metrics is not None:
        site.metrics.handshake("admin", _version(transport), result)


class AdminSite(server.Site):
    """The admin API's Site: bounded bodies, no form parsing (PEM bodies stay out of ``request.args``)."""

    protocol = AdminChannel
    requestFactory = AdminRequest
    noisy = False  # our own startup line says where the admin API listens
    # No sessions, no "TWISTED_SESSION" cookie; Server header without the version.
    displayTracebacks = False

    def __init__(self, resource: AdminResource, *, metrics: Any, tls: bool, client_verifier: Any, reactor: Any):
        super().__init__(resource, parsePOSTFormSubmission=False, reactor=reactor)
        self.metrics = metrics
        self.tls = tls
        self.client_verifier = client_verifier

    def log(self, request: Any) -> None:
        """One line per admin request: method, path (no query string), status, client; never a body."""
        log.info("admin API: {client} {method} {path} {status}",
                 client=getattr(request.getClientAddress(), "host", "?"),
                 method=request.method.decode("latin-1"),
                 path=request.path.decode("latin-1"), status=request.code)


class AdminService(Service):
    """The admin API listener; see the module docstring for the constructor contract."""

    name = "txgate-admin"

    def __init__(self, facade: Any, admin_config: AdminConfig, reactor: Any = None, *, metrics: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.facade = facade
        self.config = admin_config
        self.reactor = reactor
        self.metrics = metrics
        if metrics is not None:
            metrics.attach(facade)
        self.port = None
        self.site: AdminSite | None = None
        self.ca_path: str | None = None  # the local CA admin clients trust (TLS only)

    def build_site(self) -> AdminSite:
        """The Site (and, with client_ca, the TLS wrapper's pieces); reads the token file and CA bundle."""
        cfg = self.config
        token = read_token(cfg.token_file) if cfg.token_file else None
        verifier = None
        if cfg.tls:
            from txgate.tls.certs import CertificateError, load_ca_bundle
            from txgate.tls.clientverify import ClientVerifier

            try:
                anchors = load_ca_bundle(cfg.client_ca)  # type: ignore[arg-type]
            except CertificateError as e:
                raise AdminConfigError("client_ca", str(e)) from None
            verifier = ClientVerifier(listener="admin", mode="require", anchors=anchors)
        resource = AdminResource(self.facade, metrics=self.metrics, token=token, bind_host=cfg.bind_host, tls=cfg.tls,
                                 allowed_hosts=cfg.allowed_hosts)
        return AdminSite(resource, metrics=self.metrics, tls=cfg.tls, client_verifier=verifier, reactor=self.reactor)

    def _server_tls(self, verifier: Any) -> Any:
        from txgate.tls.localca import LocalCA
        from txgate.tls.server import ServerTLS

        now = datetime.fromtimestamp(self.reactor.seconds(), timezone.utc)
        ca = LocalCA.ensure(self.config.state_dir, now=now)
        self.ca_path = ca.ca_path
        names = ["localhost", "127.0.0.1", "::1"]
        host = self.config.bind_host.strip("[]")
        if host and host not in ("0.0.0.0", "::") and host not in names:
            names.append(host)
        # The names clients may use (allowed_hosts) are in the certificate too, so https://NAME:PORT verifies.
        names.extend(h for h in self.config.allowed_hosts if h not in names)
        ck = ca.issue_server(names, now=now)
        return ServerTLS(default=ck, alpn=("http/1.1",), client_verifier=verifier)

    def startService(self) -> None:
        super().startService()
        cfg = self.config
        site = self.site = self.build_site()
        top: Any = site
        if cfg.tls:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            top = TLSMemoryBIOFactory(self._server_tls(site.client_verifier), False, site, clock=self.reactor)
            top.noisy = False
        self.port = self.reactor.listenTCP(cfg.bind_port, top, interface=cfg.bind_host.strip("[]"))
        addr = self.port.getHost()
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        log.info("admin API on {scheme}://{host}:{port} (auth: {auth})", scheme="https" if cfg.tls else "http",
                 host=host, port=addr.port, auth=cfg.auth)
        if cfg.tls:
            log.info("admin API: clients trust {ca} and present a certificate issued under {client_ca}",
                     ca=self.ca_path, client_ca=cfg.client_ca)
        elif cfg.auth == "none":
            log.warn("admin API without authentication (loopback only): set [admin] token_file or client_ca")

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def port_of(self) -> int:
        """The bound port."""
        return self.port.getHost().port  # type: ignore[union-attr]
