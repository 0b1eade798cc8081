# -*- test-case-name: tests.test_lifecycle -*-
"""A private CA kept in a directory: ``ca.pem`` (0644) and ``ca-key.pem`` (0600)."""
from __future__ import annotations

import os
from datetime import datetime, timedelta

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from txgate.tls.builders import BACKDATE, self_signed_ca
from txgate.fileio import make_private_dir, write_private_file, write_public_file
from txgate.lifecycle.keys import LifecycleError, generate_key
from txgate.tls.certs import (
    CertificateError,
    PrivateKey,
    format_time,
    is_ca,
    parse_certificates,
    parse_private_key,
    private_key_pem,
    public_key_der,
)

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
DEFAULT_CA_NAME = "txgate private CA"
DEFAULT_CA_DAYS = 3650


@attrs.frozen
class CA:
    """A loaded private CA: its certificate, its key and the directory it lives in."""

    certificate: x509.Certificate
    key: PrivateKey = attrs.field(repr=False)
    directory: str = ""

    @property
    def cert_path(self) -> str:
        """Path of the CA certificate (PEM)."""
        return os.path.join(self.directory, CA_CERT_FILE)

    @property
    def key_path(self) -> str:
        """Path of the CA private key (PEM, 0600)."""
        return os.path.join(self.directory, CA_KEY_FILE)

    @property
    def not_after(self) -> datetime:
        """When the CA certificate expires (aware, UTC)."""
        return self.certificate.not_valid_after_utc

    def pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def build_ca_certificate(key: PrivateKey, *, name: str, days: int, now: datetime) -> x509.Certificate:
    """A self-signed CA certificate (CA:TRUE, pathlen 0, keyCertSign + cRLSign) for ``key``."""
    if days < 1:
        raise LifecycleError(f"invalid --days {days}: must be at least 1")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    return self_signed_ca(key, subject, not_before=now - BACKDATE, not_after=now + timedelta(days=days))


def init_ca(
    directory: str, *, name: str = DEFAULT_CA_NAME, key_type: str = "ec", days: int = DEFAULT_CA_DAYS, now: datetime
) -> CA:
    """Create a new CA in ``directory`` (made 0700 if missing); never overwrites an existing CA."""
    cert_path = os.path.join(directory, CA_CERT_FILE)
    key_path = os.path.join(directory, CA_KEY_FILE)
    for p in (cert_path, key_path):
        if os.path.lexists(p):
            raise LifecycleError(f"{p}: already exists; refusing to overwrite a CA (remove it or choose another directory)")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise LifecycleError(f"{directory}: exists and is not a directory")
    key = generate_key(key_type)
    cert = build_ca_certificate(key, name=name, days=days, now=now)
    try:
        make_private_dir(directory)
        write_private_file(key_path, private_key_pem(key), 0o600, exclusive=True)
        try:
            write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), exclusive=True)
        except BaseException:
            os.unlink(key_path)  # no half CA left behind
            raise
    except FileExistsError as e:
        raise LifecycleError(f"{e.filename}: already exists; refusing to overwrite a CA") from None
    except OSError as e:
        raise LifecycleError(f"{e.filename or directory}: cannot write: {e.strerror or e}") from None
    return CA(certificate=cert, key=key, directory=directory)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise LifecycleError(f"{path}: file not found ({what})") from None
    except PermissionError:
        raise LifecycleError(f"{path}: permission denied ({what})") from None
    except IsADirectoryError:
        raise LifecycleError(f"{path}: is a directory, not a file ({what})") from None
    except OSError as e:
        raise LifecycleError(f"{path}: cannot read: {e.strerror or e} ({what})") from None


def load_ca(directory: str, *, now: datetime) -> CA:
    """Load the CA of ``directory``, checking it is a valid CA certificate whose key matches."""
    if not os.path.isdir(directory):
        raise LifecycleError(f"{directory}: not a CA directory (no such directory; create one with 'txgate ca init')")
    cert_path = os.path.join(directory, CA_CERT_FILE)
    key_path = os.path.join(directory, CA_KEY_FILE)
    cert_data = _read(cert_path, "the CA certificate")
    key_data = _read(key_path, "the CA private key")
    try:
        cert = parse_certificates(cert_data, cert_path)[0]
        key = parse_private_key(key_data, key_path)
    except CertificateError as e:
        raise LifecycleError(str(e)) from None
    if not is_ca(cert):
        raise LifecycleError(f"{cert_path}: not a CA certificate (basicConstraints CA:TRUE missing)")
    if public_key_der(key.public_key()) != public_key_der(cert.public_key()):
        raise LifecycleError(f"{key_path}: private key does not match the CA certificate {cert_path}")
    if now > cert.not_valid_after_utc:
        raise LifecycleError(f"{cert_path}: CA certificate expired on {format_time(cert.not_valid_after_utc)}")
    return CA(certificate=cert, key=key, directory=directory)
