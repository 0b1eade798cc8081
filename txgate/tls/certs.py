# -*- test-case-name: tests.test_tls_unit -*-
"""Certificate and key loading and checks: pure functions over cryptography objects."""
from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any, Union

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from txgate.config.hostnames import wildcard_matches

PrivateKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
]

_ISO = "%Y-%m-%dT%H:%M:%SZ"


class CertificateError(Exception):
    """A certificate, key or bundle that cannot be used; ``str()`` is ``"{path}: {reason}"``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def format_time(when: datetime) -> str:
    """Render an aware datetime as ``2026-01-01T00:00:00Z``."""
    return when.strftime(_ISO)


def public_key_der(key: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key (for comparing keys)."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_key_pem(key: PrivateKey) -> bytes:
    """The unencrypted PKCS#8 PEM of ``key`` (write it only with ``write_private_file``)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def is_ca(cert: x509.Certificate) -> bool:
    """True if ``cert`` has basicConstraints CA:TRUE."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def signature_usage_problem(cert: x509.Certificate) -> str | None:
    """Why a TLS peer's leaf may not authenticate a handshake, or None.

    Every handshake txgate allows authenticates the peer by a signature of the leaf's key (TLS 1.3
    always; TLS 1.2 with ECDHE suites only), so a leaf with a keyUsage extension must allow
    digitalSignature. OpenSSL checks this only for some TLS 1.2 cases (its "ssl client/server"
    purposes also accept keyAgreement or keyEncipherment alone)."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if usage.digital_signature:
        return None
    return "certificate key usage does not allow digitalSignature"


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def subject_label(cert: x509.Certificate) -> str:
    """A short human label for a certificate: its CN, else the full subject."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        return str(cns[0].value)
    return cert.subject.rfc4514_string() or "(empty subject)"


def cert_names(cert: x509.Certificate) -> list[str]:
    """The SAN DNS names then the SAN IP addresses of a certificate, as strings."""
    san = _san(cert)
    if san is None:
        return []
    return list(san.get_values_for_type(x509.DNSName)) + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


@attrs.frozen
class CertifiedKey:
    """A certificate chain (leaf first) with the private key of its leaf."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKey = attrs.field(repr=False)
    cert_path: str = ""
    key_path: str = ""
    # Per-instance memo for derived objects; mutated in place, never compared.
    _memo: dict[str, Any] = attrs.field(factory=dict, init=False, eq=False, repr=False, hash=False)

    @property
    def leaf(self) -> x509.Certificate:
        """The end-entity certificate."""
        return self.chain[0]

    @property
    def not_after(self) -> datetime:
        """When the leaf expires (aware, UTC)."""
        return self.leaf.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        """When the leaf becomes valid (aware, UTC)."""
        return self.leaf.not_valid_before_utc

    @property
    def dns_names(self) -> list[str]:
        """SAN DNS names of the leaf."""
        san = _san(self.leaf)
        return [] if san is None else list(san.get_values_for_type(x509.DNSName))

    @property
    def ip_addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """SAN IP addresses of the leaf."""
        san = _san(self.leaf)
        return [] if san is None else list(san.get_values_for_type(x509.IPAddress))  # type: ignore[arg-type]

    @property
    def fingerprint_sha256(self) -> str:
        """Lower-case hex SHA-256 of the leaf's DER."""
        if "fp" not in self._memo:
            self._memo["fp"] = self.leaf.fingerprint(hashes.SHA256()).hex()
        return self._memo["fp"]  # type: ignore[no-any-return]

    def openssl_chain(self) -> list[Any]:
        """The chain as pyOpenSSL ``X509`` objects (leaf first), built once."""
        if "chain" not in self._memo:
            from OpenSSL import crypto

            self._memo["chain"] = [crypto.X509.from_cryptography(c) for c in self.chain]
        return list(self._memo["chain"])

    def openssl_key(self) -> Any:
        """The private key as a pyOpenSSL ``PKey``, built once."""
        if "key" not in self._memo:
            from OpenSSL import crypto

            self._memo["key"] = crypto.PKey.from_cryptography_key(self.key)
        return self._memo["key"]


def read_pem_file(path: str) -> bytes:
    """The bytes of a certificate/key file; a missing or unreadable one is a CertificateError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CertificateError(path, "file not found") from None
    except PermissionError:
        raise CertificateError(path, "permission denied") from None
    except IsADirectoryError:
        raise CertificateError(path, "is a directory, not a file") from None
    except OSError as e:
        raise CertificateError(path, f"cannot read: {e.strerror or e}") from None


def parse_certificates(data: bytes, path: str) -> list[x509.Certificate]:
    """Parse one or more PEM certificates, raising CertificateError("not a PEM certificate")."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(path, "not a PEM certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(path, "not a PEM certificate") from None
    if not certs:
        raise CertificateError(path, "not a PEM certificate")
    return certs


def parse_private_key(data: bytes, path: str) -> PrivateKey:
    """Parse an unencrypted PEM private key, raising CertificateError on failure."""
    if b"ENCRYPTED" in data and b"-----BEGIN" in data:
        raise CertificateError(path, "private key is encrypted (a passphrase is not supported)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(path, "private key is encrypted (a passphrase is not supported)") from None
    except Exception:
        raise CertificateError(path, "not a PEM private key") from None
    if not isinstance(
        key,
        (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey),
    ):
        raise CertificateError(path, f"unsupported private key type {type(key).__name__}")
    return key


def check_validity(cert: x509.Certificate, path: str, now: datetime) -> None:
    """Raise CertificateError if ``cert`` is expired or not yet valid at ``now``."""
    if now > cert.not_valid_after_utc:
        raise CertificateError(path, f"certificate expired on {format_time(cert.not_valid_after_utc)}")
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            path, f"certificate not valid before {format_time(cert.not_valid_before_utc)}"
        )


def load_certified_key(cert_path: str, key_path: str, *, now: datetime) -> CertifiedKey:
    """Load a PEM chain (leaf first) and its unencrypted key, checking match and validity."""
    chain = parse_certificates(read_pem_file(cert_path), cert_path)
    key = parse_private_key(read_pem_file(key_path), key_path)
    if public_key_der(key.public_key()) != public_key_der(chain[0].public_key()):
        raise CertificateError(key_path, f"private key does not match the certificate {cert_path}")
    check_validity(chain[0], cert_path, now)
    return CertifiedKey(chain=tuple(chain), key=key, cert_path=cert_path, key_path=key_path)


def load_ca_bundle(path: str) -> list[x509.Certificate]:
    """Load a PEM bundle of CA certificates."""
    return parse_certificates(read_pem_file(path), path)


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _as_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def names_cover(cert: x509.Certificate, hostname: str) -> bool:
    """True if the SANs of ``cert`` cover ``hostname`` (a DNS name, an IP, or a ``*.`` pattern)."""
    san = _san(cert)
    if san is None:
        return False
    ip = _as_ip(hostname)
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    host = _norm(hostname)
    if not host:
        return False
    for raw in san.get_values_for_type(x509.DNSName):
        name = _norm(raw)
        if name == host:
            return True
        # A one-label wildcard covers exactly one non-wildcard label, and never all of a one-label suffix.
        if wildcard_matches(name, host) and not host.startswith("*") and "." in name[2:]:
            return True
    return False


def expiry_warning(ck: CertifiedKey, now: datetime, days: int = 14) -> str | None:
    """A warning line if the leaf expires within ``days`` of ``now`` (or already did), else None."""
    left = ck.not_after - now
    if left.total_seconds() <= 0:
        return f"certificate {ck.cert_path} expired on {format_time(ck.not_after)}"
    if left.days < days:
        return (
            f"certificate {ck.cert_path} expires on {format_time(ck.not_after)} "
            f"(in {left.days} day{'s' if left.days != 1 else ''})"
        )
    return None
