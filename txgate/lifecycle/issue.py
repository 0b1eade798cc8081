"""Issuing certificates: leaves signed by a private CA, CSRs signed by it, and self-signed leaves."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from txgate.lifecycle.ca import BACKDATE, CA, _sign_algorithm
from txgate.lifecycle.keys import LifecycleError, first_name, generate_key, subject_alt_names
from txgate.tls.certs import CertifiedKey, PrivateKey

DEFAULT_LEAF_DAYS = 90


def _key_usage(public_key: object) -> x509.KeyUsage:
    # RSA key exchange (TLS 1.2 non-ECDHE) needs keyEncipherment; EC and EdDSA keys only sign.
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey), data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )


def _check_days(days: int) -> None:
    if days < 1:
        raise LifecycleError(f"invalid --days {days}: must be at least 1")


def build_leaf(
    *,
    subject: x509.Name,
    public_key: object,
    issuer: x509.Name,
    signing_key: PrivateKey,
    sans: list[x509.GeneralName] | x509.SubjectAlternativeName | None,
    client: bool,
    not_before: datetime,
    not_after: datetime,
    issuer_public_key: object,
) -> x509.Certificate:
    """A CA:FALSE end-entity certificate with the usual extensions (the single place leaves are built)."""
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(public_key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if sans:
        ext = sans if isinstance(sans, x509.SubjectAlternativeName) else x509.SubjectAlternativeName(sans)
        # RFC 5280: SAN is critical when the subject is empty.
        b = b.add_extension(ext, critical=len(subject) == 0)
    return b.sign(signing_key, _sign_algorithm(signing_key))  # type: ignore[arg-type]


def _cn_name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])])


def _names_or_fail(dns: Iterable[str], ips: Iterable[str], common_name: str | None, client: bool) -> tuple[list[x509.GeneralName], str]:
    sans = subject_alt_names(dns, ips)
    cn = common_name or first_name(sans)
    if not sans and not (client and cn):
        raise LifecycleError("give at least one --dns NAME or --ip ADDR" + (" (or --cn for a client certificate)" if client else ""))
    assert cn is not None
    return sans, cn


def issue_certificate(
    ca: CA,
    *,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    client: bool = False,
    days: int = DEFAULT_LEAF_DAYS,
    now: datetime,
    key: PrivateKey | None = None,
    key_type: str = "ec",
    common_name: str | None = None,
) -> CertifiedKey:
    """A new leaf (server, or client with ``client=True``) signed by ``ca``; chain = leaf + CA."""
    _check_days(days)
    sans, cn = _names_or_fail(dns, ips, common_name, client)
    key = key or generate_key(key_type)
    cert = build_leaf(
        subject=_cn_name(cn), public_key=key.public_key(), issuer=ca.certificate.subject, signing_key=ca.key,
        sans=sans, client=client, not_before=now - BACKDATE,
        not_after=min(now + timedelta(days=days), ca.not_after), issuer_public_key=ca.key.public_key(),
    )
    return CertifiedKey(chain=(cert, ca.certificate), key=key)


def sign_csr(
    ca: CA,
    csr: x509.CertificateSigningRequest,
    *,
    days: int = DEFAULT_LEAF_DAYS,
    client: bool = False,
    now: datetime,
) -> x509.Certificate:
    """Sign a (verified) CSR: its subject and SANs are copied; every other requested extension is ignored."""
    _check_days(days)
    if not csr.is_signature_valid:
        raise LifecycleError("the CSR signature does not verify")
    try:
        san: x509.SubjectAlternativeName | None = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    subject = csr.subject
    if not san and not (client and len(subject)):
        raise LifecycleError("the CSR requests no subjectAltName (a server certificate needs a DNS name or an IP)")
    return build_leaf(
        subject=subject, public_key=csr.public_key(), issuer=ca.certificate.subject, signing_key=ca.key,
        sans=san, client=client, not_before=now - BACKDATE,
        not_after=min(now + timedelta(days=days), ca.not_after), issuer_public_key=ca.key.public_key(),
    )


def self_signed(
    *,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    days: int = DEFAULT_LEAF_DAYS,
    now: datetime,
    key: PrivateKey | None = None,
    key_type: str = "ec",
    common_name: str | None = None,
    client: bool = False,
) -> CertifiedKey:
    """A self-signed CA:FALSE leaf for ``dns``/``ips`` (trust it by pinning or as its own CAfile)."""
    _check_days(days)
    sans, cn = _names_or_fail(dns, ips, common_name, client)
    key = key or generate_key(key_type)
    name = _cn_name(cn)
    # CA:FALSE and no keyCertSign: the certificate can be trusted as itself (CAfile, pin) but can
    # never sign another one.
    cert = _self_signed_leaf(key, name, sans, client, now, days)
    return CertifiedKey(chain=(cert,), key=key)


def _self_signed_leaf(
    key: PrivateKey, name: x509.Name, sans: list[x509.GeneralName], client: bool, now: datetime, days: int
) -> x509.Certificate:
    public_key = key.public_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(public_key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, _sign_algorithm(key))  # type: ignore[arg-type]
