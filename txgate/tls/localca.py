# -*- test-case-name: tests.test_state_dir -*-
"""The embedded local CA: a persistent P-256 root that issues short-lived server certificates."""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

from txgate.config.hostnames import is_ip
from txgate.fileio import make_private_dir, write_private_file
from txgate.tls.builders import BACKDATE, build_leaf, self_signed_ca
from txgate.tls.certs import (
    CertificateError,
    CertifiedKey,
    cert_names,
    format_time,
    is_ca,
    load_certified_key,
    private_key_pem,
)

log = Logger()

CA_NAME = "txgate local CA"
CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=90)
LEAF_RENEW_BEFORE = timedelta(days=30)


def _normalize_names(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        n = n.strip()
        try:
            n = str(ipaddress.ip_address(n.strip("[]")))
        except ValueError:
            n = n.rstrip(".").lower()
        if n and n not in out:
            out.append(n)
    if not out:
        raise ValueError("issue_server needs at least one name")
    return out


class LocalCA:
    """A local certificate authority stored in ``state_dir`` (``ca.pem``, ``ca-key.pem``, ``local/``)."""

    def __init__(self, state_dir: str, ca: CertifiedKey) -> None:
        self.state_dir = state_dir
        self._ca = ca

    @property
    def ca_path(self) -> str:
        """Path of the CA certificate (PEM) that clients should trust."""
        return os.path.join(self.state_dir, "ca.pem")

    @property
    def ca_key_path(self) -> str:
        """Path of the CA private key (mode 0600)."""
        return os.path.join(self.state_dir, "ca-key.pem")

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return self._ca.leaf

    @classmethod
    def ensure(cls, state_dir: str, *, now: datetime) -> LocalCA:
        """Load the CA from ``state_dir``, creating the directory and a new CA on first use."""
        make_private_dir(state_dir)
        cert_path = os.path.join(state_dir, "ca.pem")
        key_path = os.path.join(state_dir, "ca-key.pem")
        have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
        if have_cert and have_key:
            try:
                ca = load_certified_key(cert_path, key_path, now=now)
            except CertificateError as e:
                raise CertificateError(e.path, f"local CA is unusable: {e.reason}") from None
            if os.stat(key_path).st_mode & 0o077:
                log.warn("local CA key {path} is readable by group or others; chmod 600 it", path=key_path)
            if not is_ca(ca.leaf):
                raise CertificateError(cert_path, "local CA is unusable: not a CA certificate")
            return cls(state_dir, ca)
        if have_cert != have_key:
            # Never silently replace a CA that clients may already trust.
            missing = key_path if have_cert else cert_path
            raise CertificateError(
                missing, "file not found while its pair exists; restore it or remove both to create a new local CA"
            )
        ca = _new_ca(now)
        write_private_file(key_path, private_key_pem(ca.key), 0o600)  # type: ignore[arg-type]
        write_private_file(cert_path, ca.leaf.public_bytes(serialization.Encoding.PEM), 0o644)
        log.info(
            "created local CA {ca_path} (sha256 {fingerprint}, valid until {not_after})",
            ca_path=cert_path,
            fingerprint=ca.fingerprint_sha256,
            not_after=format_time(ca.not_after),
        )
        return cls(state_dir, CertifiedKey(chain=ca.chain, key=ca.key, cert_path=cert_path, key_path=key_path))

    def _leaf_paths(self, names: list[str]) -> tuple[str, str]:
        digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:12]
        # Name order must not matter: the same set of names maps to the same files.
        dns = sorted(n for n in names if not is_ip(n)) or sorted(names)
        stem = re.sub(r"[^a-z0-9.-]", "_", dns[0].replace("*", "wildcard"))[:48]
        base = os.path.join(self.state_dir, "local", f"{stem}-{digest}")
        return base + ".pem", base + "-key.pem"

    def issue_server(self, names: list[str], *, now: datetime) -> CertifiedKey:
        """A server certificate for ``names``, reused from disk while it has > 30 days left."""
        wanted = _normalize_names(names)
        cert_path, key_path = self._leaf_paths(wanted)
        reused = self._try_reuse(wanted, cert_path, key_path, now)
        if reused is not None:
            return reused
        make_private_dir(os.path.join(self.state_dir, "local"))
        leaf = self._issue(wanted, now)
        write_private_file(key_path, private_key_pem(leaf.key), 0o600)  # type: ignore[arg-type]
        write_private_file(
            cert_path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in leaf.chain), 0o644
        )
        log.info(
            "local CA issued {names} ({cert_path}, valid until {not_after})",
            names=", ".join(wanted),
            cert_path=cert_path,
            not_after=format_time(leaf.not_after),
        )
        return CertifiedKey(chain=leaf.chain, key=leaf.key, cert_path=cert_path, key_path=key_path)

    def _try_reuse(self, wanted: list[str], cert_path: str, key_path: str, now: datetime) -> CertifiedKey | None:
        if not (os.path.exists(cert_path) and os.path.exists(key_path)):
            return None
        try:
            ck = load_certified_key(cert_path, key_path, now=now)
        except CertificateError as e:
            log.warn("local certificate {path} not reused: {reason}", path=e.path, reason=e.reason)
            return None
        if sorted(cert_names(ck.leaf)) != sorted(wanted):
            return None
        if ck.not_after - now <= LEAF_RENEW_BEFORE:
            return None
        try:
            ck.leaf.verify_directly_issued_by(self._ca.leaf)
        except (ValueError, TypeError, Exception):
            # Issued by an earlier CA (e.g. ca.pem was replaced): reissue.
            return None
        if len(ck.chain) < 2 or ck.chain[1] != self._ca.leaf:
            ck = CertifiedKey(chain=(ck.leaf, self._ca.leaf), key=ck.key, cert_path=cert_path, key_path=key_path)
        return ck

    def _issue(self, names: list[str], now: datetime) -> CertifiedKey:
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        not_after = min(now + LEAF_VALIDITY, self._ca.not_after)
        ca_cert = self._ca.leaf
        try:
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            )
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca.key.public_key())  # type: ignore[arg-type]
        cert = build_leaf(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]), public_key=key.public_key(),
            issuer=ca_cert.subject, signing_key=self._ca.key, sans=sans, client=False, not_before=now - BACKDATE,
            not_after=not_after, authority_key_identifier=aki,
        )
        return CertifiedKey(chain=(cert, ca_cert), key=key)


def _new_ca(now: datetime) -> CertifiedKey:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
        ]
    )
    cert = self_signed_ca(key, name, not_before=now - BACKDATE, not_after=now + CA_VALIDITY)
    return CertifiedKey(chain=(cert,), key=key)
