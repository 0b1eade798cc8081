"""The pending ACME challenges the listeners answer: HTTP-01 tokens and TLS-ALPN-01 (RFC 8737) certificates."""
# -*- test-case-name: tests.test_acme_unit -*-
from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from txgate.acme.shelves import MemoryShelf, PairCache, valid_key

ACME_TLS_ALPN = b"acme-tls/1"
HTTP01_PREFIX = "/.well-known/acme-challenge/"
# RFC 8737 section 3: id-pe-acmeIdentifier.
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def tls_alpn_certificate(name: str, key_authorization: str, now: datetime | None = None):
    """The RFC 8737 challenge certificate for ``name``: (leaf, key), self-signed, with the critical
    acmeIdentifier extension holding the SHA-256 of the key authorization (DER OCTET STRING)."""
    now = now or datetime.now(timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME challenge")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


class ChallengeBoard:
    """Pending challenges, shared by every generation of listeners; thread-safe (the ACME client writes
    from a thread, the listeners read in the reactor).

    Where they are kept is the ``shelf`` (``txgate.acme.shelves``): this process's memory by default, a
    directory its worker processes read, or Redis for a fleet. Token and name are validated before a shelf
    sees them; a TLS-ALPN-01 entry is the key authorization, from which each reading process builds the
    RFC 8737 certificate once (cached by name and key authorization).
    """

    def __init__(self, shelf=None) -> None:
        self.shelf = shelf if shelf is not None else MemoryShelf()
        self._lock = threading.Lock()
        self._pairs = PairCache()

    def _put(self, kind: str, key: str, value: str) -> None:
        if not valid_key(kind, key):
            raise ValueError(f"invalid ACME challenge {kind} key {key!r}")
        with self._lock:
            self.shelf.put(kind, key, value)

    def _get(self, kind: str, key: str) -> str | None:
        return self.shelf.get(kind, key) if valid_key(kind, key) else None

    def add_http(self, token: str, key_authorization: str) -> None:
        """Answer GET /.well-known/acme-challenge/TOKEN with the key authorization."""
        self._put("http", token, key_authorization)

    def remove_http(self, token: str) -> None:
        """Stop answering ``token``."""
        with self._lock:
            self.shelf.delete("http", token)

    def http_answer(self, path: str) -> str | None:
        """The key authorization for a request path, or None when it is no pending HTTP-01 token."""
        if not path.startswith(HTTP01_PREFIX):
            return None
        return self._get("http", path[len(HTTP01_PREFIX):])

    def add_alpn(self, name: str, key_authorization: str) -> None:
        """Present the RFC 8737 certificate for ``name`` to clients offering only ``acme-tls/1``."""
        name = name.rstrip(".").lower()
        self._put("alpn", name, key_authorization)
        self._pairs.get(name, key_authorization)  # built now, off the reactor, for this process's listeners

    def remove_alpn(self, name: str) -> None:
        """Stop answering TLS-ALPN-01 for ``name``."""
        name = name.rstrip(".").lower()
        with self._lock:
            self.shelf.delete("alpn", name)
        self._pairs.drop(name)

    def alpn_pair(self, server_name: str | None) -> tuple | None:
        """(certificate, key) of the challenge certificate for an SNI name, or None."""
        if not server_name:
            return None
        name = server_name.rstrip(".").lower()
        key_authorization = self._get("alpn", name)
        if key_authorization is None:
            return None
        return self._pairs.get(name, key_authorization)

    @property
    def pending(self) -> int:
        """How many challenges are being answered."""
        return self.shelf.count()
