"""gw.ini -> frozen, typed configuration objects; every error names file, section and key."""
from __future__ import annotations

import configparser
import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")


class ConfigError(Exception):
    """A configuration mistake: one line naming the file, section and key."""

    def __init__(self, path: str, section: str | None, key: str | None, message: str) -> None:
        self.path, self.section, self.key, self.message = path, section, key, message
        where = path
        if section:
            where += f": [{section}]"
        if key:
            where += f" {key}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class CertSpec:
    """Where a certificate comes from: `local` (the embedded CA), a CERT.pem KEY.pem pair, or `store:REF`."""

    local: bool = True
    cert_path: str | None = None
    key_path: str | None = None
    # `store:NAME` (the current version, followed on reload), `store:NAME@VERSION` or `store:ID` (pinned).
    store_ref: str | None = None

    @property
    def label(self) -> str:
        """How the spec is written in gw.ini (for messages)."""
        if self.store_ref is not None:
            return f"store:{self.store_ref}"
        if self.local:
            return "local"
        return f"{self.cert_path} {self.key_path}"


@dataclass(frozen=True)
class GatewayConfig:
    state_dir: str = "./txgate-state"
    access_log: str = "-"
    log_format: str = "text"
    shutdown_timeout: float = 30.0
    # The certificate store: "dir" (state_dir/store) or "redis://HOST:PORT/DB".
    store: str = "dir"
    store_secret_file: str | None = None
    expiry_warning_days: int = 30
    # Worker processes under `twistd txgate`: None = auto (the CPUs this process may run on).
    workers: int | None = None
    # How a worker is chosen for a new connection: "client_address" (same client, same worker) or "none".
    worker_affinity: str = "client_address"


WORKER_AFFINITY = ("client_address", "none")


@dataclass(frozen=True)
class AdminConfig:
    """`[admin]`: the admin API listener (on by default, on loopback)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9901
    client_ca: str | None = None   # mTLS: PEM bundle of CAs whose client certificates may use the API
    token_file: str | None = None  # bearer token (first line of the file)
    # More host names the admin API answers to (Host, Origin), lower case; see host_name_problem.
    allowed_hosts: tuple[str, ...] = ()
    # False while `bind` is not written: a busy default port is then a warning, not an error.
    bind_explicit: bool = False

    @property
    def loopback(self) -> bool:
        """Whether the admin API listens on a loopback address only."""
        return is_loopback(self.host)


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    host: str
    port: int
    tls: bool = True
    certificate: CertSpec = CertSpec()
    sni: tuple[tuple[str, CertSpec], ...] = ()
    min_tls: str = "1.2"
    max_tls: str = "1.3"
    ciphers: str | None = None
    tls13_ciphersuites: str | None = None
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    session_tickets: bool = True
    max_header_bytes: int = 65536
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10000
    # Client certificates (mTLS issue).
    client_auth: str = "none"
    client_ca: str | None = None
    client_crl: tuple[str, ...] = ()
    verify_depth: int = 4
    announce_client_cas: bool = True


@dataclass(frozen=True)
class Target:
    """One upstream URL: scheme, host, port and base path."""

    scheme: str
    host: str
    port: int
    base_path: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class ApiConfig:
    name: str
    upstreams: tuple[Target, ...] = ()
    echo: bool = False
    listeners: tuple[str, ...] | None = None
    hosts: tuple[str, ...] = ()
    path: str = "/"
    strip_path: bool = False
    upstream_ca: str | None = None
    upstream_server_name: str | None = None
    upstream_verify: bool = True
    preserve_host: bool = False
    connect_timeout: float = 5.0
    timeout: float = 30.0
    max_body_bytes: int = 0
    max_connections: int = 64
    max_pending: int = 256
    # Upstream trust (pinning issue). None means "not set here: use [security]".
    pinned_public_keys: tuple[str, ...] | None = None
    pin_mode: str | None = None
    upstream_certificate: CertSpec | None = None
    upstream_min_tls: str = "1.2"
    upstream_ciphers: str | None = None
    # Client certificates (mTLS issue).
    mtls: bool = False
    client_certificates: tuple[str, ...] = ()
    client_subjects: tuple[str, ...] = ()
    client_sans: tuple[str, ...] = ()
    forward_client_cert: str = "off"


@dataclass(frozen=True)
class SecurityConfig:
    """`[security]`: gateway-wide upstream trust rules, keyed by host pattern."""

    # (pattern, pin tokens): pattern is host, host:port, *.example.com or *.
    pinned_public_keys: tuple[tuple[str, tuple[str, ...]], ...] = ()
    pin_mode: str = "enforce"
    upstream_certificates: tuple[tuple[str, CertSpec], ...] = ()
    # Client-certificate allowlist entries added to every `mtls = require` API.
    client_certificates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: str
    gateway: GatewayConfig = GatewayConfig()
    listeners: tuple[ListenerConfig, ...] = ()
    apis: tuple[ApiConfig, ...] = ()
    security: SecurityConfig = SecurityConfig()
    admin: AdminConfig = AdminConfig()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def apis_for(self, listener: str) -> tuple[ApiConfig, ...]:
        """The APIs served on the named listener."""
        return tuple(a for a in self.apis if a.listeners is None or listener in a.listeners)

    def cert_specs(self) -> list[tuple[str, str, str, CertSpec]]:
        """Every certificate spec as (section, key, user label, spec); user labels name who uses it."""
        out: list[tuple[str, str, str, CertSpec]] = []
        for ln in self.listeners:
            if not ln.tls:
                continue
            section = f"listener:{ln.name}"
            out.append((section, "certificate", section, ln.certificate))
            for name, spec in ln.sni:
                out.append((section, "sni", f"{section} sni:{name}", spec))
        for api in self.apis:
            if api.upstream_certificate is not None:
                out.append((f"api:{api.name}", "upstream_certificate", f"api:{api.name} upstream_certificate",
                            api.upstream_certificate))
        for pattern, spec in self.security.upstream_certificates:
            out.append(("security", "upstream_certificates", f"security upstream_certificates {pattern}", spec))
        return out

    def store_refs(self) -> dict[str, list[str]]:
        """Store references in use (as written after `store:`) -> who uses them."""
        refs: dict[str, list[str]] = {}
        for _section, _key, user, spec in self.cert_specs():
            if spec.store_ref is not None:
                users = refs.setdefault(spec.store_ref, [])
                if user not in users:
                    users.append(user)
        return refs


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
    "workers", "worker_affinity",
}
ADMIN_KEYS = {"bind", "client_ca", "token_file", "allowed_hosts"}
ADMIN_DEFAULT_BIND = ("127.0.0.1", 9901)
LISTENER_KEYS = {
    "bind", "tls", "certificate", "sni", "min_tls", "max_tls", "ciphers", "tls13_ciphersuites",
    "alpn", "session_tickets", "max_header_bytes", "header_timeout", "idle_timeout",
    "max_connections", "client_auth", "client_ca", "client_crl", "verify_depth", "announce_client_cas",
}
API_KEYS = {
    "listeners", "hosts", "path", "strip_path", "upstream", "upstream_ca", "upstream_server_name",
    "upstream_verify", "preserve_host", "connect_timeout", "timeout", "max_body_bytes",
    "max_connections", "max_pending", "pinned_public_keys", "pin_mode", "upstream_certificate",
    "upstream_min_tls", "upstream_ciphers", "mtls", "client_certificates", "client_subjects", "client_sans",
    "forward_client_cert",
}
SECURITY_KEYS = {"pinned_public_keys", "pin_mode", "upstream_certificates", "client_certificates"}
PIN_MODES = ("enforce", "report")
CLIENT_AUTH_MODES = ("none", "optional", "require")
MTLS_MODES = ("off", "require")
FORWARD_CLIENT_CERT = ("off", "xfcc")
SECTION_KINDS = ("gateway", "security", "admin", "listener:NAME", "api:NAME")


def _split_pattern(pattern: str) -> tuple[str, str | None]:
    """'host:port', '[v6]:port', 'host', '*', '*:port' -> (host, port or None)."""
    if pattern.startswith("["):
        host, sep, port = pattern.rpartition(":")
        if sep and host.endswith("]"):
            return host[1:-1], port
        return pattern.strip("[]"), None
    if pattern.count(":") == 1:
        host, _, port = pattern.partition(":")
        return host, port
    return pattern, None


def host_pattern_rank(pattern: str, host: str, port: int) -> int:
    """How specifically a `[security]` host pattern matches host:port (0 = not at all).

    The host part decides first (exact > *.wildcard > *), then a port makes a pattern more specific
    than the same host part without one: host:port > host > *.w:port > *.w > *:port > *.
    """
    pat_host, pat_port = _split_pattern(pattern)
    if pat_port is not None and pat_port != str(port):
        return 0
    if pat_host == "*":
        spec = 1
    elif pat_host == host:
        spec = 3
    elif _host_matches(pat_host, host):
        spec = 2
    else:
        return 0
    return spec * 2 + (1 if pat_port is not None else 0)


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        dot = host.find(".")
        return dot > 0 and host[dot + 1:] == pattern[2:]
    return pattern == host


def select_by_host(rules, host: str | tuple[str, ...], port: int):
    """The value of the most specific rule matching host:port, or None.

    ``host`` may be several names for the same upstream (its upstream_server_name and its URL
    host): the most specific match over all of them wins."""
    hosts = (host,) if isinstance(host, str) else host
    best, best_rank = None, 0
    for pattern, value in rules:
        for h in hosts:
            rank = host_pattern_rank(pattern, h, port)
            if rank > best_rank:
                best, best_rank = value, rank
    return best


def _pin_tokens(section: _Section, key: str, words: list[str]) -> tuple[str, ...]:
    """Pins as written: sha256/BASE64, 64 hex digits, or a PEM file (decoded at startup)."""
    out = []
    for w in words:
        if w.startswith("sha256/") or (len(w) == 64 and all(c in "0123456789abcdefABCDEF" for c in w)):
            out.append(w)
        elif not os.path.exists(w) and "/" not in w and "." not in w:
            section.fail(key, f"'{w}' is not a pin (expected sha256/BASE64, 64 hex digits, or a PEM file)")
        else:
            section.readable_file(key, w)
            out.append(w)
    return tuple(out)


def _host_pattern(section: _Section, key: str, pattern: str) -> str:
    pattern = pattern.strip()
    p = pattern.lower()
    host, port = _split_pattern(p)
    if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
        section.fail(key, f"'{pattern}': invalid port")
    if host != "*" and ("*" in host and not (host.startswith("*.") and "*" not in host[2:]) or not host):
        section.fail(key, f"'{pattern}': expected a host, host:port, *.example.com or *")
    return p


def parse_security(section: _Section) -> SecurityConfig:
    """Validate `[security]`."""
    pins = []
    for line in section.lines("pinned_public_keys"):
        pattern, sep, rest = line.partition("=")
        if not sep or not pattern.strip() or not rest.split():
            section.fail("pinned_public_keys", f"expected 'HOST_PATTERN = PIN [PIN ...]', got '{line}'")
        pins.append((_host_pattern(section, "pinned_public_keys", pattern),
                     _pin_tokens(section, "pinned_public_keys", rest.split())))
    certs = []
    for line in section.lines("upstream_certificates"):
        pattern, sep, rest = line.partition("=")
        if not sep or not pattern.strip():
            section.fail("upstream_certificates", f"expected 'HOST_PATTERN = CERT.pem KEY.pem', got '{line}'")
        spec = parse_cert_spec(section, "upstream_certificates", rest.strip())
        if spec.local:
            section.fail("upstream_certificates", "expected 'CERT.pem KEY.pem' ('local' is for listeners)")
        certs.append((_host_pattern(section, "upstream_certificates", pattern), spec))
    return SecurityConfig(
        pinned_public_keys=tuple(pins),
        pin_mode=section.choice("pin_mode", "enforce", PIN_MODES),
        upstream_certificates=tuple(certs),
        client_certificates=_client_cert_entries(section, "client_certificates"),
    )


_HEX64 = frozenset("0123456789abcdefABCDEF")


def _client_cert_entries(section: _Section, key: str) -> tuple[str, ...]:
    """Allowlist entries as written: sha256/BASE64 pins, 64-hex fingerprints, or PEM files (read at startup)."""
    out = []
    for w in section.words(key) or ():
        if w.lower().startswith("sha256/") or (len(w) == 64 and _HEX64.issuperset(w)):
            out.append(w)
        elif not os.path.exists(w) and "/" not in w and "." not in w:
            section.fail(key, f"'{w}' is not an entry (expected sha256/BASE64, 64 hex digits, or a PEM file)")
        else:
            section.readable_file(key, w)
            out.append(w)
    return tuple(out)


def _client_subjects(section: _Section, key: str) -> tuple[str, ...]:
    """`re:REGEX` (checked to compile) or an exact RFC 4514 DN, one per line."""
    out = []
    for line in section.lines(key):
        if line.startswith("re:"):
            try:
                re.compile(line[3:])
            except re.error as e:
                section.fail(key, f"'{line}': invalid regular expression: {e}")
        elif "=" not in line:
            section.fail(key, f"'{line}': expected an RFC 4514 name such as 'CN=client,O=Example' or 're:REGEX'")
        out.append(line)
    if section.has(key) and not out:
        section.fail(key, "empty value")
    return tuple(out)


def _client_sans(section: _Section, key: str) -> tuple[str, ...]:
    """DNS names or URIs (spiffe://...), `*` wildcards allowed."""
    out = []
    for w in section.words(key) or ():
        if any(c.isspace() or ord(c) < 32 for c in w):
            section.fail(key, f"'{w}': not a DNS name or URI")
        if ":" not in w and not _HOST_CHARS.issuperset(w.lower()):
            section.fail(key, f"'{w}': not a DNS name (a URI needs a scheme, e.g. spiffe://...)")
        out.append(w)
    return tuple(out)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Section:
    """Typed accessors over one INI section that raise ConfigError with file/section/key."""

    def __init__(self, path: str, name: str, values: dict[str, str], allowed: set[str]) -> None:
        self.path, self.name, self.values = path, name, values
        for key in values:
            if key not in allowed:
                self.fail(key, "unknown key" + _suggest(key, allowed))

    def fail(self, key: str | None, message: str):
        raise ConfigError(self.path, self.name, key, message)

    def has(self, key: str) -> bool:
        return key in self.values

    def str(self, key: str, default: str | None = None) -> str | None:
        v = self.values.get(key)
        if v is None:
            return default
        v = v.strip()
        if not v:
            self.fail(key, "empty value")
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.values.get(key)
        if v is None:
            return default
        low = v.strip().lower()
        if low in ("on", "yes", "true", "1"):
            return True
        if low in ("off", "no", "false", "0"):
            return False
        self.fail(key, f"expected on/off, got '{v.strip()}'")

    def number(self, key: str, default: float, *, integer: bool = False, minimum: float = 0):
        v = self.values.get(key)
        if v is None:
            return default
        try:
            n = int(v.strip()) if integer else float(v.strip())
        except ValueError:
            kind = "an integer" if integer else "a number"
            self.fail(key, f"expected {kind}, got '{v.strip()}'")
        if not math.isfinite(n):
            self.fail(key, f"expected a finite number, got '{v.strip()}'")
        if n < minimum:
            self.fail(key, f"must be at least {minimum}, got {v.strip()}")
        return n

    def choice(self, key: str, default: str, choices) -> str:
        v = self.str(key, default)
        if v not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got '{v}'" + _suggest(v, choices))
        return v

    def words(self, key: str) -> list[str] | None:
        v = self.values.get(key)
        if v is None:
            return None
        words = v.split()
        if not words:
            self.fail(key, "empty value")
        return words

    def lines(self, key: str) -> list[str]:
        v = self.values.get(key)
        if v is None:
            return []
        return [line.strip() for line in v.splitlines() if line.strip() and not line.strip().startswith("#")]

    def readable_file(self, key: str, value: str) -> str:
        if not os.path.exists(value):
            self.fail(key, f"{value}: file not found")
        if not os.path.isfile(value):
            self.fail(key, f"{value}: not a regular file")
        if not os.access(value, os.R_OK):
            self.fail(key, f"{value}: permission denied")
        return value


def parse_bind(section: _Section, key: str) -> tuple[str, int]:
    """Parse `HOST:PORT` or `[V6]:PORT`."""
    v = section.str(key)
    if v is None:
        section.fail(key, "missing (expected HOST:PORT)")
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        section.fail(key, f"expected HOST:PORT, got '{v}'")
    if host.startswith("["):
        if not host.endswith("]"):
            section.fail(key, f"expected [IPv6]:PORT, got '{v}'")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            section.fail(key, f"'{host}' is not an IPv6 address")
    elif ":" in host:
        section.fail(key, f"IPv6 addresses need brackets: '[{host}]:{port}'")
    try:
        n = int(port)
    except ValueError:
        section.fail(key, f"port '{port}' is not a number")
    if not 0 <= n <= 65535:
        section.fail(key, f"port {n} is out of range")
    return host, n


_STORE_REF_RE = re.compile(r"^(?:[0-9a-fA-F]{64}|[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?:@[1-9][0-9]*)?)$")


def parse_store_ref(section: _Section, key: str, word: str) -> str:
    """The REF of a `store:REF` word: NAME, NAME@VERSION or ID (64 hex digits); syntax only."""
    ref = word[len("store:"):]
    name = ref.partition("@")[0]
    if not _STORE_REF_RE.match(ref) or (len(name) == 64 and "@" in ref and _HEX64.issuperset(name)):
        section.fail(key, f"'{word}': expected store:NAME or store:ID (NAME: 1-128 of A-Z a-z 0-9 . _ -; "
                          "ID: the 64 hex digits of the SHA-256 fingerprint)")
    return ref.lower() if len(ref) == 64 and _HEX64.issuperset(ref) else ref


def parse_cert_spec(section: _Section, key: str, value: str) -> CertSpec:
    """`local`, `CERT.pem KEY.pem` (files must exist and be readable) or `store:NAME` / `store:ID`."""
    words = value.split()
    if words == ["local"]:
        return CertSpec(local=True)
    if words and words[0].startswith("store:"):
        if len(words) != 1:
            section.fail(key, f"expected one store reference (store:NAME or store:ID), got '{value}'")
        return CertSpec(local=False, store_ref=parse_store_ref(section, key, words[0]))
    if len(words) != 2:
        section.fail(key, f"expected 'local', 'CERT.pem KEY.pem' or 'store:NAME', got '{value}'")
    cert, key_path = (section.readable_file(key, w) for w in words)
    return CertSpec(local=False, cert_path=cert, key_path=key_path)


def _tls_version(section: _Section, key: str, default: str, warnings: list[str]) -> str:
    v = section.choice(key, default, TLS_VERSIONS)
    if v in ("1.0", "1.1") and key == "min_tls":
        warnings.append(
            f"{section.path}: [{section.name}] {key}: TLS {v} is deprecated and insecure; 1.2 is the minimum recommended"
        )
    return v


def parse_listener(section: _Section, name: str, warnings: list[str]) -> ListenerConfig:
    """Validate one `[listener:NAME]` section."""
    host, port = parse_bind(section, "bind")
    tls = section.bool("tls", True)
    cert = parse_cert_spec(section, "certificate", section.str("certificate", "local"))
    sni = []
    for line in section.lines("sni"):
        sname, sep, rest = line.partition("=")
        sname = sname.strip().lower()
        if not sep or not sname or not rest.strip():
            section.fail("sni", f"expected 'NAME = CERT.pem KEY.pem', got '{line}'")
        if "*" in sname and not (sname.startswith("*.") and "*" not in sname[2:]):
            section.fail("sni", f"'{sname}': wildcards are only allowed as the first label ('*.example.com')")
        sni.append((sname, parse_cert_spec(section, "sni", rest.strip())))
    min_tls = _tls_version(section, "min_tls", "1.2", warnings)
    max_tls = _tls_version(section, "max_tls", "1.3", warnings)
    if TLS_VERSIONS.index(min_tls) > TLS_VERSIONS.index(max_tls):
        section.fail("max_tls", f"max_tls {max_tls} is below min_tls {min_tls}")
    client_ca = section.str("client_ca")
    if client_ca is not None:
        section.readable_file("client_ca", client_ca)
    crls = tuple(section.readable_file("client_crl", w) for w in section.words("client_crl") or ())
    client_auth = section.choice("client_auth", "none", CLIENT_AUTH_MODES)
    if not tls and (client_auth != "none" or client_ca or crls):
        key = "client_auth" if client_auth != "none" else ("client_ca" if client_ca else "client_crl")
        section.fail(key, "client certificates need TLS (this listener has tls = off)")
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
        alpn=alpn,
        session_tickets=section.bool("session_tickets", True),
        max_header_bytes=section.number("max_header_bytes", 65536, integer=True, minimum=1024),
        header_timeout=section.number("header_timeout", 10.0, minimum=0.001),
        idle_timeout=section.number("idle_timeout", 60.0, minimum=0.001),
        max_connections=section.number("max_connections", 10000, integer=True, minimum=1),
        client_auth=client_auth,
        client_ca=client_ca,
        client_crl=crls,
        verify_depth=section.number("verify_depth", 4, integer=True, minimum=0),
        announce_client_cas=section.bool("announce_client_cas", True),
    )


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._*:")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_target(section: _Section, url: str) -> Target:
    """One `http://` or `https://` upstream URL."""
    try:
        parts = urlsplit(url)
    except ValueError as e:
        section.fail("upstream", f"'{url}': {e}")
    try:
        port = parts.port
    except ValueError:
        section.fail("upstream", f"'{url}': invalid port (expected a number from 1 to 65535)")
    if parts.scheme not in ("http", "https"):
        section.fail("upstream", f"'{url}': expected an http:// or https:// URL, or builtin:echo")
    if not parts.hostname:
        section.fail("upstream", f"'{url}': no host")
    if parts.query or parts.fragment or parts.username:
        section.fail("upstream", f"'{url}': query, fragment and credentials are not allowed")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if port == 0:
        section.fail("upstream", f"'{url}': invalid port (expected a number from 1 to 65535)")
    return Target(parts.scheme, parts.hostname.lower(), port, parts.path.rstrip("/"))


def parse_api(section: _Section, name: str, listener_names: list[str]) -> ApiConfig:
    """Validate one `[api:NAME]` section."""
    words = section.words("upstream")
    if words is None:
        section.fail("upstream", "missing (one or more http(s):// URLs, or builtin:echo)")
    echo = words == ["builtin:echo"]
    targets: tuple[Target, ...] = ()
    if not echo:
        if "builtin:echo" in words:
            section.fail("upstream", "builtin:echo cannot be mixed with URLs")
        targets = tuple(parse_target(section, w) for w in words)
    listeners = section.words("listeners")
    if listeners is not None:
        for ln in listeners:
            if ln not in listener_names:
                section.fail("listeners", f"no listener named '{ln}'" + _suggest(ln, listener_names))
    hosts = []
    for h in section.words("hosts") or ():
        h = h.lower().rstrip(".")
        if "*" in h and not (h.startswith("*.") and "*" not in h[2:]):
            section.fail("hosts", f"'{h}': wildcards are only allowed as the first label ('*.example.com')")
        if ":" in h and not _is_ip(h.strip("[]")):
            section.fail("hosts", f"'{h}': a host name without a port is expected")
        if not h or not _HOST_CHARS.issuperset(h.strip("[]")):
            section.fail("hosts", f"'{h}': not a valid host name")
        if h not in hosts:
            hosts.append(h)
    path = section.str("path", "/")
    if not path.startswith("/"):
        section.fail("path", f"must start with '/', got '{path}'")
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    upstream_ca = section.str("upstream_ca")
    if upstream_ca is not None:
        section.readable_file("upstream_ca", upstream_ca)
    return ApiConfig(
        name=name,
        upstreams=targets,
        echo=echo,
        listeners=tuple(listeners) if listeners is not None else None,
        hosts=tuple(hosts),
        path=path,
        strip_path=section.bool("strip_path", False),
        upstream_ca=upstream_ca,
        upstream_server_name=section.str("upstream_server_name"),
        upstream_verify=section.bool("upstream_verify", True),
        preserve_host=section.bool("preserve_host", False),
        connect_timeout=section.number("connect_timeout", 5.0, minimum=0.001),
        timeout=section.number("timeout", 30.0, minimum=0.001),
        max_body_bytes=section.number("max_body_bytes", 0, integer=True),
        max_connections=section.number("max_connections", 64, integer=True, minimum=1),
        max_pending=section.number("max_pending", 256, integer=True),
        **_api_trust(section),
        **_api_client_auth(section),
    )


def _api_client_auth(section: _Section) -> dict:
    """The client-certificate (mTLS) keys of an `[api:NAME]` section."""
    mtls = section.choice("mtls", "off", MTLS_MODES) == "require"
    entries = _client_cert_entries(section, "client_certificates")
    subjects = _client_subjects(section, "client_subjects")
    sans = _client_sans(section, "client_sans")
    if not mtls:
        for key, value in (("client_certificates", entries), ("client_subjects", subjects), ("client_sans", sans)):
            if value:
                section.fail(key, "has no effect with mtls = off (set mtls = require)")
    return dict(
        mtls=mtls,
        client_certificates=entries,
        client_subjects=subjects,
        client_sans=sans,
        forward_client_cert=section.choice("forward_client_cert", "off", FORWARD_CLIENT_CERT),
    )


def _api_trust(section: _Section) -> dict:
    """The upstream-trust keys of an `[api:NAME]` section."""
    pins = section.words("pinned_public_keys")
    cert = section.str("upstream_certificate")
    spec = None
    if cert is not None:
        spec = parse_cert_spec(section, "upstream_certificate", cert)
        if spec.local:
            section.fail("upstream_certificate", "expected 'CERT.pem KEY.pem' ('local' is for listeners)")
    min_tls = section.choice("upstream_min_tls", "1.2", TLS_VERSIONS)
    return dict(
        pinned_public_keys=_pin_tokens(section, "pinned_public_keys", pins) if pins is not None else None,
        pin_mode=section.choice("pin_mode", "enforce", PIN_MODES) if section.has("pin_mode") else None,
        upstream_certificate=spec,
        upstream_min_tls=min_tls,
        upstream_ciphers=section.str("upstream_ciphers"),
    )


def parse_text(text: str, path: str) -> Config:
    """Parse and validate gw.ini text (structure and values; certificates come later)."""
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
    gateway = GatewayConfig()
    security = SecurityConfig()
    admin = AdminConfig()
    listener_sections: list[tuple[str, dict]] = []
    api_sections: list[tuple[str, dict]] = []
    for name in parser.sections():
        values = dict(parser.items(name))
        kind, sep, rest = name.partition(":")
        if name == "gateway":
            s = _Section(path, name, values, GATEWAY_KEYS)
            log_format = s.choice("log_format", "text", ("text", "json"))
            secret_file = s.str("store_secret_file")
            if secret_file is not None:
                s.readable_file("store_secret_file", secret_file)
            gateway = GatewayConfig(
                state_dir=s.str("state_dir", "./txgate-state"),
                access_log=s.str("access_log", "-"),
                log_format=log_format,
                shutdown_timeout=s.number("shutdown_timeout", 30.0),
                store=parse_store_url(s, "store"),
                store_secret_file=secret_file,
                expiry_warning_days=s.number("expiry_warning_days", 30, integer=True, minimum=1),
                workers=None if s.str("workers", "auto") == "auto" else s.number("workers", 1, integer=True,
                                                                               minimum=1),
                worker_affinity=s.choice("worker_affinity", "client_address", WORKER_AFFINITY),
            )
        elif name == "admin":
            admin = parse_admin(_Section(path, name, values, ADMIN_KEYS))
        elif name == "security":
            security = parse_security(_Section(path, name, values, SECURITY_KEYS))
        elif kind == "listener" and sep and rest.strip():
            listener_sections.append((rest.strip(), values))
        elif kind == "api" and sep and rest.strip():
            api_sections.append((rest.strip(), values))
        else:
            known = ["gateway", "security", "admin"] + [f"listener:{rest or 'NAME'}", f"api:{rest or 'NAME'}"]
            hint = _suggest(name, known) or f" (expected one of {', '.join(SECTION_KINDS)})"
            raise ConfigError(path, name, None, "unknown section" + hint)

    listeners = []
    for lname, values in listener_sections:
        s = _Section(path, f"listener:{lname}", values, LISTENER_KEYS)
        listeners.append(parse_listener(s, lname, warnings))
    if not listeners:
        raise ConfigError(path, None, None, "no [listener:NAME] section: nothing to serve")
    seen_binds: dict[tuple[str, int], str] = {}
    for ln in listeners:
        if ln.port and (ln.host, ln.port) in seen_binds:
            raise ConfigError(
                path, f"listener:{ln.name}", "bind",
                f"{ln.host}:{ln.port} is already used by [listener:{seen_binds[(ln.host, ln.port)]}]",
            )
        seen_binds[(ln.host, ln.port)] = ln.name

    names = [ln.name for ln in listeners]
    apis = []
    for aname, values in api_sections:
        s = _Section(path, f"api:{aname}", values, API_KEYS)
        apis.append(parse_api(s, aname, names))
    _check_overlaps(path, apis, names)
    plain = {ln.name for ln in listeners if not ln.tls}
    for api in apis:
        if api.mtls:
            for ln in api.listeners or names:
                if ln in plain:
                    raise ConfigError(
                        path, f"api:{api.name}", "mtls",
                        f"listener '{ln}' has tls = off: client certificates need TLS "
                        "(list TLS listeners only in 'listeners')",
                    )
    if admin.enabled and admin.bind_explicit and admin.port:
        for ln in listeners:
            if ln.port == admin.port and _binds_overlap(ln.host, admin.host):
                raise ConfigError(path, "admin", "bind",
                                  f"{admin.host}:{admin.port} is already used by [listener:{ln.name}]")
    return Config(path=path, gateway=gateway, listeners=tuple(listeners), apis=tuple(apis), security=security,
                  admin=admin, warnings=tuple(warnings))


def _binds_overlap(a: str, b: str) -> bool:
    wild = ("", "0.0.0.0", "::")
    return a == b or a in wild or b in wild


_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def host_name_problem(name: str) -> str | None:
    """Why ``name`` is not a host name for `[admin] allowed_hosts` (None if it is one).

    A DNS name of letters, digits, ``-`` and ``.`` (an IPv4 address passes too); no port, no
    wildcard, no IPv6 literal, no trailing dot. Shared with ``txgate.admin.config.AdminConfig``.
    """
    if "*" in name:
        return f"'{name}': wildcards are not allowed (list each host name)"
    if ":" in name or "[" in name or "]" in name:
        return f"'{name}': expected a host name without a port (the admin API's port is accepted with or without it)"
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.lower().split(".")):
        return f"'{name}': expected a host name (letters, digits, '-' and '.'; labels of 1-63 characters)"
    return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_store_url(section: _Section, key: str) -> str:
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


def parse_admin(section: _Section) -> AdminConfig:
    """Validate `[admin]`: a non-loopback bind needs client_ca (mTLS) or token_file (bearer token)."""
    client_ca = section.str("client_ca")
    if client_ca is not None:
        section.readable_file("client_ca", client_ca)
    token_file = section.str("token_file")
    if token_file is not None:
        section.readable_file("token_file", token_file)
    allowed_hosts: list[str] = []
    for name in section.words("allowed_hosts") or []:
        problem = host_name_problem(name)
        if problem is not None:
            section.fail("allowed_hosts", problem)
        if name.lower() not in allowed_hosts:
            allowed_hosts.append(name.lower())
    if section.has("bind") and section.str("bind") == "off":
        return AdminConfig(enabled=False, client_ca=client_ca, token_file=token_file,
                           allowed_hosts=tuple(allowed_hosts), bind_explicit=True)
    explicit = section.has("bind")
    host, port = parse_bind(section, "bind") if explicit else ADMIN_DEFAULT_BIND
    if not is_loopback(host) and client_ca is None and token_file is None:
        where = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
        section.fail("bind", f"{where} is not a loopback address: protect the admin API with client_ca (mTLS) "
                             "or token_file (bearer token), or bind it to 127.0.0.1")
    return AdminConfig(enabled=True, host=host, port=port, client_ca=client_ca, token_file=token_file,
                       allowed_hosts=tuple(allowed_hosts), bind_explicit=explicit)


def _check_overlaps(path: str, apis: list[ApiConfig], listener_names: list[str]) -> None:
    """Two APIs on a shared listener with the same host and path prefix are ambiguous."""
    claimed: dict[tuple[str, str, str], str] = {}
    for api in apis:
        for listener in api.listeners or listener_names:
            for host in api.hosts or ("*",):
                key = (listener, host, api.path)
                if key in claimed:
                    raise ConfigError(
                        path, f"api:{api.name}", "path",
                        f"host '{host}' and path '{api.path}' are already served by [api:{claimed[key]}]",
                    )
                claimed[key] = api.name


def check_state_dir(config: Config) -> None:
    """`[gateway] state_dir` must be a directory, or not exist yet (the gateway creates it on first start).

    Checked by ``txgate check`` and at startup alike (``txgate.service.prepare``), so a regular file in
    its place is one clear line rather than a ``File exists`` from deep inside startup.
    """
    state_dir = config.gateway.state_dir
    if os.path.isdir(state_dir):
        return
    if os.path.lexists(state_dir):
        raise ConfigError(config.path, "gateway", "state_dir", f"{state_dir}: exists and is not a directory")
    # Not there yet: the nearest existing ancestor must be a directory for it to be created.
    current = state_dir.rstrip(os.sep) or os.sep
    while True:
        parent = os.path.dirname(current)
        if not parent or parent == current:
            return
        if os.path.isdir(parent):
            return
        if os.path.lexists(parent):
            raise ConfigError(config.path, "gateway", "state_dir",
                              f"{state_dir}: {parent} exists and is not a directory")
        current = parent


def load(path: str) -> Config:
    """Read and validate a gw.ini file."""
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
