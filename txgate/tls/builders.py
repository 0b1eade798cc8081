# -*- test-case-name: tests.test_lifecycle -*-
"""Certificate builders shared by the local CA and the lifecycle commands."""
from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

# Issue slightly in the past so clients with a skewed clock accept fresh certificates.
BACKDATE = timedelta(hours=1)


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


def _leaf_key_usage(public_key: object) -> x509.KeyUsage:
    # RSA key exchange (TLS 1.2 non-ECDHE) needs keyEncipherment; EC and EdDSA keys only sign.
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey), data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )


def build_leaf(
    *,
    subject: x509.Name,
    public_key,
    issuer: x509.Name,
    signing_key,
    sans: list[x509.GeneralName] | x509.SubjectAlternativeName | None,
    client: bool,
    not_before: datetime,
    not_after: datetime,
    authority_key_identifier: x509.AuthorityKeyIdentifier | None,
) -> x509.Certificate:
    """A CA:FALSE end-entity certificate with the usual extensions (the single place leaves are built)."""
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public_key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if authority_key_identifier is not None:  # None: self-signed, nothing to point at
        b = b.add_extension(authority_key_identifier, critical=False)
    if sans:
        ext = sans if isinstance(sans, x509.SubjectAlternativeName) else x509.SubjectAlternativeName(sans)
        # RFC 5280: SAN is critical when the subject is empty.
        b = b.add_extension(ext, critical=len(subject) == 0)
    return b.sign(signing_key, sign_algorithm(signing_key))
