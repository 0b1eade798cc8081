"""Certificate-building helpers for tests: CAs, intermediates, leaves (good, expired, not yet valid)."""
from __future__ import annotations

import ipaddress
import os
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from txgate.tls.certs import CertifiedKey

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _key(key_type: str) -> Any:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(key_type)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(
    name: str = "Test Root CA",
    *,
    issuer: CertifiedKey | None = None,
    key_type: str = "ec",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> CertifiedKey:
    """A CA certificate: self-signed root, or an intermediate when ``issuer`` is given."""
    key = _key(key_type)
    nb = not_before or NOW - timedelta(days=1)
    na = not_after or NOW + timedelta(days=3650)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer.leaf.subject if issuer else _name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    if issuer is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    cert = b.sign(issuer.key if issuer else key, hashes.SHA256())  # type: ignore[arg-type]
    chain = (cert,) + (issuer.chain if issuer else ())
    return CertifiedKey(chain=chain, key=key)


def make_intermediate(ca: CertifiedKey, name: str = "Test Intermediate CA") -> CertifiedKey:
    """An intermediate CA signed by ``ca``; its chain is intermediate then ``ca``'s chain."""
    return make_ca(name, issuer=ca)


def make_leaf(
    ca: CertifiedKey,
    names: Sequence[str],
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    client: bool = False,
    key_type: str = "ec",
    include_root: bool = False,
) -> CertifiedKey:
    """A leaf for DNS names / IP literals signed by ``ca``; chain = leaf + ``ca`` chain minus the root."""
    key = _key(key_type)
    nb = not_before or NOW - timedelta(days=1)
    na = not_after or NOW + timedelta(days=90)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cn = names[0] if names else "client"
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn[:64]))
        .issuer_name(ca.leaf.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    parents = ca.chain if include_root else tuple(c for c in ca.chain if c.issuer != c.subject)
    return CertifiedKey(chain=(cert,) + parents, key=key)


def pem_chain(ck: CertifiedKey) -> bytes:
    """The chain of ``ck`` as concatenated PEM."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ck.chain)


def pem_key(ck: CertifiedKey, password: bytes | None = None) -> bytes:
    """The private key of ``ck`` as PKCS#8 PEM, optionally encrypted."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return ck.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def write_pair(directory: str | os.PathLike[str], name: str, certified: CertifiedKey) -> tuple[str, str]:
    """Write ``name.pem`` (chain) and ``name-key.pem`` (0600) into ``directory``; return both paths."""
    cert_path = os.path.join(directory, f"{name}.pem")
    key_path = os.path.join(directory, f"{name}-key.pem")
    with open(cert_path, "wb") as f:
        f.write(pem_chain(certified))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem_key(certified))
    return cert_path, key_path


def write_ca(directory: str | os.PathLike[str], name: str, ca: CertifiedKey) -> str:
    """Write the root of ``ca`` as ``name.pem`` (a trust bundle) and return its path."""
    path = os.path.join(directory, f"{name}.pem")
    with open(path, "wb") as f:
        f.write(ca.chain[-1].public_bytes(serialization.Encoding.PEM))
    return path
