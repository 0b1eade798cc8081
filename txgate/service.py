"""makeService(config) -> MultiService: builds the runtime objects and owns their lifetime."""
from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from txgate.accesslog import AccessLog
from txgate.config import ApiConfig, CertSpec, Config, ConfigError, ListenerConfig
from txgate.admin.facade import HeldCertificate, ReloadResult
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
    # Every certificate held, for expiry monitoring: (name, role, x509.Certificate).
    held: list = field(default_factory=list)
    # store ref as written (NAME, NAME@V or ID) -> the entry ID it resolved to.
    store_ids: dict = field(default_factory=dict)
    # False when the default admin bind (not written in gw.ini) is busy: the admin API is then off.
    admin_available: bool = True


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _load_pair(config: Config, section: str, key: str, spec: CertSpec, now: datetime, prepared: Prepared | None = None,
               store=None):
    """A CERT.pem KEY.pem pair or a `store:REF` entry as a CertifiedKey; errors name section and key."""
    from txgate.tls.certs import CertificateError, check_validity, load_certified_key

    if spec.store_ref is not None:
        from txgate.store import StoreError

        label = spec.label
        if store is None:
            raise ConfigError(config.path, section, key, f"{label}: no certificate store is open "
                              f"(the store under [gateway] state_dir does not exist yet)")
        try:
            got = store.get(spec.store_ref)
        except StoreError as e:
            raise ConfigError(config.path, section, key, f"{label}: {e.reason}") from None
        if got.key is None:
            raise ConfigError(config.path, section, key,
                              f"{label}: the store entry {got.id} has no private key (put its key with the chain)")
        ck = got.certified_key()
        try:
            check_validity(ck.leaf, label, now)
        except CertificateError as e:
            raise ConfigError(config.path, section, key, str(e)) from None
        if prepared is not None:
            prepared.store_ids[spec.store_ref] = got.id
        return ck
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


def prepare(config: Config, *, now: datetime | None = None, check_ports: bool = True, create_state: bool = True,
            store=None) -> Prepared:
    """Load and check every certificate and TLS setting; raise ConfigError naming file, section, key.

    With ``create_state=False`` (``txgate check``) nothing is written: listeners on the local CA
    get every check except issuing their certificate. ``store`` (a blocking ``txgate.store.Store``)
    resolves ``store:REF`` certificates; reloads pass the running one and ``check_ports=False``.
    """
    from txgate.plan.files import check_files
    from txgate.tls.certs import CertificateError, expiry_warning, load_ca_bundle, names_cover
    from txgate.tls.client import UpstreamTLS
    from txgate.tls.server import ServerTLS, TLSSettingError, check_tls_settings

    check_files(config)
    now = now or _now()
    prepared = Prepared(config=config, warnings=list(config.warnings))
    pin_cache: dict = {}
    _check_access_log(config)
    from txgate.config import check_state_dir

    check_state_dir(config)
    _check_admin(config, prepared)
    local = _LocalIssuer(config, prepared, now)
    _prepare_client_auth(config, prepared, now)
    held: list[socket.socket] = []
    try:
        for ln in config.listeners:
            if check_ports:
                held.append(_check_port(config, ln, held))
        if check_ports and config.admin.enabled and config.admin.bind_explicit:
            _check_admin_port(config, prepared, held)
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
            default = _load_pair(config, section, "certificate", ln.certificate, now, prepared, store)
        if default is not None:
            _warn_expiry(prepared, section, "certificate", default, now, expiry_warning)
            prepared.held.append((section, "listener", default.leaf))
        sni = []
        for name, spec in ln.sni:
            if spec.local:
                if not create_state:
                    continue
                ck = local.issue([name])
            else:
                ck = _load_pair(config, section, "sni", spec, now, prepared, store)
                if not names_cover(ck.leaf, name):
                    prepared.warnings.append(
                        f"{config.path}: [{section}] sni: certificate {spec.cert_path or spec.label} does not cover "
                        f"'{name}' (its names: {', '.join(ck.dns_names + [str(i) for i in ck.ip_addresses]) or 'none'})"
                    )
            _warn_expiry(prepared, section, "sni", ck, now, expiry_warning)
            prepared.held.append((f"{section} sni:{name}", "sni", ck.leaf))
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
                for ca in load_ca_bundle(api.upstream_ca):
                    prepared.held.append((f"{section} upstream_ca", "ca", ca))
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
            trust = _upstream_trust(config, api, target, now, pin_cache, prepared, store)
            if trust["client_certificate"] is not None:
                prepared.held.append((f"{section} upstream_client {target.label}", "upstream_client",
                                      trust["client_certificate"].leaf))
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
    for cert in shared.cas + shared.exact:
        prepared.held.append(("security client_certificates", "client_allowlist", cert))
    api_cas: dict[str, list] = {}
    for api in config.apis:
        section = f"api:{api.name}"
        if not api.mtls:
            continue
        entries = _load_client_entries(config, section, api.client_certificates, prepared, now)
        for cert in entries.cas + entries.exact:
            prepared.held.append((f"{section} client_certificates", "client_allowlist", cert))
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
                for ca in anchors:
                    prepared.held.append((f"{section} client_ca", "ca", ca))
            except CertificateError as e:
                raise ConfigError(config.path, section, "client_ca", str(e)) from None
        _check_no_entry_apis(config, ln.name, mtls_apis, prepared, anchors)
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
        if not anchors and mode == "require":
            raise ConfigError(config.path, section, "client_auth",
                              "require needs trust anchors: set client_ca (or CA entries in client_certificates)")
        _check_ca_entries_anchored(config, ln.name, mtls_apis, api_cas, anchors)
        if crls:
            _warn_crl_coverage(config, section, anchors, crls, prepared)
        prepared.client_verifiers[ln.name] = ClientVerifier(
            listener=ln.name, mode=mode, anchors=anchors, crls=crls, depth=ln.verify_depth,
            announce=ln.announce_client_cas,
        )


def _check_no_entry_apis(config: Config, listener: str, mtls_apis, prepared: Prepared, client_cas: list) -> None:
    """Give each mTLS API the listener's client_ca; an API without entries needs one to allow anyone.

    Without entries (none of its own, none in [security]), an API allows the certificates whose
    verified chain passes through a client_ca certificate of the listener (not those that verified
    only through another API's CA entry, which also sits in the listener's trust store).
    """
    for api in mtls_apis:
        allow = prepared.allowlists[api.name]
        allow.trust_listener_cas(listener, client_cas)
        if allow.any_verified and not client_cas:
            raise ConfigError(
                config.path, f"api:{api.name}", "client_certificates",
                f"an mTLS API without entries (here or in [security]) allows only certificates issued under its "
                f"listener's client_ca, and listener '{listener}' has none: it would allow no one (list entries, "
                f"or set client_ca in [listener:{listener}])",
            )


def _warn_crl_coverage(config: Config, section: str, anchors: list, crls: list, prepared: Prepared) -> None:
    """client_crl set: an intermediate CA in the trust store that no CRL covers is a startup warning.

    The verifier lets "no CRL from this issuer" pass (unchecked), so a missing CRL silently means no
    revocation check: for the certificates the intermediate issues (a CRL issued by it) and for the
    intermediate itself (a CRL issued by its issuer).
    """
    from cryptography.hazmat.primitives import serialization

    from txgate.tls.clientauth import sha256

    issuers = {crl.issuer for crl in crls}
    listener = section.split(":", 1)[1]
    seen = set()
    for ca in anchors:
        fp = sha256(ca.public_bytes(serialization.Encoding.DER))
        if ca.issuer == ca.subject or fp in seen:
            continue
        seen.add(fp)
        gaps = []
        if ca.subject not in issuers:
            gaps.append("no CRL issued by it (the certificates it issues are not revocation-checked)")
        if ca.issuer not in issuers:
            gaps.append(f"no CRL from its issuer '{ca.issuer.rfc4514_string()}' (the intermediate itself is not "
                        "revocation-checked)")
        if gaps:
            prepared.warnings.append(
                f"{config.path}: [{section}] client_crl: intermediate CA '{ca.subject.rfc4514_string()}' in the trust "
                f"path of listener '{listener}' is not covered: " + "; ".join(gaps)
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


def _upstream_trust(config: Config, api: ApiConfig, target, now, pin_cache: dict, prepared=None, store=None) -> dict:
    """Pins (API's own replace [security]'s), pin mode and client certificate for one target."""
    from txgate.config import select_by_host
    from txgate.tls.pinning import PinCheck

    sec = config.security
    # [security] patterns match the name the certificate is checked for (upstream_server_name)
    # as well as the URL's host: the most specific rule over both applies.
    names = tuple(dict.fromkeys(n for n in (api.upstream_server_name, target.host) if n))
    if api.pinned_public_keys is not None:
        tokens, pin_section = api.pinned_public_keys, f"api:{api.name}"
    else:
        tokens, pin_section = select_by_host(sec.pinned_public_keys, names, target.port), "security"
    chain_check = None
    if tokens:
        pinset, printable = _resolve_pins(config, pin_section, tokens, pin_cache)
        chain_check = PinCheck(pinset, printable, api.pin_mode or sec.pin_mode, api.name, target.label)
    client = None
    if api.upstream_certificate is not None:
        client = _load_pair(config, f"api:{api.name}", "upstream_certificate", api.upstream_certificate, now,
                            prepared, store)
    else:
        spec = select_by_host(sec.upstream_certificates, names, target.port)
        if spec is not None:
            client = _load_pair(config, "security", "upstream_certificates", spec, now, prepared, store)
    return {"chain_check": chain_check, "client_certificate": client}


def _file_stamp(path: str | None):
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_mtime_ns, st.st_size)


def client_auth_signature(config: Config, listener: str) -> tuple:
    """Everything that decides which client certificates a listener's APIs accept (files by mtime/size)."""
    ln = next((x for x in config.listeners if x.name == listener), None)
    if ln is None:
        return ()
    lsig = (ln.client_auth, _file_stamp(ln.client_ca), tuple(_file_stamp(p) for p in ln.client_crl),
            ln.verify_depth)
    entries = lambda items: tuple(_file_stamp(e) if os.path.exists(e) else e for e in items)  # noqa: E731
    apis = tuple(
        (a.name, a.mtls, entries(a.client_certificates), a.client_subjects, a.client_sans, a.forward_client_cert,
         a.path, a.hosts)
        for a in config.apis_for(listener)
        if a.mtls or a.forward_client_cert != "off"
    )
    return (lsig, apis, entries(config.security.client_certificates))


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
                self.prepared.held.append(("local CA", "ca", self.ca.certificate))
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


def _check_admin(config: Config, prepared: Prepared) -> None:
    """`[admin]` files: the token file must hold a token, client_ca must be a PEM CA bundle."""
    adm = config.admin
    if not adm.enabled:
        return
    from txgate.tls.certs import CertificateError, load_ca_bundle

    if adm.token_file:
        try:
            from txgate.admin.config import AdminConfigError, read_token
        except ImportError:  # the admin room is not there: just check the file is not empty
            if os.path.getsize(adm.token_file) == 0:
                raise ConfigError(config.path, "admin", "token_file", f"{adm.token_file}: the file is empty") from None
        else:
            try:
                read_token(adm.token_file)
            except AdminConfigError as e:
                raise ConfigError(config.path, "admin", e.key, str(e)) from None
        if os.stat(adm.token_file).st_mode & 0o077:
            prepared.warnings.append(f"{config.path}: [admin] token_file: {adm.token_file} is readable by group "
                                     "or others; chmod 600 it")
    if adm.client_ca:
        try:
            for ca in load_ca_bundle(adm.client_ca):
                prepared.held.append(("admin client_ca", "ca", ca))
        except CertificateError as e:
            raise ConfigError(config.path, "admin", "client_ca", str(e)) from None


def _check_admin_port(config: Config, prepared: Prepared, held: list) -> None:
    """An explicit admin bind that cannot be bound is an error; the default one only turns the admin API off."""
    adm = config.admin
    probe = ListenerConfig(name="admin", host=adm.host, port=adm.port)
    try:
        held.append(_check_port(config, probe, held))
    except ConfigError as e:
        if adm.bind_explicit:
            raise ConfigError(config.path, "admin", "bind", e.message) from None
        prepared.admin_available = False
        prepared.warnings.append(f"{config.path}: [admin] bind: {e.message}: the admin API is off "
                                 "(set [admin] bind to another address, or bind = off)")


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


# -- the certificate store -----------------------------------------------------------------------

SECRET_FILE = "store.secret"


def store_secret(config: Config, *, create: bool = True) -> bytes | None:
    """The store secret: store_secret_file, else $TXGATE_STORE_SECRET, else (dir store) state_dir/store.secret.

    A directory store without a configured secret gets a random one, written 0600 on first start
    (``create``), so the quick start can keep private keys encrypted at rest. A Redis store refuses.
    """
    from txgate.fileio import make_private_dir, write_private_file
    from txgate.store import ENV_SECRET, StoreError, load_secret

    gw = config.gateway
    try:
        secret = load_secret(gw.store_secret_file)
    except StoreError as e:
        raise ConfigError(config.path, "gateway", "store_secret_file", e.reason) from None
    if secret is not None:
        if gw.store_secret_file and os.stat(gw.store_secret_file).st_mode & 0o077:
            log.warn("{path}: [gateway] store_secret_file: {file} is readable by group or others; chmod 600 it",
                     path=config.path, file=gw.store_secret_file)
        return secret
    if gw.store != "dir":
        raise ConfigError(config.path, "gateway", "store_secret_file",
                          f"a Redis store needs a secret: set store_secret_file or the {ENV_SECRET} environment variable")
    path = os.path.join(gw.state_dir, SECRET_FILE)
    if not os.path.exists(path):
        if not create:
            return None
        import base64

        try:
            make_private_dir(gw.state_dir)
            write_private_file(path, base64.b64encode(os.urandom(32)) + b"\n", exclusive=True)
            log.info("generated the store secret {path} (mode 0600; private keys in the store are encrypted "
                     "under it: back it up with the store, or set store_secret_file)", path=path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError as e:
            raise ConfigError(config.path, "gateway", "state_dir", f"{path}: {e.strerror or e}") from None
    try:
        return load_secret(path)
    except StoreError as e:
        raise ConfigError(config.path, "gateway", "store_secret_file", e.reason) from None


def open_gateway_store(config: Config, *, create: bool = True):
    """Open the `[gateway] store` (a blocking ``txgate.store.Store``); errors are ConfigErrors naming the key.

    With ``create=False`` (``txgate check``) nothing is written: a directory store that does not exist
    yet gives None.
    """
    from txgate.store import ENV_SECRET, StoreError, open_store

    gw = config.gateway
    if not create and gw.store == "dir" and not os.path.isdir(os.path.join(gw.state_dir, "store")):
        return None
    secret = store_secret(config, create=create)
    try:
        return open_store(gw.store, gw.state_dir, secret)
    except StoreError as e:
        if e.code in ("bad_secret", "no_secret"):
            source = gw.store_secret_file or (ENV_SECRET if os.environ.get(ENV_SECRET) else
                                              os.path.join(gw.state_dir, SECRET_FILE))
            raise ConfigError(config.path, "gateway", "store_secret_file", f"{source}: {e.reason}") from None
        raise ConfigError(config.path, "gateway", "store", e.reason) from None


def _ref_names(refs) -> set[str]:
    """The names and IDs a set of store refs depends on (NAME@3 depends on NAME)."""
    return {r.partition("@")[0] for r in refs}


def _cert_fingerprint(cert) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex()


# -- the running gateway ---------------------------------------------------------------------------


def log_listening(config: Config, ln: ListenerConfig, host: str, port: int) -> None:
    """The line announcing a listener (tests and tools read its port from it)."""
    host = f"[{host}]" if ":" in host else host
    apis = config.apis_for(ln.name)
    log.info("listener {name} on {scheme}://{host}:{port} ({apis})", name=ln.name,
             scheme="https" if ln.tls else "http", host=host, port=port,
             apis=", ".join(a.name for a in apis) or "no APIs")


class _Front(Factory):
    """The factory a listening port keeps across reloads: each connection goes to the current generation."""

    noisy = False

    def __init__(self, name: str, current) -> None:
        self.name = name
        self.current = current

    def buildProtocol(self, addr):
        top = self.current
        inner = getattr(top, "wrappedFactory", top)
        accepting = getattr(inner, "accepting", None)
        if accepting is not None and not accepting():
            return None  # the port closes the socket; nothing is built (TLS included)
        return top.buildProtocol(addr)

    def logPrefix(self) -> str:
        return f"txgate listener {self.name}"


class _Generation:
    """The runtime objects built from one Prepared config (dispatchers, factories, upstream pools)."""

    def __init__(self, prepared: Prepared, access_log: AccessLog) -> None:
        self.prepared = prepared
        self.config = prepared.config
        self.access_log = access_log
        self.factories: dict[str, ListenerFactory] = {}
        self.tops: dict[str, object] = {}
        self.upstreams: dict[str, object] = {}
        self.old_connections: set = set()  # downstream connections still using this generation (once retired)

    def close_upstreams(self) -> None:
        for up in self.upstreams.values():
            if up is not None:
                up.close()


class GatewayService(Service):
    """Listeners, dispatchers and upstream pools built from one Prepared config, rebuilt on reload.

    A reload (SIGHUP, the facade's ``reload``, a store change) re-reads the config file and the store,
    prepares everything off the reactor thread, and swaps a new generation of runtime objects in for
    new connections. Listening sockets stay open unless their bind changed; established connections
    keep the generation they started with, whose upstream pools close once the last of them is gone.
    """

    name = "txgate"
    RETIRE_CHECK = 1.0
    DEBOUNCE = 0.2

    def __init__(self, prepared: Prepared, reactor=None, *, loader=None, store=None, metrics=None,
                 role: str = "single", listen_fds: dict | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.prepared = prepared
        self.config = prepared.config
        # () -> Config: re-reads the config file on reload (default: reuse the startup config).
        self.loader = loader or (lambda: self.config)
        self.store = store  # blocking txgate.store.Store, or None
        self.deferred_store = None
        self.metrics = metrics
        self.ports: dict[str, object] = {}
        self.fronts: dict[str, _Front] = {}
        self.binds: dict[str, tuple[str, int]] = {}
        self.connections: dict[str, set] = {}  # listener name -> open Negotiators, shared by generations
        self.current: _Generation | None = None
        self.retiring: list[_Generation] = []
        self._retire_loop = None
        self._flusher = None
        self._sub = None
        self._debounce = None
        self._store_changes: set = set()
        self._reloading = False
        self._queued: tuple[list, str] | None = None
        self.store_listing: list = []  # CertInfo of the store entries (refreshed on changes)
        self.reloads = 0
        # Runs blocking work (file and store reads, context building) off the reactor thread.
        self.run_blocking = self._in_thread
        # Worker processes (txgate.runtime.workers): "single" listens and serves; a "supervisor" serves no
        # traffic (no generation, no ports); a "worker" adopts the supervisor's sockets (listener name ->
        # (fd, family)) and leaves store watching to the supervisor.
        self.role = role
        self.listen_fds = listen_fds or {}

    # -- compatibility with the single-generation attributes ----------------------------------
    @property
    def factories(self) -> dict[str, ListenerFactory]:
        return self.current.factories if self.current else {}

    @property
    def upstreams(self) -> dict[str, object]:
        return self.current.upstreams if self.current else {}

    @property
    def access_log(self) -> AccessLog | None:
        return self.current.access_log if self.current else None

    def _in_thread(self, fn, *args):
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    # -- building -------------------------------------------------------------------------------
    def _build_upstream(self, api: ApiConfig, prepared: Prepared):
        from txgate.upstream.pool import TargetPool
        from txgate.upstream.proxy import Upstream

        pools = [
            TargetPool(
                self.reactor, t,
                tls_creator=prepared.upstream_tls.get((api.name, t.label)),
                max_connections=api.max_connections, max_pending=api.max_pending,
                connect_timeout=api.connect_timeout,
            )
            for t in api.upstreams
        ]
        return Upstream(api.name, pools, timeout=api.timeout, max_body_bytes=api.max_body_bytes)

    def _build(self, prepared: Prepared) -> _Generation:
        """A generation's runtime objects (nothing listens yet)."""
        cfg = prepared.config
        old = self.current
        if old is not None and (old.config.gateway.access_log, old.config.gateway.log_format) == (
                cfg.gateway.access_log, cfg.gateway.log_format):
            access_log = old.access_log
        else:
            access_log = AccessLog(cfg.gateway.access_log, cfg.gateway.log_format)
        gen = _Generation(prepared, access_log)
        try:
            runtimes = {}
            for api in cfg.apis:
                up = None if api.echo else self._build_upstream(api, prepared)
                gen.upstreams[api.name] = up
                runtimes[api.name] = ApiRuntime(api, up, prepared.allowlists.get(api.name))
            for ln in cfg.listeners:
                apis = [runtimes[a.name] for a in cfg.apis_for(ln.name)]
                dispatcher = ListenerDispatcher(ln.name, apis, self.reactor, access_log, metrics=self.metrics)
                limits = Limits(ln.max_header_bytes, ln.header_timeout, ln.idle_timeout)
                factory = ListenerFactory(ln.name, dispatcher, limits, self.reactor, tls=ln.tls,
                                          max_connections=ln.max_connections,
                                          client_certs=prepared.client_verifiers.get(ln.name))
                # One set per listener across generations: max_connections and shutdown see every connection.
                factory.connections = self.connections.setdefault(ln.name, set())
                gen.factories[ln.name] = factory
                gen.tops[ln.name] = wrap_tls(factory, prepared.server_tls[ln.name], self.reactor) if ln.tls else factory
        except Exception:
            gen.close_upstreams()
            if old is None or access_log is not old.access_log:
                access_log.close()
            raise
        return gen

    def _listen(self, ln: ListenerConfig, front: _Front):
        """Listen on a listener's bind with ``front``; a failure is a ConfigError naming its bind."""
        from twisted.internet.error import CannotListenError

        if self.role == "worker":
            from txgate.runtime.sockets import adopt

            if ln.name not in self.listen_fds:
                raise ConfigError(self.config.path, f"listener:{ln.name}", "bind",
                                  "a new listener address needs a worker restart (the supervisor owns the sockets)")
            return adopt(self.reactor, *self.listen_fds[ln.name], front)
        try:
            return self.reactor.listenTCP(ln.port, front, backlog=1024, interface=ln.host)
        except CannotListenError as e:
            where = f"[{ln.host}]:{ln.port}" if ":" in ln.host else f"{ln.host}:{ln.port}"
            err = getattr(e, "socketError", None)
            why = getattr(err, "strerror", None) or str(err or e)
            raise ConfigError(self.config.path, f"listener:{ln.name}", "bind", f"{where}: {why}") from None

    def _log_listening(self, gen: _Generation, ln: ListenerConfig) -> None:
        if self.role == "worker":
            return  # the supervisor owns the sockets and announces them once
        addr = self.ports[ln.name].getHost()
        log_listening(gen.config, ln, addr.host, addr.port)

    # -- service ----------------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        for w in self.prepared.warnings:
            log.warn("{warning}", warning=w)
        if self.prepared.local_ca_path and self.role != "worker":
            log.info("local CA certificate: {path} (clients can trust it with: curl --cacert {path})",
                     path=self.prepared.local_ca_path)
        if self.role == "supervisor":
            self._watch_store()
            return
        gen = self._build(self.prepared)
        self.current = gen
        self._flusher = task.LoopingCall(self._flush_logs)
        self._flusher.clock = self.reactor
        self._flusher.start(0.5, now=False)
        for ln in self.config.listeners:
            front = _Front(ln.name, gen.tops[ln.name])
            self.ports[ln.name] = self._listen(ln, front)
            self.fronts[ln.name] = front
            self.binds[ln.name] = (ln.host, ln.port)
            self._log_listening(gen, ln)
        if self.role != "worker":
            self._watch_store()

    def _watch_store(self) -> None:
        if self.store is not None:
            from txgate.store import DeferredStore

            self.deferred_store = DeferredStore(self.store, self.reactor)
            try:
                self._sub = self.deferred_store.subscribe(self._store_changed)
            except Exception as e:  # e.g. Redis went away since startup: changes then need a reload
                log.error("store: cannot subscribe to changes ({error}); reload with SIGHUP after store writes",
                          error=str(e))
            self._refresh_listing()

    def _flush_logs(self) -> None:
        seen = set()
        for gen in [self.current, *self.retiring]:
            if gen is not None and id(gen.access_log) not in seen:
                seen.add(id(gen.access_log))
                gen.access_log.flush()

    def port_of(self, name: str) -> int:
        """The bound port of a listener (useful with port 0)."""
        return self.ports[name].getHost().port

    @defer.inlineCallbacks
    def stopService(self):
        """Stop accepting, let in-flight requests finish (up to shutdown_timeout), then close."""
        super().stopService()
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        if self._debounce is not None and self._debounce.active():
            self._debounce.cancel()
        self._debounce = None
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports.values()])
        self.ports.clear()
        sets = list(self.connections.values())
        for conns in sets:
            for conn in list(conns):
                conn.shutdown()
        deadline = self.reactor.seconds() + self.config.gateway.shutdown_timeout
        while any(sets) and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        left = sum(len(c) for c in sets)
        if left:
            log.warn("shutdown_timeout reached: closing {n} connections", n=left)
            for conns in sets:
                for conn in list(conns):
                    conn.transport.abortConnection()
        gens = [g for g in [self.current, *self.retiring] if g is not None]
        for gen in gens:
            gen.close_upstreams()
        if self._retire_loop is not None and self._retire_loop.running:
            self._retire_loop.stop()
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        closed = set()
        for gen in gens:
            if id(gen.access_log) not in closed:
                closed.add(id(gen.access_log))
                gen.access_log.close()
        if self.store is not None:
            yield self.run_blocking(self.store.close)
        log.info("txgate stopped")

    # -- reload ----------------------------------------------------------------------------------
    def reload(self, reason: str = "reload") -> defer.Deferred:
        """Rebuild from the config file and the store; Deferred[ReloadResult]. A failure keeps the running config.

        Reloads never overlap: one asked for while another runs is queued, and the ones asked for
        meanwhile share it (they all get its result).
        """
        if self._reloading:
            d = defer.Deferred()
            if self._queued is None:
                self._queued = ([d], reason)
            else:
                self._queued[0].append(d)
            return d
        self._reloading = True
        d = self._reload(reason)

        def done(result):
            self._reloading = False
            queued, self._queued = self._queued, None
            if queued is not None:
                waiters, why = queued

                def fire(res):
                    for w in waiters:
                        w.callback(res)

                self.reload(why).addCallback(fire)
            return result

        return d.addBoth(done)

    def _load_and_prepare(self) -> Prepared:
        """Off the reactor thread: read gw.ini again and prepare it against the running store."""
        cfg = self.loader()
        running = self.config
        notes = []
        gw_new, gw_old = cfg.gateway, running.gateway
        if (gw_new.store, gw_new.store_secret_file) != (gw_old.store, gw_old.store_secret_file):
            notes.append(f"{cfg.path}: [gateway] store: store and store_secret_file changes take effect at the "
                         "next restart (the running store is kept)")
        if cfg.admin != running.admin:
            notes.append(f"{cfg.path}: [admin]: changes take effect at the next restart")
        if (gw_new.workers, gw_new.worker_affinity) != (gw_old.workers, gw_old.worker_affinity):
            notes.append(f"{cfg.path}: [gateway] workers: workers and worker_affinity changes take effect at the "
                         "next restart")
        prepared = prepare(cfg, now=_now(), check_ports=False, store=self.store)
        prepared.warnings.extend(notes)
        prepared.admin_available = self.prepared.admin_available
        return prepared

    @defer.inlineCallbacks
    def _reload(self, reason: str):
        try:
            prepared = yield self.run_blocking(self._load_and_prepare)
            summary = yield defer.maybeDeferred(self._swap, prepared)
        except ConfigError as e:
            log.error("reload ({reason}) failed, keeping the running configuration: {error}",
                      reason=reason, error=str(e))
            return ReloadResult(False, str(e))
        except Exception as e:
            log.failure("reload ({reason}) failed, keeping the running configuration", reason=reason)
            return ReloadResult(False, f"{e.__class__.__name__}: {e}")
        self.reloads += 1
        for w in prepared.warnings:
            log.warn("{warning}", warning=w)
        log.info("reloaded ({reason}): {summary}", reason=reason, summary=summary)
        if self.store is not None:
            self._refresh_listing()
        return ReloadResult(True, summary)

    def _swap(self, prepared: Prepared) -> str:
        """In the reactor: open new ports, point every port at the new generation, close removed ports."""
        cfg = prepared.config
        new = {ln.name: ln for ln in cfg.listeners}
        gen = self._build(prepared)
        keep = {n for n in self.ports if n in new and self.binds[n] == (new[n].host, new[n].port)}
        # A listener whose bind is gone (removed or renamed) frees its port only after the swap;
        # a new listener on exactly that address takes over the open socket instead of rebinding.
        freed = {self.binds[n]: n for n in self.ports if n not in new}
        opened: dict[str, tuple] = {}  # name -> (port, front)
        adopted: dict[str, str] = {}  # new name -> old name
        try:
            for name, ln in new.items():
                if name in keep:
                    continue
                old_name = freed.get((ln.host, ln.port))
                if old_name is not None and ln.port:
                    adopted[name] = old_name
                    continue
                front = _Front(name, gen.tops[name])
                opened[name] = (self._listen(ln, front), front)
        except ConfigError:
            for port, _front in opened.values():
                port.stopListening()
            gen.close_upstreams()
            if self.current is None or gen.access_log is not self.current.access_log:
                gen.access_log.close()
            raise
        closed = [n for n in self.ports if n not in keep and n not in adopted.values()]
        closed_at = {}
        for name in closed:
            port = self.ports.pop(name)
            addr = port.getHost()
            closed_at[name] = f"[{addr.host}]:{addr.port}" if ":" in addr.host else f"{addr.host}:{addr.port}"
            port.stopListening()
            self.fronts.pop(name)
            self.binds.pop(name)
        for name, old_name in adopted.items():
            self.ports[name] = self.ports.pop(old_name)
            self.binds[name] = self.binds.pop(old_name)
            self.fronts[name] = self.fronts.pop(old_name)
            self.fronts[name].name = name
        for name, (port, front) in opened.items():
            self.ports[name], self.fronts[name] = port, front
            self.binds[name] = (new[name].host, new[name].port)
        for name, front in self.fronts.items():
            front.current = gen.tops[name]
        old = self.current
        self.current = gen
        self.prepared = prepared
        self.config = cfg
        for name in closed:
            log.info("listener {name} stopped listening on {address} (removed or moved)", name=name,
                     address=closed_at[name])
        for name in list(opened) + list(adopted):
            self._log_listening(gen, new[name])
        if old is not None:
            self._drain_changed_client_auth(old.config, cfg)
            self._retire(old)
        parts = [f"{len(cfg.listeners)} listeners, {len(cfg.apis)} APIs"]
        if opened or adopted:
            parts.append("listening: " + ", ".join(list(opened) + list(adopted)))
        if closed:
            parts.append("stopped: " + ", ".join(closed))
        return "; ".join(parts)

    def _drain_changed_client_auth(self, old_cfg: Config, new_cfg: Config) -> None:
        """Connections whose client-certificate policy changed are drained (graceful close).

        Established connections keep the generation they started with — except where that would keep
        a removed or revoked client in: when a listener's client verification or an allowlist of one
        of its APIs changed (config or the files behind it: CAs, CRLs, allowlist files), its open
        connections finish their requests and close (h2: GOAWAY), so clients reconnect under the
        new policy."""
        for ln in new_cfg.listeners:
            conns = self.connections.get(ln.name)
            if not conns:
                continue
            if client_auth_signature(old_cfg, ln.name) == client_auth_signature(new_cfg, ln.name):
                continue
            log.info("listener {name}: client certificate policy changed; draining {n} open connections",
                     name=ln.name, n=len(conns))
            for conn in list(conns):
                try:
                    conn.shutdown()
                except Exception:
                    log.failure("draining a connection failed")

    def _retire(self, gen: _Generation) -> None:
        """Close a generation's upstream pools once no downstream connection still uses it."""
        gen.old_connections = {c for conns in self.connections.values() for c in conns}
        self.retiring.append(gen)
        self._check_retiring()
        if self.retiring and (self._retire_loop is None or not self._retire_loop.running):
            self._retire_loop = task.LoopingCall(self._check_retiring)
            self._retire_loop.clock = self.reactor
            self._retire_loop.start(self.RETIRE_CHECK, now=False)

    def _check_retiring(self) -> None:
        live = set()
        for conns in self.connections.values():
            live |= conns
        for gen in list(self.retiring):
            gen.old_connections &= live
            if gen.old_connections:
                continue
            self.retiring.remove(gen)
            gen.close_upstreams()
            in_use = {id(g.access_log) for g in [self.current, *self.retiring] if g is not None}
            if id(gen.access_log) not in in_use:
                gen.access_log.flush()
                gen.access_log.close()
        if not self.retiring and self._retire_loop is not None and self._retire_loop.running:
            self._retire_loop.stop()

    # -- store changes -----------------------------------------------------------------------------
    def _store_changed(self, name) -> None:
        """A store change (None: anything may have changed): reload if the config uses it, debounced."""
        self._refresh_listing()
        if name is not None and name not in _ref_names(self.config.store_refs()) \
                and name not in set(self.prepared.store_ids.values()):
            return
        self._store_changes.add(name)
        if self._debounce is not None and self._debounce.active():
            self._debounce.reset(self.DEBOUNCE)
        else:
            self._debounce = self.reactor.callLater(self.DEBOUNCE, self._store_reload)

    def _store_reload(self) -> None:
        self._debounce = None
        names, self._store_changes = self._store_changes, set()
        what = "resync" if None in names else ", ".join(sorted(n for n in names if n))
        self.reload(f"store change: {what}")

    def _refresh_listing(self) -> None:
        if self.deferred_store is None:
            return

        def got(infos):
            self.store_listing = infos

        def failed(f):
            log.warn("store: cannot list the entries: {error}", error=f.getErrorMessage())

        self.deferred_store.list().addCallbacks(got, failed)


class ServiceFacade:
    """``txgate.admin.facade.GatewayFacade`` over the running GatewayService (what the admin API may ask)."""

    def __init__(self, service: GatewayService) -> None:
        self._service = service

    @property
    def store(self):
        """The DeferredStore of the running gateway (None before start, or without a store)."""
        return self._service.deferred_store

    @property
    def expiry_warning_days(self) -> int:
        return self._service.config.gateway.expiry_warning_days

    def reload(self, reason: str):
        """Rebuild from the config file and the store; Deferred[ReloadResult]."""
        return self._service.reload(reason)

    def certificate_usage(self) -> dict[str, list[str]]:
        """Store refs in use -> users; each entry ID a ref resolved to is listed too."""
        svc = self._service
        usage = {ref: list(users) for ref, users in svc.config.store_refs().items()}
        for ref, entry_id in svc.prepared.store_ids.items():
            if entry_id != ref:
                users = usage.setdefault(entry_id, [])
                users.extend(u for u in usage.get(ref, []) if u not in users)
        return usage

    def held_certificates(self) -> list[HeldCertificate]:
        """Listener, SNI, allowlist, upstream client and CA certificates, plus the store's entries."""
        svc = self._service
        out = []
        seen = set()
        for name, role, cert in svc.prepared.held:
            fp = _cert_fingerprint(cert)
            key = (name, role, fp)
            if key in seen:
                continue
            seen.add(key)
            out.append(HeldCertificate(name=name, role=role, fingerprint=fp, not_after=cert.not_valid_after_utc,
                                       subject=cert.subject.rfc4514_string()))
        for info in svc.store_listing:
            label = f"store:{info.name}" if info.name else f"store:{info.id}"
            out.append(HeldCertificate(name=label, role="store", fingerprint=info.fingerprint,
                                       not_after=info.not_after, subject=info.subject))
        return out

    def upstream_connections(self) -> dict[str, int]:
        """Open upstream connections per API, over every live generation."""
        svc = self._service
        out: dict[str, int] = {}
        for gen in [svc.current, *svc.retiring]:
            if gen is None:
                continue
            for api, up in gen.upstreams.items():
                n = sum(p.open_connections for p in up.pools) if up is not None else 0
                out[api] = out.get(api, 0) + n
        if svc.current is not None:
            for api in svc.current.upstreams:
                out.setdefault(api, 0)
        return out


def _admin_service_class():
    """``txgate.admin.service.AdminService`` when the admin room provides it, else None."""
    try:
        from txgate.admin.service import AdminService
    except ModuleNotFoundError as e:
        if e.name in ("txgate.admin.service",):
            return None
        raise
    return AdminService


def makeService(config: Config, reactor=None, *, loader=None, gateway_class=None, metrics=None) -> MultiService:
    """Build the gateway as a MultiService (validates first; raises ConfigError).

    ``loader`` re-reads the configuration on reload (``lambda: txgate.config.load(path)``); without
    it a reload rebuilds from the same Config (the store may still have changed). The supervisor of
    worker processes (``txgate.runtime.workers``) passes its own ``gateway_class`` and ``metrics``.
    """
    # Validate before anything is created in state_dir: the store is opened first only when the
    # config refers to it (and then must already exist), else after everything else checked out.
    store = open_gateway_store(config, create=False) if config.store_refs() else None
    try:
        prepared = prepare(config, store=store)
        if store is None:
            store = open_gateway_store(config)
        if config.admin.enabled and not config.admin.bind_explicit:
            # The default admin address may be taken (e.g. a second gateway on this host): warn, don't fail.
            held: list = []
            try:
                _check_admin_port(config, prepared, held)
            finally:
                for sock in held:
                    sock.close()
    except BaseException:
        if store is not None:
            store.close()
        raise
    from txgate import pins as _pins

    log.info("SPKI pin backend: {backend}", backend=_pins.describe_backend())
    if metrics is None:
        try:
            from txgate.metrics import Metrics

            metrics = Metrics()
        except ImportError:
            pass
    top = MultiService()
    gateway = (gateway_class or GatewayService)(prepared, reactor, loader=loader, store=store, metrics=metrics)
    gateway.setServiceParent(top)
    facade = ServiceFacade(gateway)
    top.facade = facade
    AdminService = _admin_service_class()
    adm = config.admin
    if AdminService is not None and adm.enabled and prepared.admin_available:
        from txgate.admin.config import AdminConfig as AdminListenerConfig

        admin_config = AdminListenerConfig(bind_host=adm.host, bind_port=adm.port, client_ca=adm.client_ca,
                                           token_file=adm.token_file, state_dir=config.gateway.state_dir,
                                           allowed_hosts=adm.allowed_hosts)
        kw = {"metrics": metrics} if metrics is not None else {}
        AdminService(facade, admin_config, gateway.reactor, **kw).setServiceParent(top)
    try:
        from txgate.expiry import ExpiryMonitor
    except ImportError:
        ExpiryMonitor = None
    if ExpiryMonitor is not None:
        ExpiryMonitor(facade, gateway.reactor, warning_days=config.gateway.expiry_warning_days).setServiceParent(top)
    return top
