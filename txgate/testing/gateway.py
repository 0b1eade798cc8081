# -*- test-case-name: tests.test_testing_harness -*-
"""The in-memory gateway: a gw.ini text run on a MemoryReactorClock, with clients, upstream doubles and logs."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Iterable, Sequence

from twisted.internet import defer
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from txgate.config import parse_text
from txgate.plan import prepare
from txgate.runtime.gateway import GatewayService
from txgate.tls.certs import CertifiedKey, private_key_pem
from txgate.testing.client import GatewayClient, Response
from txgate.testing.network import MemoryNetwork
from txgate.testing.upstream import UpstreamDouble


class LogCapture:
    """Collects the text of every ``twisted.logger`` event while installed."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.installed = False

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def install(self) -> None:
        """Start collecting."""
        if not self.installed:
            globalLogPublisher.addObserver(self)
            self.installed = True

    def uninstall(self) -> None:
        """Stop collecting (events so far are kept)."""
        if self.installed:
            globalLogPublisher.removeObserver(self)
            self.installed = False

    @property
    def lines(self) -> list[str]:
        """Every event as its text line."""
        return [formatEvent(e) or "" for e in self.events]

    def error_detail(self, request_id: str | None) -> str:
        """The details of the one error logged for ``request_id`` (what the body says only with error_detail = on)."""
        found = [e for e in self.events if e.get("request_id") == request_id and "why" in e]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} error log lines for request {request_id!r}")
        return found[0]["why"]

    def matching(self, pattern: str) -> list[str]:
        """The lines matching a regular expression (``re.search``)."""
        rx = re.compile(pattern)
        return [line for line in self.lines if rx.search(line)]


def client_creator(server_name: str, *, ca: Any = None, alpn: Sequence[str] | None = ("h2", "http/1.1"),
                   certificate: CertifiedKey | None = None) -> Any:
    """A TLS client connection creator: trusts ``ca`` (a PEM path, PEM bytes or a `TestPKI`), offers ``alpn``."""
    trust = None
    if ca is not None:
        if hasattr(ca, "ca_path"):
            ca = ca.ca_path
        pem = ca if isinstance(ca, bytes) else open(ca, "rb").read()
        trust = Certificate.loadPEM(pem)
    client_cert = None
    if certificate is not None:
        from cryptography.hazmat.primitives.serialization import Encoding

        client_cert = PrivateCertificate.loadPEM(certificate.leaf.public_bytes(Encoding.PEM) + private_key_pem(certificate.key))
    protos = [p.encode("ascii") for p in alpn] if alpn else None
    return optionsForClientTLS(server_name, trustRoot=trust, clientCertificate=client_cert, acceptableProtocols=protos)


def gateway_ini(certificate: CertifiedKey, apis: str = "", *, listener: str = "", gateway: str = "") -> str:
    """A small gw.ini: admin off, no access log, TLS listener ``main`` on 127.0.0.1:0 with ``certificate``, then ``apis``.

    ``listener`` and ``gateway`` are extra ``key = value`` lines for those sections.
    """
    return (f"[admin]\nbind = off\n[gateway]\naccess_log = off\n{gateway}\n"
            f"[listener:main]\nbind = 127.0.0.1:0\ncertificate = {certificate.cert_path} {certificate.key_path}\n"
            f"{listener}\n{apis}")


class MemoryGateway:
    """txgate from a gw.ini text, running on a `MemoryReactorClock`: no sockets, no threads, no real time.

    Listeners accept `GatewayClient` connections (`client`), upstream URLs of the config are
    answered by `UpstreamDouble` objects (`upstream`), the clock moves only with `advance`, and
    every log line is in `logs`. Certificates and keys are read from the files the config names
    (a `TestPKI` makes them); nothing is written unless ``create_state=True``.
    """

    def __init__(self, ini: str, *, path: str = "gw.ini", pki: Any = None, reactor: MemoryReactorClock | None = None,
                 now: datetime | None = None, create_state: bool = False) -> None:
        self.network = MemoryNetwork(reactor)
        self.reactor = self.network.reactor
        self.pki = pki
        self.logs = LogCapture()
        self.logs.install()
        try:
            self.config = parse_text(ini, path)
            from txgate.metrics import Metrics

            self.metrics = Metrics()
            prepared = prepare(self.config, now=now, check_ports=False, create_state=create_state)
            self.service = GatewayService(prepared, self.reactor, metrics=self.metrics)
            # Reloads prepare in a thread in production; here they run inline, on the memory reactor.
            self.service.run_blocking = lambda fn, *args: defer.maybeDeferred(fn, *args)
            first = len(self.reactor.tcpServers)
            self.service.startService()
        except BaseException:
            self.logs.uninstall()
            raise
        # startService listens once per listener, in config order.
        bound = self.reactor.tcpServers[first:]
        self.listeners: dict[str, Any] = {ln.name: bound[i][1] for i, ln in enumerate(self.config.listeners)}
        self.stopped = False
        self.network.flush()

    # -- doubles and clients -----------------------------------------------------------------------
    def upstream(self, url: str, **kw: Any) -> UpstreamDouble:
        """An `UpstreamDouble` answering at ``url`` (``https://`` ones need ``certificate=``)."""
        return UpstreamDouble(self.network, url, **kw)

    def client(self, listener: str | None = None, *, alpn: Sequence[str] | None = ("http/1.1",),
               server_name: str = "localhost", ca: Any = None, certificate: CertifiedKey | None = None,
               creator: Any = None, tls: bool | None = None) -> GatewayClient:
        """Connect a client to a listener (the first by default); ALPN ``("h2",)`` for HTTP/2.

        The client trusts ``ca`` (default: the `TestPKI` given to the gateway) and sends
        ``certificate`` when asked for one; ``creator`` replaces the whole TLS client setup, and
        ``tls=False`` connects without TLS (e.g. plain HTTP to a TLS port).
        """
        name = listener or self.config.listeners[0].name
        ln = next(item for item in self.config.listeners if item.name == name)
        use_tls = ln.tls if tls is None else tls
        if use_tls and creator is None:
            creator = client_creator(server_name, ca=ca if ca is not None else self.pki, alpn=alpn, certificate=certificate)
        client = GatewayClient(self, creator=creator if use_tls else None, host=server_name)
        self.network.connect(client.factory.buildProtocol(None), self.listeners[name],
                             to=self.network.client_address(ln.host or "0.0.0.0"))
        self.flush()
        return client

    def fetch(self, method: str, path: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
              **client_kw: Any) -> Response:
        """One request on a new client connection (HTTP/1.1 unless ``alpn=("h2",)``)."""
        return self.client(**client_kw).fetch(method, path, headers, body)

    def get(self, path: str, **client_kw: Any) -> Response:
        """``fetch("GET", path)`` on a new connection."""
        return self.fetch("GET", path, **client_kw)

    # -- time --------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Deliver everything in flight and run the calls due now."""
        self.network.flush()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the gateway's clock (timers fire in order, the network flushed between)."""
        self.network.advance(seconds)

    # -- lifetime -----------------------------------------------------------------------------------
    def reload(self) -> Any:
        """Reload from the same config (inline); the `ReloadResult`."""
        out: list = []
        self.service.reload("test").addBoth(out.append)
        self.flush()
        return out[0] if out else None

    def stop(self, timeout: float | None = None) -> None:
        """Stop the gateway as SIGTERM does (drain, then close), letting up to shutdown_timeout pass."""
        if self.stopped:
            return
        self.stopped = True
        try:
            done: list = []
            self.service.stopService().addBoth(done.append)
            limit = timeout if timeout is not None else self.config.gateway.shutdown_timeout + 1
            step = 0.05
            waited = 0.0
            while not done and waited <= limit:
                self.advance(step)
                waited += step
            if not done:
                raise AssertionError(f"the gateway did not stop within {limit:g}s of its clock")
        finally:
            self.logs.uninstall()

    def __enter__(self) -> MemoryGateway:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
