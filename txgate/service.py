"""makeService(config) -> MultiService: builds the runtime objects and owns their lifetime."""
from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger

from txgate.accesslog import AccessLog
from txgate.config import ApiConfig, CertSpec, Config, ConfigError, ListenerConfig
from txgate.dispatch import ApiRuntime, ListenerDispatcher
from txgate.http.exchange import Limits
from txgate.listener import ListenerFactory, wrap_tls

log = Logger()


@dataclass
class Prepared:
    """Everything validated and loaded from a Config, before anything binds."""

    config: Config
    server_tls: dict = field(default_factory=dict)  # listener name -> ServerTLS
    upstream_tls: dict = field(default_factory=dict)  # (api name, target label) -> UpstreamTLS
    warnings: list = field(default_factory=list)
    local_ca_path: str | None = None
    allowlists: dict = field(default_factory=dict)  # api name -> clientauth.Allowlist (mtls = require)
    client_verifiers: dict = field(default_factory=dict)  # listener name -> clientverify.ClientVerifier


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _load_pair(config: Config, section: str, key: str, spec: CertSpec, now: datetime):
    from txgate.tls.certs import CertificateError, load_certified_key

    try:
        return load_certified_key(spec.cert_path, spec.key_path, now=now)
    except CertificateError as e:
        raise ConfigError(config.path, section, key, str(e)) from None


def _local_names(config: Config, listener: ListenerConfig) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    if listener.host not in ("", "0.0.0.0", "::") and listener.host not in names:
        names.append(listener.host)
    for api in config.apis_for(listener.name):
        for h in api.hosts:
            if h not in names:
                names.append(h)
    return names


def prepare(config: Config, *, now: datetime | None = None, check_ports: bool = True, create_state: bool = True) -> Prepared:
    """Load and check every certificate and TLS setting; raise ConfigError naming file, section, key.

    With ``create_state=False`` (``txgate check``) nothing is written: listeners on the local CA
    get every check except issuing their certificate.
    """
    from txgate.tls.certs import CertificateError, expiry_warning, load_ca_bundle, names_cover
    from txgate.tls.client import UpstreamTLS
    from txgate.tls.server import ServerTLS, TLSSettingError, check_tls_settings

    now = now or _now()
    prepared = Prepared(config=config, warnings=list(config.warnings))
    pin_cache: dict = {}
    _check_access_log(config)
    local = _LocalIssuer(config, prepared, now)
    _prepare_client_auth(config, prepared, now)
    held: list[socket.socket] = []
    try:
        for ln in config.listeners:
            if check_ports:
                held.append(_check_port(config, ln, held))
    finally:
        for s in held:
            s.close()
    for ln in config.listeners:
        section = f"listener:{ln.name}"
        if not ln.tls:
            continue
        try:
            check_tls_settings(min_tls=ln.min_tls, max_tls=ln.max_tls, ciphers=ln.ciphers,
                               tls13_ciphersuites=ln.tls13_ciphersuites)
        except TLSSettingError as e:
            raise ConfigError(config.path, section, e.key, f"rejected by OpenSSL: {e}") from None
        if ln.certificate.local:
            default = local.issue(_local_names(config, ln)) if create_state else None
        else:
            default = _load_pair(config, section, "certificate", ln.certificate, now)
        if default is not None:
            _warn_expiry(prepared, section, "certificate", default, now, expiry_warning)
        sni = []
        for name, spec in ln.sni:
            if spec.local:
                if not create_state:
                    continue
                ck = local.issue([name])
            else:
                ck = _load_pair(config, section, "sni", spec, now)
                if not names_cover(ck.leaf, name):
                    prepared.warnings.append(
                        f"{config.path}: [{section}] sni: certificate {spec.cert_path} does not cover '{name}' "
                        f"(its names: {', '.join(ck.dns_names + [str(i) for i in ck.ip_addresses]) or 'none'})"
                    )
            _warn_expiry(prepared, section, "sni", ck, now, expiry_warning)
            sni.append((name, ck))
        if default is None:
            continue
        try:
            prepared.server_tls[ln.name] = ServerTLS(
                default=default, sni=sni, min_tls=ln.min_tls, max_tls=ln.max_tls, ciphers=ln.ciphers,
                tls13_ciphersuites=ln.tls13_ciphersuites, alpn=ln.alpn, session_tickets=ln.session_tickets,
                client_verifier=prepared.client_verifiers.get(ln.name),
            )
        except TLSSettingError as e:
            raise ConfigError(config.path, section, e.key, f"rejected by OpenSSL: {e}") from None
        except Exception as e:  # e.g. a duplicate SNI name after normalisation
            key = "sni" if "SNI" in str(e) else "certificate"
            raise ConfigError(config.path, section, key, _openssl_message(e)) from None

    for api in config.apis:
        section = f"api:{api.name}"
        if api.upstream_ca:
            try:
                load_ca_bundle(api.upstream_ca)
            except CertificateError as e:
                raise ConfigError(config.path, section, "upstream_ca", str(e)) from None
        for target in api.upstreams:
            if not target.tls:
                if api.pinned_public_keys or api.upstream_certificate:
                    prepared.warnings.append(
                        f"{config.path}: [{section}] upstream: {target.label} is plain HTTP: pins and the "
                        "upstream client certificate apply to https:// targets only"
                    )
                continue
            trust = _upstream_trust(config, api, target, now, pin_cache)
            try:
                prepared.upstream_tls[(api.name, target.label)] = UpstreamTLS(
                    api.upstream_server_name or target.host,
                    ca_path=api.upstream_ca,
                    verify=api.upstream_verify,
                    client_certificate=trust["client_certificate"],
                    min_tls=api.upstream_min_tls,
                    ciphers=api.upstream_ciphers,
                    chain_check=trust["chain_check"],
                )
            except Exception as e:
                key = "upstream_ciphers" if api.upstream_ciphers and "cipher" in str(e).lower() else "upstream"
                raise ConfigError(config.path, section, key, f"{target.label}: {e}") from None
            if trust["chain_check"] is not None and not api.upstream_verify:
                prepared.warnings.append(
                    f"{config.path}: [{section}] upstream_verify: off with pins: {target.label} is checked "
                    "against its pins ONLY (no chain, expiry or host name verification)"
                )
        if not api.upstream_verify and any(t.tls for t in api.upstreams):
            prepared.warnings.append(
                f"{config.path}: [{section}] upstream_verify: off - upstream certificates are NOT verified"
            )
    return prepared


def _load_client_entries(config: Config, section: str, tokens: tuple[str, ...], prepared: Prepared, now):
    """Allowlist entries of one key; expired file entries are startup warnings."""
    from txgate.tls.clientauth import Entries, expired_entries, load_entries

    if not tokens:
        return Entries()
    try:
        entries = load_entries(tokens)
    except ValueError as e:
        raise ConfigError(config.path, section, "client_certificates", str(e)) from None
    for line in expired_entries(entries, now):
        prepared.warnings.append(f"{config.path}: [{section}] client_certificates: {line}")
    return entries


def _prepare_client_auth(config: Config, prepared: Prepared, now: datetime) -> None:
    """Allowlists of `mtls = require` APIs and the client verifier of each listener that asks for certificates."""
    from txgate.tls.certs import CertificateError, load_ca_bundle
    from txgate.tls.clientauth import Allowlist
    from txgate.tls.clientverify import ClientVerifier, load_crls

    shared = _load_client_entries(config, "security", config.security.client_certificates, prepared, now)
    api_cas: dict[str, list] = {}
    for api in config.apis:
        section = f"api:{api.name}"
        if not api.mtls:
            continue
        entries = _load_client_entries(config, section, api.client_certificates, prepared, now)
        entries.extend(shared)
        api_cas[api.name] = list(entries.cas)
        try:
            prepared.allowlists[api.name] = Allowlist(api.name, entries, api.client_subjects, api.client_sans)
        except ValueError as e:  # an exact subject that does not parse
            raise ConfigError(config.path, section, "client_subjects", str(e)) from None
    for ln in config.listeners:
        section = f"listener:{ln.name}"
        if not ln.tls:
            continue
        apis = config.apis_for(ln.name)
        mtls_apis = [a for a in apis if a.mtls]
        mode = ln.client_auth if ln.client_auth != "none" else ("optional" if mtls_apis else None)
        if mode is None:
            for key, value in (("client_ca", ln.client_ca), ("client_crl", ln.client_crl)):
                if value:
                    prepared.warnings.append(
                        f"{config.path}: [{section}] {key}: unused: the listener does not ask for client "
                        "certificates (client_auth = none and no mtls = require API)"
                    )
            for a in apis:
                if a.forward_client_cert == "xfcc":
                    prepared.warnings.append(
                        f"{config.path}: [api:{a.name}] forward_client_cert: listener '{ln.name}' does not ask "
                        "for client certificates (client_auth = none and no mtls = require API): nothing to forward"
                    )
            continue
        anchors = []
        if ln.client_ca:
            try:
                anchors.extend(load_ca_bundle(ln.client_ca))
            except CertificateError as e:
                raise ConfigError(config.path, section, "client_ca", str(e)) from None
        for a in mtls_apis:
            anchors.extend(api_cas[a.name])
        anchors.extend(shared.cas)
        crls = []
        for path in ln.client_crl:
            try:
                found = load_crls(path)
            except ValueError as e:
                raise ConfigError(config.path, section, "client_crl", str(e)) from None
            for crl in found:
                nxt = crl.next_update_utc
                if nxt is not None and nxt < now:
                    prepared.warnings.append(
                        f"{config.path}: [{section}] client_crl: {path}: CRL of '{crl.issuer.rfc4514_string()}' "
                        f"expired on {nxt.strftime('%Y-%m-%dT%H:%M:%SZ')}: certificates it covers are refused"
                    )
            crls.extend(found)
        if not anchors:
            if mode == "require":
                raise ConfigError(config.path, section, "client_auth",
                                  "require needs trust anchors: set client_ca (or CA entries in client_certificates)")
            for a in mtls_apis:
                if prepared.allowlists[a.name].any_verified:
                    raise ConfigError(
                        config.path, f"api:{a.name}", "mtls",
                        f"require without client_certificates allows any certificate that verifies, but listener "
                        f"'{ln.name}' has no trust anchors (set its client_ca, or list client_certificates)",
                    )
        _check_ca_entries_anchored(config, ln.name, mtls_apis, api_cas, anchors)
        prepared.client_verifiers[ln.name] = ClientVerifier(
            listener=ln.name, mode=mode, anchors=anchors, crls=crls, depth=ln.verify_depth,
            announce=ln.announce_client_cas,
        )


def _check_ca_entries_anchored(config: Config, listener: str, mtls_apis, api_cas: dict, anchors: list) -> None:
    """An intermediate CA entry is useless unless its issuer is a trust anchor of the listener too."""
    subjects = {a.subject for a in anchors}
    for api in mtls_apis:
        for ca in api_cas[api.name]:
            if ca.issuer != ca.subject and ca.issuer not in subjects:
                raise ConfigError(
                    config.path, f"api:{api.name}", "client_certificates",
                    f"intermediate CA '{ca.subject.rfc4514_string()}': its issuer '{ca.issuer.rfc4514_string()}' "
                    f"is not a trust anchor of listener '{listener}' (add it to client_ca)",
                )


def _resolve_pins(config: Config, section: str, tokens: tuple[str, ...], cache: dict):
    """Pin tokens -> (PinSet, printable pins); errors name the section and key."""
    from txgate import pins as _pins

    if tokens in cache:
        return cache[tokens]
    digests: list[bytes] = []
    for token in tokens:
        try:
            if token.startswith("sha256/") or len(token) == 64:
                digests.append(_pins.parse_pin(token))
            else:
                found = _pins.pins_from_file(token)
                if not found:
                    raise ValueError(f"{token}: no certificate, public key or CSR found")
                digests.extend(found)
        except (ValueError, OSError) as e:
            raise ConfigError(config.path, section, "pinned_public_keys", str(e)) from None
    result = (_pins.PinSet(digests), [_pins.format_pin(d) for d in dict.fromkeys(digests)])
    cache[tokens] = result
    return result


def _upstream_trust(config: Config, api: ApiConfig, target, now, pin_cache: dict) -> dict:
    """Pins (API's own replace [security]'s), pin mode and client certificate for one target."""
    from txgate.config import select_by_host
    from txgate.tls.pinning import PinCheck

    sec = config.security
    if api.pinned_public_keys is not None:
        tokens, pin_section = api.pinned_public_keys, f"api:{api.name}"
    else:
        tokens, pin_section = select_by_host(sec.pinned_public_keys, target.host, target.port), "security"
    chain_check = None
    if tokens:
        pinset, printable = _resolve_pins(config, pin_section, tokens, pin_cache)
        chain_check = PinCheck(pinset, printable, api.pin_mode or sec.pin_mode, api.name, target.label)
    client = None
    if api.upstream_certificate is not None:
        client = _load_pair(config, f"api:{api.name}", "upstream_certificate", api.upstream_certificate, now)
    else:
        spec = select_by_host(sec.upstream_certificates, target.host, target.port)
        if spec is not None:
            client = _load_pair(config, "security", "upstream_certificates", spec, now)
    return {"chain_check": chain_check, "client_certificate": client}


class _LocalIssuer:
    """The local CA, opened on first use; its errors name [gateway] state_dir."""

    def __init__(self, config: Config, prepared: Prepared, now: datetime) -> None:
        self.config, self.prepared, self.now = config, prepared, now
        self.ca = None

    def issue(self, names: list[str]):
        from txgate.tls.certs import CertificateError
        from txgate.tls.localca import LocalCA

        try:
            if self.ca is None:
                self.ca = LocalCA.ensure(self.config.gateway.state_dir, now=self.now)
                self.prepared.local_ca_path = self.ca.ca_path
            return self.ca.issue_server(names, now=self.now)
        except (CertificateError, OSError) as e:
            raise ConfigError(self.config.path, "gateway", "state_dir", _os_message(e)) from None


def _os_message(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


def _check_access_log(config: Config) -> None:
    """An access_log file must be creatable (its directory exists and is writable) or writable."""
    target = config.gateway.access_log
    if target in ("-", "off"):
        return
    if os.path.isdir(target):
        raise ConfigError(config.path, "gateway", "access_log", f"{target}: is a directory, not a file")
    if os.path.exists(target):
        if not os.access(target, os.W_OK):
            raise ConfigError(config.path, "gateway", "access_log", f"{target}: permission denied")
        return
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise ConfigError(config.path, "gateway", "access_log", f"{target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(config.path, "gateway", "access_log", f"{target}: cannot create a file in {parent} (permission denied)")


def _openssl_message(e: Exception) -> str:
    text = str(e)
    return text if len(text) < 200 else text[:200] + "..."


def _warn_expiry(prepared: Prepared, section: str, key: str, ck, now, expiry_warning) -> None:
    w = expiry_warning(ck, now)
    if w:
        prepared.warnings.append(f"{prepared.config.path}: [{section}] {key}: {w}")


def _check_port(config: Config, ln: ListenerConfig, held: list) -> socket.socket:
    """Fail early, with the section and key, if the address cannot be bound.

    The probe socket listens and is returned so the caller can hold it while checking the other
    listeners: two listeners that would collide (0.0.0.0:P and 127.0.0.1:P) are caught too.
    """
    try:
        # The family Twisted's listenTCP uses: IPv6 for a v6 literal, else IPv4.
        family = socket.AF_INET6 if ":" in ln.host else socket.AF_INET
        infos = socket.getaddrinfo(ln.host or None, ln.port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(config.path, f"listener:{ln.name}", "bind", f"{ln.host}: {e.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(sockaddr)
        if ln.port:
            s.listen(1)
    except OSError as e:
        s.close()
        where = f"[{ln.host}]:{ln.port}" if ":" in ln.host else f"{ln.host}:{ln.port}"
        if e.errno == errno.EADDRINUSE:
            msg = f"{where}: address already in use"
        elif e.errno == errno.EACCES:
            msg = f"{where}: permission denied (ports below 1024 need privileges)"
        elif e.errno == errno.EADDRNOTAVAIL:
            msg = f"{where}: address not available on this machine"
        else:
            msg = f"{where}: {e.strerror or e}"
        raise ConfigError(config.path, f"listener:{ln.name}", "bind", msg) from None
    return s


class GatewayService(Service):
    """Listeners, dispatchers and upstream pools built from one Prepared config."""

    name = "txgate"

    def __init__(self, prepared: Prepared, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.prepared = prepared
        self.config = prepared.config
        self.ports: dict[str, object] = {}
        self.factories: dict[str, ListenerFactory] = {}
        self.upstreams: dict[str, object] = {}
        self.access_log: AccessLog | None = None
        self._flusher = None

    def _build_upstream(self, api: ApiConfig):
        from txgate.upstream.pool import TargetPool
        from txgate.upstream.proxy import Upstream

        pools = [
            TargetPool(
                self.reactor, t,
                tls_creator=self.prepared.upstream_tls.get((api.name, t.label)),
                max_connections=api.max_connections, max_pending=api.max_pending,
                connect_timeout=api.connect_timeout,
            )
            for t in api.upstreams
        ]
        return Upstream(api.name, pools, timeout=api.timeout, max_body_bytes=api.max_body_bytes)

    def startService(self) -> None:
        super().startService()
        cfg = self.config
        for w in self.prepared.warnings:
            log.warn("{warning}", warning=w)
        self.access_log = AccessLog(cfg.gateway.access_log, cfg.gateway.log_format)
        self._flusher = task.LoopingCall(self.access_log.flush)
        self._flusher.clock = self.reactor
        self._flusher.start(0.5, now=False)
        runtimes = {}
        for api in cfg.apis:
            up = None if api.echo else self._build_upstream(api)
            self.upstreams[api.name] = up
            runtimes[api.name] = ApiRuntime(api, up, self.prepared.allowlists.get(api.name))
        if self.prepared.local_ca_path:
            log.info("local CA certificate: {path} (clients can trust it with: curl --cacert {path})",
                     path=self.prepared.local_ca_path)
        for ln in cfg.listeners:
            apis = [runtimes[a.name] for a in cfg.apis_for(ln.name)]
            dispatcher = ListenerDispatcher(ln.name, apis, self.reactor, self.access_log)
            limits = Limits(ln.max_header_bytes, ln.header_timeout, ln.idle_timeout)
            factory = ListenerFactory(ln.name, dispatcher, limits, self.reactor, tls=ln.tls,
                                      max_connections=ln.max_connections,
                                      client_certs=self.prepared.client_verifiers.get(ln.name))
            self.factories[ln.name] = factory
            top = wrap_tls(factory, self.prepared.server_tls[ln.name], self.reactor) if ln.tls else factory
            port = self.reactor.listenTCP(ln.port, top, backlog=1024, interface=ln.host)
            self.ports[ln.name] = port
            addr = port.getHost()
            host = f"[{addr.host}]" if ":" in addr.host else addr.host
            log.info("listener {name} on {scheme}://{host}:{port} ({apis})", name=ln.name,
                     scheme="https" if ln.tls else "http", host=host, port=addr.port,
                     apis=", ".join(a.name for a in apis) or "no APIs")

    def port_of(self, name: str) -> int:
        """The bound port of a listener (useful with port 0)."""
        return self.ports[name].getHost().port

    @defer.inlineCallbacks
    def stopService(self):
        """Stop accepting, let in-flight requests finish (up to shutdown_timeout), then close."""
        super().stopService()
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports.values()])
        self.ports.clear()
        for f in self.factories.values():
            for conn in list(f.connections):
                conn.shutdown()
        deadline = self.reactor.seconds() + self.config.gateway.shutdown_timeout
        while any(f.connections for f in self.factories.values()) and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        left = sum(len(f.connections) for f in self.factories.values())
        if left:
            log.warn("shutdown_timeout reached: closing {n} connections", n=left)
            for f in self.factories.values():
                for conn in list(f.connections):
                    conn.transport.abortConnection()
        for up in self.upstreams.values():
            if up is not None:
                up.close()
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self.access_log is not None:
            self.access_log.close()
        log.info("txgate stopped")


def makeService(config: Config, reactor=None) -> MultiService:
    """Build the gateway as a MultiService (validates first; raises ConfigError)."""
    prepared = prepare(config)
    from txgate import pins as _pins

    log.info("SPKI pin backend: {backend}", backend=_pins.describe_backend())
    top = MultiService()
    GatewayService(prepared, reactor).setServiceParent(top)
    return top
