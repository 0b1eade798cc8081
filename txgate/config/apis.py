"""gw.ini syntax of `[api:NAME]` and `[security]`: upstreams, hosts, paths, upstream trust, client certificates."""
# -*- test-case-name: tests.test_config -*-
from __future__ import annotations

import re
from urllib.parse import urlsplit

from txgate.config.hostnames import WILDCARD_RULE, is_ip, split_pattern, wildcard_ok
from txgate.config.kubernetes import check_ca_source
from txgate.config.model import DEFAULT_MAX_PENDING, TLS_VERSIONS, ApiConfig, ConfigError, SecurityConfig, Target
from txgate.config.sections import Section, parse_cert_spec, suggest

API_KEYS = {
    "listeners", "hosts", "path", "strip_path", "upstream", "upstream_ca", "upstream_server_name",
    "upstream_verify", "preserve_host", "connect_timeout", "timeout", "max_body_bytes", "max_response_header_bytes",
    "max_connections", "max_pending", "pinned_public_keys", "pin_mode", "upstream_certificate",
    "upstream_min_tls", "upstream_ciphers", "mtls", "client_certificates", "client_subjects", "client_sans",
    "forward_client_cert",
}
SECURITY_KEYS = {"pinned_public_keys", "pin_mode", "upstream_certificates", "client_certificates"}
PIN_MODES = ("enforce", "report")
MTLS_MODES = ("off", "require")
FORWARD_CLIENT_CERT = ("off", "xfcc")


def _host_pattern(section: Section, key: str, pattern: str) -> str:
    pattern = pattern.strip()
    p = pattern.lower()
    host, port = split_pattern(p)
    if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
        section.fail(key, f"'{pattern}': invalid port")
    if host != "*" and (not wildcard_ok(host) or not host):
        section.fail(key, f"'{pattern}': expected a host, host:port, *.example.com or *")
    return p


def parse_security(section: Section) -> SecurityConfig:
    """Validate `[security]`."""
    pins = []
    for line in section.lines("pinned_public_keys"):
        pattern, sep, rest = line.partition("=")
        if not sep or not pattern.strip() or not rest.split():
            section.fail("pinned_public_keys", f"expected 'HOST_PATTERN = PIN [PIN ...]', got '{line}'")
        pins.append((_host_pattern(section, "pinned_public_keys", pattern), tuple(rest.split())))
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
        client_certificates=tuple(section.words("client_certificates") or ()),
    )


def _client_subjects(section: Section, key: str) -> tuple[str, ...]:
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


def _client_sans(section: Section, key: str) -> tuple[str, ...]:
    """DNS names or URIs (spiffe://...), `*` wildcards allowed."""
    out = []
    for w in section.words(key) or ():
        if any(c.isspace() or ord(c) < 32 for c in w):
            section.fail(key, f"'{w}': not a DNS name or URI")
        if ":" not in w and not _HOST_CHARS.issuperset(w.lower()):
            section.fail(key, f"'{w}': not a DNS name (a URI needs a scheme, e.g. spiffe://...)")
        out.append(w)
    return tuple(out)


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._*:")


def parse_target(section: Section, url: str) -> Target:
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


def parse_api(section: Section, name: str, listener_names: list[str]) -> ApiConfig:
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
                section.fail("listeners", f"no listener named '{ln}'" + suggest(ln, listener_names))
    hosts = []
    for h in section.words("hosts") or ():
        h = h.lower().rstrip(".")
        if not wildcard_ok(h):
            section.fail("hosts", f"'{h}': {WILDCARD_RULE}")
        if ":" in h and not is_ip(h.strip("[]")):
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
    check_ca_source(section, "upstream_ca", upstream_ca)
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
        max_response_header_bytes=section.number("max_response_header_bytes", 65536, integer=True, minimum=1024),
        max_connections=section.number("max_connections", 64, integer=True, minimum=1),
        max_pending=section.number("max_pending", DEFAULT_MAX_PENDING, integer=True),
        **_api_trust(section),
        **_api_client_auth(section),
    )


def _api_client_auth(section: Section) -> dict:
    """The client-certificate (mTLS) keys of an `[api:NAME]` section."""
    mtls = section.choice("mtls", "off", MTLS_MODES) == "require"
    entries = tuple(section.words("client_certificates") or ())
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


def _api_trust(section: Section) -> dict:
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
        pinned_public_keys=tuple(pins) if pins is not None else None,
        pin_mode=section.choice("pin_mode", "enforce", PIN_MODES) if section.has("pin_mode") else None,
        upstream_certificate=spec,
        upstream_min_tls=min_tls,
        upstream_ciphers=section.str("upstream_ciphers"),
    )


def check_overlaps(path: str, apis: list[ApiConfig], listener_names: list[str]) -> None:
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
