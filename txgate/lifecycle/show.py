# -*- test-case-name: tests.test_lifecycle -*-
"""Human-readable description of certificates (``txgate cert show``)."""
from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from txgate import pins as _pins
from txgate.tls.certs import CertificateError, cert_names, format_time, is_ca, parse_certificates


def key_description(public_key: object) -> str:
    """``EC P-256 (256 bits)``, ``RSA 3072 bits``, ``Ed25519`` ..."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size} bits"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(
            public_key.curve.name, public_key.curve.name
        )
        return f"EC {curve} ({public_key.key_size} bits)"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519 (256 bits)"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448 (456 bits)"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA {public_key.key_size} bits"
    return type(public_key).__name__


def spki_pin(cert: x509.Certificate) -> str:
    """The ``sha256/<base64>`` SPKI pin of ``cert``."""
    return _pins.format_pin(_pins.spki_sha256(cert.public_bytes(serialization.Encoding.DER)))


def fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the certificate DER (also the store ID of a leaf)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def describe_certificate(cert: x509.Certificate) -> list[tuple[str, str]]:
    """(label, value) rows: subject, issuer, SANs, validity, key, CA, fingerprint, SPKI pin."""
    fp = fingerprint(cert)
    return [
        ("subject", cert.subject.rfc4514_string() or "(empty)"),
        ("issuer", cert.issuer.rfc4514_string() or "(empty)"),
        ("SANs", ", ".join(cert_names(cert)) or "(none)"),
        ("not before", format_time(cert.not_valid_before_utc)),
        ("not after", format_time(cert.not_valid_after_utc)),
        ("key", key_description(cert.public_key())),
        ("CA", "yes" if is_ca(cert) else "no"),
        ("serial", format(cert.serial_number, "x")),
        ("SHA-256 fingerprint", ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)).upper()),
        ("SPKI pin", spki_pin(cert)),
    ]


def load_any_certificates(data: bytes, path: str) -> list[x509.Certificate]:
    """PEM certificates (a chain) or one DER certificate, raising CertificateError."""
    if b"-----BEGIN" in data:
        return parse_certificates(data, path)
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertificateError(path, "not a certificate (PEM or DER)") from None


def format_certificates(certs: list[x509.Certificate]) -> str:
    """The text ``txgate cert show`` prints: one block per certificate of the chain."""
    blocks = []
    for i, cert in enumerate(certs):
        head = f"certificate {i + 1} of {len(certs)}" + (" (leaf)" if i == 0 and len(certs) > 1 else "")
        rows = describe_certificate(cert)
        width = max(len(k) for k, _ in rows)
        blocks.append("\n".join([head] + [f"  {k + ':':<{width + 1}} {v}" for k, v in rows]))
    return "\n\n".join(blocks) + "\n"
