"""Certificate builders shared by the local CA and the lifecycle commands."""
from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes


def sign_algorithm(key) -> hashes.HashAlgorithm | None:
    """SHA-256, or None for EdDSA keys (which hash internally)."""
    from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

    return None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()


def self_signed_ca(key, subject: x509.Name, *, not_before: datetime, not_after: datetime) -> x509.Certificate:
    """A self-signed CA certificate (CA:TRUE, pathlen 0, keyCertSign + cRLSign, SKI/AKI) for ``key``."""
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, sign_algorithm(key))
    )
