"""gw.ini text -> Config: the sections, their keys and values (syntax only; files are checked in ``txgate.plan``)."""
# -*- test-case-name: tests.test_config -*-
from __future__ import annotations

import configparser
import dataclasses
from urllib.parse import urlsplit

from txgate.config.acme import ACME_KEYS, parse_acme, resolve_acme_specs
from txgate.config.apis import API_KEYS, SECURITY_KEYS, check_overlaps, parse_api, parse_security
from txgate.config.hostnames import WILDCARD_RULE, wildcard_ok
from txgate.config.model import (
    ADMIN_DEFAULT_BIND,
    TLS_VERSIONS,
    WORKER_AFFINITY,
    AcmeConfig,
    AdminConfig,
    AdminConfigError,
    Config,
    ConfigError,
    GatewayConfig,
    KubernetesConfig,
    raise_collected,
    ListenerConfig,
    SecurityConfig,
)
from txgate.config.kubernetes import KUBERNETES_KEYS, check_ca_source, parse_kubernetes
from txgate.config.sections import Section, parse_bind, parse_cert_spec, suggest

DEFAULT_CONFIG = """\
# txgate's embedded defaults: a TLS listener on localhost with a certificate from the
# local CA (txgate-state/ca.pem) and the built-in echo backend under /echo.
[gateway]
state_dir = ./txgate-state

[listener:main]
bind = 127.0.0.1:8443
certificate = local

[api:echo]
path = /echo
upstream = builtin:echo
"""

GATEWAY_KEYS = {
    "state_dir", "access_log", "log_format", "shutdown_timeout", "store", "store_secret_file", "expiry_warning_days",
    "error_detail", "workers", "worker_affinity", "h2_engine", "tls_record_layer",
}
ADMIN_KEYS = {"bind", "client_ca", "token_file", "allowed_hosts"}
LISTENER_KEYS = {
    "bind", "tls", "certificate", "sni", "min_tls", "max_tls", "ciphers", "tls13_ciphersuites", "groups",
    "alpn", "session_tickets", "max_header_bytes", "header_timeout", "idle_timeout",
    "max_connections", "client_auth", "client_ca", "client_crl", "client_crl_missing", "verify_depth",
    "announce_client_cas", "redirect_https", "ocsp_stapling", "ocsp_responder", "client_ocsp",
    "client_ocsp_responder", "client_ocsp_timeout",
}
CLIENT_AUTH_MODES = ("none", "optional", "require")
H2_ENGINES = ("auto", "native", "python")  # txgate.http.h2engine.CHOICES (config imports stdlib only)
SECTION_KINDS = ("gateway", "security", "admin", "listener:NAME", "api:NAME")


def _tls_version(section: Section, key: str, default: str, warnings: list[str]) -> str:
    v = section.choice(key, default, TLS_VERSIONS)
    if v in ("1.0", "1.1") and key == "min_tls":
        warnings.append(
            f"{section.path}: [{section.name}] {key}: TLS {v} is deprecated and insecure; 1.2 is the minimum recommended"
        )
    return v


def parse_listener(section: Section, name: str, warnings: list[str]) -> ListenerConfig:
    """Validate one `[listener:NAME]` section."""
    host, port = parse_bind(section, "bind")
    tls = section.bool("tls", True)
    cert = parse_cert_spec(section, "certificate", section.str("certificate", "local"), acme=True)
    sni = []
    for line in section.lines("sni"):
        sname, sep, rest = line.partition("=")
        sname = sname.strip().lower()
        if not sep or not sname or not rest.strip():
            section.fail("sni", f"expected 'NAME = CERT.pem KEY.pem', got '{line}'")
        if not wildcard_ok(sname):
            section.fail("sni", f"'{sname}': {WILDCARD_RULE}")
        sni.append((sname, parse_cert_spec(section, "sni", rest.strip(), sname, acme=True)))
    min_tls = _tls_version(section, "min_tls", "1.2", warnings)
    max_tls = _tls_version(section, "max_tls", "1.3", warnings)
    if TLS_VERSIONS.index(min_tls) > TLS_VERSIONS.index(max_tls):
        section.fail("max_tls", f"max_tls {max_tls} is below min_tls {min_tls}")
    client_ca = section.str("client_ca")
    check_ca_source(section, "client_ca", client_ca)
    crls = tuple(section.words("client_crl") or ())
    client_auth = section.choice("client_auth", "none", CLIENT_AUTH_MODES)
    if not tls and (client_auth != "none" or client_ca or crls):
        key = "client_auth" if client_auth != "none" else ("client_ca" if client_ca else "client_crl")
        section.fail(key, "client certificates need TLS (this listener has tls = off)")
    crl_missing = section.choice("client_crl_missing", "refuse", ("refuse", "allow"))
    if section.has("client_crl_missing") and not crls:
        section.fail("client_crl_missing", "has no effect without client_crl")
    ocsp = _ocsp_keys(section, tls)
    alpn = tuple(section.words("alpn") or ("h2", "http/1.1"))
    for proto in alpn:
        if proto not in ("h2", "http/1.1"):
            section.fail("alpn", f"unsupported protocol '{proto}' (expected h2 and/or http/1.1)")
    return ListenerConfig(
        name=name,
        host=host,
        port=port,
        tls=tls,
        certificate=cert,
        sni=tuple(sni),
        min_tls=min_tls,
        max_tls=max_tls,
        ciphers=section.str("ciphers"),
        tls13_ciphersuites=section.str("tls13_ciphersuites"),
        groups=_groups(section),
        alpn=alpn,
        session_tickets=section.bool("session_tickets", True),
        max_header_bytes=section.number("max_header_bytes", 65536, integer=True, minimum=1024),
        header_timeout=section.number("header_timeout", 10.0, minimum=0.001),
        idle_timeout=section.number("idle_timeout", 60.0, minimum=0.001),
        max_connections=section.number("max_connections", 10000, integer=True, minimum=1),
        client_auth=client_auth,
        client_ca=client_ca,
        client_crl=crls,
        client_crl_missing=crl_missing,
        verify_depth=section.number("verify_depth", 4, integer=True, minimum=0),
        announce_client_cas=section.bool("announce_client_cas", True),
        # None until the APIs are known (parse_text): on by default for a tls = off listener without APIs.
        redirect_https=_redirect_https(section, tls),
        **ocsp,
    )


def _ocsp_keys(section: Section, tls: bool) -> dict:
    """`ocsp_stapling`, `ocsp_responder`, `client_ocsp`, `client_ocsp_responder`, `client_ocsp_timeout`."""
    stapling = section.choice("ocsp_stapling", "auto", ("auto", "on", "off"))
    client = section.choice("client_ocsp", "off", ("off", "soft", "hard"))
    for key in ("ocsp_stapling", "ocsp_responder", "client_ocsp", "client_ocsp_responder"):
        if not tls and section.has(key) and section.str(key) != "off":
            section.fail(key, "OCSP needs TLS (this listener has tls = off)")
    responder = _responder_url(section, "ocsp_responder")
    if responder and stapling == "off":
        section.fail("ocsp_responder", "has no effect with ocsp_stapling = off")
    client_responder = _responder_url(section, "client_ocsp_responder")
    for key in ("client_ocsp_responder", "client_ocsp_timeout"):
        if section.has(key) and client == "off":
            section.fail(key, "has no effect with client_ocsp = off")
    return dict(ocsp_stapling=stapling, ocsp_responder=responder, client_ocsp=client,
                client_ocsp_responder=client_responder,
                client_ocsp_timeout=section.number("client_ocsp_timeout", 2.0, minimum=0.001))


def _responder_url(section: Section, key: str) -> str | None:
    """An OCSP responder URL: http:// or https:// with a host."""
    v = section.str(key)
    if v is None:
        return None
    try:
        parts = urlsplit(v)
        parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        section.fail(key, f"expected an http:// or https:// URL, got '{v}'")
    return v


def _groups(section: Section) -> str | None:
    """`groups`: key-exchange groups, separated by blanks, commas or colons, as one OpenSSL list."""
    v = section.str("groups")
    return None if v is None else ":".join(v.replace(",", " ").replace(":", " ").split())


def _redirect_https(section: Section, tls: bool) -> bool | None:
    """`redirect_https`: only on a tls = off listener; None when not set (the default is decided later)."""
    if not section.has("redirect_https"):
        return None
    if tls:
        section.fail("redirect_https", "only a tls = off listener redirects to https")
    return section.bool("redirect_https", False)


def parse_text(text: str, path: str) -> Config:
    """Parse and validate gw.ini text: structure and values only (``txgate.plan.files.check_files`` checks the
    files it names, certificates come later)."""
    # No DEFAULT section: its keys would silently leak into every section.
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, empty_lines_in_values=False, default_section="\x00no-default"
    )
    parser.optionxform = str  # keys are case-sensitive: 'Bind' is a mistake, not 'bind'
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as e:
        raise ConfigError(path, e.section, None, f"duplicate section (line {e.lineno})") from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(path, e.section, e.option, f"duplicate key (line {e.lineno})") from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(path, None, None, f"line {e.lineno}: text before the first [section]") from None
    except configparser.ParsingError as e:
        line = e.errors[0][0] if e.errors else "?"
        raise ConfigError(path, None, None, f"line {line}: cannot parse this line") from None
    except configparser.Error as e:
        raise ConfigError(path, None, None, str(e).splitlines()[0]) from None

    warnings: list[str] = []
    errors: list[ConfigError] = []  # every mistake found; parsing goes on where it can
    gateway = GatewayConfig()
    security = SecurityConfig()
    admin = AdminConfig()
    kubernetes = KubernetesConfig()
    acme = AcmeConfig()
    listener_sections: list[tuple[str, dict]] = []
    api_sections: list[tuple[str, dict]] = []
    for name in parser.sections():
        values = dict(parser.items(name))
        kind, sep, rest = name.partition(":")
        if name == "gateway":
            gateway = _collect(errors, parse_gateway, Section(path, name, values, GATEWAY_KEYS, errors)) or gateway
        elif name == "admin":
            admin = _collect(errors, parse_admin, Section(path, name, values, ADMIN_KEYS, errors)) or admin
        elif name == "kubernetes":
            kubernetes = _collect(errors, parse_kubernetes,
                                  Section(path, name, values, KUBERNETES_KEYS, errors)) or kubernetes
        elif name == "acme":
            acme = _collect(errors, parse_acme, Section(path, name, values, ACME_KEYS, errors)) or acme
        elif name == "security":
            security = _collect(errors, parse_security, Section(path, name, values, SECURITY_KEYS, errors)) or security
        elif kind == "listener" and sep and rest.strip():
            listener_sections.append((rest.strip(), values))
        elif kind == "api" and sep and rest.strip():
            api_sections.append((rest.strip(), values))
        else:
            known = ["gateway", "security", "admin", "acme", "kubernetes"] + [f"listener:{rest or 'NAME'}", f"api:{rest or 'NAME'}"]
            hint = suggest(name, known) or f" (expected one of {', '.join(SECTION_KINDS)})"
            errors.append(ConfigError(path, name, None, "unknown section" + hint))

    listeners = []
    for lname, values in listener_sections:
        s = Section(path, f"listener:{lname}", values, LISTENER_KEYS, errors)
        ln = _collect(errors, parse_listener, s, lname, warnings)
        if ln is not None:
            listeners.append(ln)
    if not listener_sections and not errors:  # (a misspelt [listener:...] was reported already)
        errors.append(ConfigError(path, None, None, "no [listener:NAME] section: nothing to serve"))
    seen_binds: dict[tuple[str, int], str] = {}
    for ln in listeners:
        if ln.port and (ln.host, ln.port) in seen_binds:
            errors.append(ConfigError(
                path, f"listener:{ln.name}", "bind",
                f"{ln.host}:{ln.port} is already used by [listener:{seen_binds[(ln.host, ln.port)]}]",
            ))
        seen_binds[(ln.host, ln.port)] = ln.name

    # Every declared listener name (one whose section has a mistake too): no second error for it.
    names = [lname for lname, _values in listener_sections]
    apis = []
    for aname, values in api_sections:
        s = Section(path, f"api:{aname}", values, API_KEYS, errors)
        api = _collect(errors, parse_api, s, aname, names)
        if api is not None:
            apis.append(api)
    _collect(errors, check_overlaps, path, apis, names)
    listeners = _collect(errors, _finish_listeners, path, acme, listeners, apis) or listeners
    plain = {ln.name for ln in listeners if not ln.tls}
    for api in apis:
        if api.mtls:
            for ln_name in api.listeners or names:
                if ln_name in plain:
                    errors.append(ConfigError(
                        path, f"api:{api.name}", "mtls",
                        f"listener '{ln_name}' has tls = off: client certificates need TLS "
                        "(list TLS listeners only in 'listeners')",
                    ))
                    break
    if admin.enabled and admin.bind_explicit and admin.port:
        for ln in listeners:
            if ln.port == admin.port and _binds_overlap(ln.host, admin.host):
                errors.append(ConfigError(path, "admin", "bind",
                                          f"{admin.host}:{admin.port} is already used by [listener:{ln.name}]"))
                break
    raise_collected(first_per_key(errors))
    admin = dataclasses.replace(admin, state_dir=gateway.state_dir)
    return Config(path=path, gateway=gateway, listeners=tuple(listeners), apis=tuple(apis), security=security,
                  admin=admin, acme=acme, kubernetes=kubernetes, warnings=tuple(warnings))


def _finish_listeners(path: str, acme: AcmeConfig, listeners: list, apis: list) -> list:
    """What needs the APIs: ACME names of `certificate = acme`, the redirect_https default."""
    def apis_for(name: str) -> list:
        return [a for a in apis if a.listeners is None or name in a.listeners]

    out = []
    for ln in resolve_acme_specs(path, acme, listeners, apis_for):
        redirect = ln.redirect_https
        if redirect is None:
            redirect = not ln.tls and not apis_for(ln.name)
        out.append(dataclasses.replace(ln, redirect_https=redirect))
    return out


def _collect(errors: list[ConfigError], parse, *args):
    """``parse(*args)``, or None after recording the ConfigError it raised (parsing goes on)."""
    try:
        return parse(*args)
    except ConfigError as e:
        errors.append(e)
        return None


def first_per_key(errors: list[ConfigError]) -> list[ConfigError]:
    """The first mistake of each (section, key): a bad value is not reported again as a missing one."""
    seen: set = set()
    out = []
    for e in errors:
        where = (e.section, e.key)
        if where[1] is None or where not in seen:
            seen.add(where)
            out.append(e)
    return out


def parse_gateway(s: Section) -> GatewayConfig:
    """Validate `[gateway]`."""
    return GatewayConfig(
        state_dir=s.str("state_dir", "./txgate-state"),
        access_log=s.str("access_log", "-"),
        log_format=s.choice("log_format", "text", ("text", "json")),
        shutdown_timeout=s.number("shutdown_timeout", 30.0),
        store=parse_store_url(s, "store"),
        store_secret_file=s.str("store_secret_file"),
        expiry_warning_days=s.number("expiry_warning_days", 30, integer=True, minimum=1),
        error_detail=s.bool("error_detail", False),
        workers=None if s.str("workers", "auto") == "auto" else s.number("workers", 1, integer=True, minimum=1),
        worker_affinity=s.choice("worker_affinity", "client_address", WORKER_AFFINITY),
        h2_engine=s.choice("h2_engine", "auto", H2_ENGINES),
        tls_record_layer=s.choice("tls_record_layer", "txgate", ("txgate", "openssl")),
    )


def _binds_overlap(a: str, b: str) -> bool:
    wild = ("", "0.0.0.0", "::")
    return a == b or a in wild or b in wild


def parse_store_url(section: Section, key: str) -> str:
    """`dir` or `redis://[:PASSWORD@]HOST:PORT/DB` (also `rediss://`)."""
    v = section.str(key, "dir")
    if v == "dir":
        return v
    try:
        parts = urlsplit(v)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("redis", "rediss") or not parts.hostname:
        section.fail(key, f"expected 'dir' or 'redis://HOST:PORT/DB', got '{_redact_url(v)}'")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        section.fail(key, f"'{_redact_url(v)}': the database must be a number (redis://HOST:PORT/DB)")
    if parts.query or parts.fragment or port == 0:
        section.fail(key, f"expected 'dir' or 'redis://HOST:PORT/DB', got '{_redact_url(v)}'")
    return v


def _redact_url(url: str) -> str:
    """A URL without its password (error messages never carry secrets)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{netloc}").geturl()


def parse_admin(section: Section) -> AdminConfig:
    """Validate `[admin]`: a non-loopback bind needs client_ca (mTLS) or token_file (bearer token)."""
    client_ca = section.str("client_ca")
    token_file = section.str("token_file")
    allowed_hosts = tuple(section.words("allowed_hosts") or ())
    enabled = not (section.has("bind") and section.str("bind") == "off")
    explicit = section.has("bind")
    host, port = parse_bind(section, "bind") if explicit and enabled else ADMIN_DEFAULT_BIND
    try:
        return AdminConfig(enabled=enabled, bind_host=host, bind_port=port, client_ca=client_ca,
                           token_file=token_file, allowed_hosts=allowed_hosts, bind_explicit=explicit)
    except AdminConfigError as e:
        section.fail(e.key, str(e))


def load(path: str) -> Config:
    """Read a gw.ini file and validate its text (``parse_text``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(path, None, None, "file not found") from None
    except PermissionError:
        raise ConfigError(path, None, None, "permission denied") from None
    except IsADirectoryError:
        raise ConfigError(path, None, None, "is a directory, not a file") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, None, "not UTF-8 text") from None
    return parse_text(text, path)


def default_config() -> Config:
    """The embedded defaults used when no --config is given."""
    return parse_text(DEFAULT_CONFIG, "<embedded defaults>")
