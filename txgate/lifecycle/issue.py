# -*- test-case-name: tests.test_lifecycle -*-
"""Issuing certificates: leaves signed by a private CA, CSRs signed by it, and self-signed leaves."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable

from cryptography import x509
from cryptography.x509.oid import NameOID

from txgate.lifecycle.ca import CA
from txgate.lifecycle.keys import LifecycleError, first_name, generate_key, subject_alt_names
from txgate.tls.builders import BACKDATE, build_leaf
from txgate.tls.certs import CertifiedKey, PrivateKey

DEFAULT_LEAF_DAYS = 90


def _check_days(days: int) -> None:
    if days < 1:
        raise LifecycleError(f"invalid --days {days}: must be at least 1")


def _aki(ca: CA) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())  # type: ignore[arg-type]


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
        not_after=min(now + timedelta(days=days), ca.not_after), authority_key_identifier=_aki(ca),
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
        not_after=min(now + timedelta(days=days), ca.not_after), authority_key_identifier=_aki(ca),
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
    cert = build_leaf(
        subject=name, public_key=key.public_key(), issuer=name, signing_key=key, sans=sans, client=client,
        not_before=now - BACKDATE, not_after=now + timedelta(days=days), authority_key_identifier=None,
    )
    return CertifiedKey(chain=(cert,), key=key)
