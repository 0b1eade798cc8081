# -*- test-case-name: tests.test_clientauth_unit -*-
"""Client-certificate allowlists: per-connection facts in, a decision out (no sockets, no reactor).

An API with ``mtls = require`` has one `Allowlist`, built at startup from its `client_certificates`
entries (plus `[security] client_certificates`), `client_subjects` and `client_sans`. The listener
captures the client's certificate once per connection as a `PeerCertificate`; `Allowlist.decide`
turns it into ``ALLOWED``, ``REQUIRED`` (no certificate) or ``NOT_ALLOWED``, and the dispatcher caches
that per connection and API.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from txgate import pins as _pins
from txgate.config.tokens import FINGERPRINT, PIN, token_kind
from txgate.tls.certs import is_ca

ALLOWED = "allowed"
REQUIRED = "client_certificate_required"
NOT_ALLOWED = "client_certificate_not_allowed"


class _PeerKey:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<client certificate facts>"


#: Key of the connection's `PeerCertificate` in ``ConnectionInfo.extra`` (API names are strings).
PEER = _PeerKey()


def sha256(der: bytes) -> bytes:
    """SHA-256 of DER bytes (a certificate fingerprint)."""
    return hashlib.sha256(der).digest()


class VerifiedChain(tuple):
    """SHA-256 of the CA certificates of a verified chain, nearest the leaf first (depth 1, 2, ...).

    It also says where the chain ended and who verified it: ``anchor`` is the fingerprint of the
    certificate at the top of the verified chain (the trust anchor OpenSSL used; the leaf itself for a
    one-certificate chain) and ``listener`` names the listener whose trust store verified it. The
    listener hands this object to `PeerCertificate` as its ``chain_ca_fingerprints``.
    """

    anchor: bytes | None
    listener: str | None

    def __new__(cls, fingerprints: Iterable[bytes] = (), *, anchor: bytes | None = None,
                listener: str | None = None) -> VerifiedChain:
        self = super().__new__(cls, fingerprints)
        self.anchor = anchor
        self.listener = listener
        return self


class PeerCertificate:
    """The client's leaf certificate and what the handshake proved about it; derived facts are lazy."""

    __slots__ = ("der", "verified", "chain_ca_fingerprints", "anchor", "listener", "_cert", "_fp", "_subject",
                 "_sans", "_xfcc")

    def __init__(self, der: bytes, verified: bool, chain_ca_fingerprints: Iterable[bytes] = (),
                 cert: x509.Certificate | None = None, *, anchor: bytes | None = None,
                 listener: str | None = None) -> None:
        self.der = der
        # True only when the chain verified up to a trust anchor of the listener.
        self.verified = verified
        # SHA-256 of each CA certificate of the verified chain (meaningless when not verified).
        self.chain_ca_fingerprints = frozenset(chain_ca_fingerprints)
        # The top of the verified chain and the listener that verified it (from a `VerifiedChain`).
        self.anchor = anchor if anchor is not None else getattr(chain_ca_fingerprints, "anchor", None)
        self.listener = listener if listener is not None else getattr(chain_ca_fingerprints, "listener", None)
        self._cert = cert
        self._fp: bytes | None = None
        self._subject: str | None = None
        self._sans: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._xfcc: bytes | None = None

    @property
    def cert(self) -> x509.Certificate:
        """The parsed certificate."""
        if self._cert is None:
            self._cert = x509.load_der_x509_certificate(self.der)
        return self._cert

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the leaf's DER."""
        if self._fp is None:
            self._fp = sha256(self.der)
        return self._fp

    @property
    def subject(self) -> str:
        """The subject as an RFC 4514 string (``CN=client,O=Example``)."""
        if self._subject is None:
            self._subject = self.cert.subject.rfc4514_string()
        return self._subject

    def _load_sans(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if self._sans is None:
            try:
                san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                self._sans = ((), ())
            else:
                self._sans = (tuple(san.get_values_for_type(x509.DNSName)),
                              tuple(san.get_values_for_type(x509.UniformResourceIdentifier)))
        return self._sans

    @property
    def dns_names(self) -> tuple[str, ...]:
        """SAN DNS names."""
        return self._load_sans()[0]

    @property
    def uris(self) -> tuple[str, ...]:
        """SAN URIs (SPIFFE IDs among them)."""
        return self._load_sans()[1]

    def xfcc(self) -> bytes:
        """The ``X-Forwarded-Client-Cert`` value (Envoy's format), built once."""
        if self._xfcc is None:
            self._xfcc = xfcc_value(self.fingerprint, self.subject, self.uris, self.dns_names)
        return self._xfcc


# -- X-Forwarded-Client-Cert -----------------------------------------------------------------


def _header_safe(text: str) -> str:
    """Printable ASCII only: other characters become RFC 4514 style ``\\XX`` escapes of their UTF-8."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isascii() and ch.isprintable():
            out.append(ch)
        else:
            out.extend(f"\\{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _xfcc_quote(value: str, always: bool = False) -> str:
    value = _header_safe(value)
    if always or any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc_value(fingerprint: bytes, subject: str, uris: Sequence[str], dns_names: Sequence[str]) -> bytes:
    """``Hash=<hex>;Subject="...";URI=...;DNS=...`` (Envoy's XFCC element; URI=/DNS= repeat)."""
    parts = [f"Hash={fingerprint.hex()}", "Subject=" + _xfcc_quote(subject, always=True)]
    parts.extend("URI=" + _xfcc_quote(u) for u in uris)
    parts.extend("DNS=" + _xfcc_quote(d) for d in dns_names)
    return ";".join(parts).encode("ascii")


# -- allowlist entries -----------------------------------------------------------------------


@dataclass
class Entries:
    """Allowlist entries by kind, loaded once at startup."""

    pins: list[bytes] = field(default_factory=list)  # SPKI SHA-256 of the client's leaf
    fingerprints: list[bytes] = field(default_factory=list)  # SHA-256 of the client's leaf DER
    cas: list[x509.Certificate] = field(default_factory=list)  # a verified chain through one of these
    exact: list[x509.Certificate] = field(default_factory=list)  # from PEM files (their fingerprints are in `fingerprints`)

    def extend(self, other: Entries) -> None:
        """Add another set of entries (e.g. `[security] client_certificates`)."""
        self.pins += other.pins
        self.fingerprints += other.fingerprints
        self.cas += other.cas
        self.exact += other.exact

    def __bool__(self) -> bool:
        return bool(self.pins or self.fingerprints or self.cas)


def load_entries(tokens: Sequence[str]) -> Entries:
    """Parse entries: ``sha256/`` pins, 64-hex fingerprints, PEM files; ValueError names the entry.

    A PEM file whose certificates are all CA certificates gives CA entries; otherwise its non-CA
    certificates are exact entries (a chain file: the CA certificates in it are not entries).
    """
    out = Entries()
    for token in tokens:
        kind = token_kind(token)
        if kind == PIN:
            out.pins.append(_pins.parse_pin(token))
            continue
        if kind == FINGERPRINT:
            out.fingerprints.append(bytes.fromhex(token))
            continue
        try:
            with open(token, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"{token}: {e.strerror or e}") from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise ValueError(f"{token}: no PEM certificate")
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise ValueError(f"{token}: invalid PEM certificate ({e})") from None
        leaves = [c for c in certs if not is_ca(c)]
        if leaves:
            out.exact.extend(leaves)
            out.fingerprints.extend(sha256(c.public_bytes(serialization.Encoding.DER)) for c in leaves)
        else:
            out.cas.extend(certs)
    return out


def expired_entries(entries: Entries, now: datetime) -> list[str]:
    """Human lines for file entries (exact or CA) that are expired or not yet valid at ``now``."""
    out = []
    for cert in entries.exact + entries.cas:
        kind = "CA certificate" if cert in entries.cas else "certificate"
        if now > cert.not_valid_after_utc:
            out.append(f"{kind} '{cert.subject.rfc4514_string()}' expired on "
                       f"{cert.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        elif now < cert.not_valid_before_utc:
            out.append(f"{kind} '{cert.subject.rfc4514_string()}' is not valid before "
                       f"{cert.not_valid_before_utc.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    return out


# -- subject and SAN patterns ----------------------------------------------------------------


def canonical_dn(text: str) -> str:
    """An RFC 4514 name as cryptography prints it; ValueError if it does not parse."""
    try:
        return x509.Name.from_rfc4514_string(text).rfc4514_string()
    except ValueError:
        raise ValueError(
            f"'{text}': not an RFC 4514 name (e.g. 'CN=client,O=Example', no spaces around ',' "
            "and '=', upper-case attribute names)"
        ) from None


class SubjectMatcher:
    """Exact RFC 4514 names and ``re:`` patterns (whole-name match); any one matching is enough."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.exact = frozenset(canonical_dn(p) for p in patterns if not p.startswith("re:"))
        self.regexes = tuple(re.compile(p[3:]) for p in patterns if p.startswith("re:"))

    def __call__(self, subject: str) -> bool:
        if subject in self.exact:
            return True
        return any(rx.fullmatch(subject) for rx in self.regexes)


# What one '*' may match inside one component of a pattern: never the separators around it.
_DNS_LABEL = "[^.]"
_URI_HOST_LABEL = "[^./?#@:]"
_URI_SEGMENT = "[^/?#]"
_URI_QUERY = "[^/?#&]"
_URI_PARTS = re.compile(r"(?P<scheme>[^:/?#]+:)(?://(?P<authority>[^/?#]*))?(?P<path>[^?#]*)(?P<rest>.*)", re.DOTALL)


def _component_regex(component: str, char: str, *, no_dot_segments: bool = False) -> str:
    """One label or segment: a lone ``*`` matches one or more characters, a ``*`` beside text zero or more."""
    if component == "*":
        # An empty label/segment never matches (".example.com", "/ns//sa"); nor do "." and "..".
        return ("(?!\\.\\.?(?:[/?#]|\\Z))" if no_dot_segments else "") + char + "+"
    return (char + "*").join(re.escape(part) for part in component.split("*"))


def _san_regex(pattern: str, uri: bool) -> re.Pattern:
    """``*`` stays inside one DNS label, one URI host label or one URI path segment, and is never empty alone."""
    if not uri:
        return re.compile(r"\.".join(_component_regex(label, _DNS_LABEL) for label in pattern.split(".")),
                          re.IGNORECASE)
    m = _URI_PARTS.fullmatch(pattern)
    if m is None:  # no scheme: every separator bounds a '*'
        return re.compile(_component_regex(pattern, _URI_QUERY))
    out = [re.escape(m["scheme"])]
    if m["authority"] is not None:
        out.append("//" + r"\.".join(_component_regex(label, _URI_HOST_LABEL) for label in m["authority"].split(".")))
    out.append("/".join(_component_regex(seg, _URI_SEGMENT, no_dot_segments=True) for seg in m["path"].split("/")))
    out.append(_component_regex(m["rest"], _URI_QUERY))
    return re.compile("".join(out))


def _empty_label(name: str) -> bool:
    return not name or any(not label for label in name.split("."))


class SanMatcher:
    """DNS names (case-insensitive) and URIs (exact), with ``*`` wildcards; any SAN matching any pattern."""

    def __init__(self, patterns: Sequence[str]) -> None:
        dns_exact, uri_exact, dns_rx, uri_rx = set(), set(), [], []
        for p in patterns:
            uri = ":" in p
            if "*" in p:
                (uri_rx if uri else dns_rx).append(_san_regex(p if uri else p.rstrip("."), uri))
            elif uri:
                uri_exact.add(p)
            else:
                dns_exact.add(p.lower().rstrip("."))
        self.dns_exact, self.uri_exact = frozenset(dns_exact), frozenset(uri_exact)
        self.dns_rx, self.uri_rx = tuple(dns_rx), tuple(uri_rx)

    def __call__(self, dns_names: Sequence[str], uris: Sequence[str]) -> bool:
        for name in dns_names:
            low = name.lower().rstrip(".")
            if low in self.dns_exact or (not _empty_label(low) and any(rx.fullmatch(low) for rx in self.dns_rx)):
                return True
        for uri in uris:
            if uri in self.uri_exact or any(rx.fullmatch(uri) for rx in self.uri_rx):
                return True
        return False


# -- the decision ----------------------------------------------------------------------------


class Allowlist:
    """Which client certificates one API accepts; `decide` is pure and cheap enough per connection.

    With entries, the leaf must be listed (SPKI pin, fingerprint, exact file) or its verified chain
    must pass through a CA entry. With no entries at all (none here and none in `[security]`), the
    chain must have verified **and** pass through (or end at) one of the ``client_ca`` certificates of
    the listener that verified it (`trust_listener_cas`): a listener's trust store also holds the CA
    entries of every other mTLS API on it, and a certificate that verified only through one of those
    is not "any verified certificate" for this API. `client_subjects` and `client_sans` then narrow
    further; they never allow on their own.
    """

    def __init__(self, api: str, entries: Entries, subjects: Sequence[str] = (), sans: Sequence[str] = (),
                 *, pin_backend: str | None = None,
                 listener_cas: Mapping[str, Iterable[x509.Certificate]] | None = None) -> None:
        self.api = api
        self.any_verified = not entries
        self.pinset = _pins.PinSet(entries.pins, backend=pin_backend) if entries.pins else None
        self.fingerprints = frozenset(entries.fingerprints)
        self.cas = frozenset(sha256(c.public_bytes(serialization.Encoding.DER)) for c in entries.cas)
        self.subjects = SubjectMatcher(subjects) if subjects else None
        self.sans = SanMatcher(sans) if sans else None
        # listener name -> SHA-256 of its client_ca certificates (the anchors of the no-entries rule).
        self.listener_cas: dict[str, frozenset[bytes]] = {}
        for listener, cas in (listener_cas or {}).items():
            self.trust_listener_cas(listener, cas)

    def trust_listener_cas(self, listener: str, cas: Iterable[x509.Certificate]) -> None:
        """Record the ``client_ca`` certificates of a listener that serves this API."""
        self.listener_cas[listener] = frozenset(sha256(c.public_bytes(serialization.Encoding.DER)) for c in cas)

    def decide(self, peer: PeerCertificate | None) -> str:
        """``ALLOWED``, ``REQUIRED`` (no certificate) or ``NOT_ALLOWED``."""
        if peer is None:
            return REQUIRED
        if not self._listed(peer):
            return NOT_ALLOWED
        if self.subjects is not None and not self.subjects(peer.subject):
            return NOT_ALLOWED
        if self.sans is not None and not self.sans(peer.dns_names, peer.uris):
            return NOT_ALLOWED
        return ALLOWED

    def _listed(self, peer: PeerCertificate) -> bool:
        if self.any_verified:
            return peer.verified and self._under_listener_ca(peer)
        if peer.fingerprint in self.fingerprints:
            return True
        if self.pinset is not None:
            try:
                if self.pinset.first_match([peer.der]) is not None:
                    return True
            except ValueError:  # MalformedCertificate: OpenSSL took it, the strict walker did not
                return False
        return peer.verified and not self.cas.isdisjoint(peer.chain_ca_fingerprints)

    def _under_listener_ca(self, peer: PeerCertificate) -> bool:
        # Fail closed: a certificate whose listener is unknown, or a listener without client_ca, allows no one.
        own = self.listener_cas.get(peer.listener) if peer.listener is not None else None
        if not own:
            return False
        return peer.anchor in own or not own.isdisjoint(peer.chain_ca_fingerprints)
