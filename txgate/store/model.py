# -*- test-case-name: tests.test_store -*-
"""Store value objects and errors: Entry, CertInfo, StoredCertificate, StoreError; ref and name rules."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import attrs
from cryptography import x509

from txgate.tls.certs import CertifiedKey, PrivateKey, format_time

_ID_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# One optional namespace: ``acme/www.example.com`` (ACME certificates live under ``acme/``).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$")

# Stable error codes (the admin API maps them to HTTP statuses; see CODE_STATUS).
CODE_STATUS = {
    "malformed_pem": 400,
    "malformed_key": 400,
    "certificate_expired": 400,
    "certificate_not_yet_valid": 400,
    "key_mismatch": 400,
    "invalid_name": 400,
    "invalid_ref": 400,
    "invalid_request": 400,
    "no_previous_version": 409,
    "in_use": 409,
    "not_found": 404,
    "no_pending_key": 404,
    "no_secret": 500,
    "bad_secret": 500,
    "decrypt_failed": 500,
    "invalid_url": 500,
    "backend_error": 503,
}


class StoreError(Exception):
    """A store operation that failed: ``code`` is stable (see CODE_STATUS), ``reason`` one line, never secret."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    @property
    def http_status(self) -> int:
        """The HTTP status the admin API should answer with."""
        return CODE_STATUS.get(self.code, 500)

    def __repr__(self) -> str:
        return f"StoreError({self.code!r}, {self.reason!r})"


@attrs.frozen
class Entry:
    """What a write returns: the entry ID (hex SHA-256 of the leaf DER), its name and version (or None)."""

    id: str
    name: str | None = None
    version: int | None = None


@attrs.frozen
class CertInfo:
    """Metadata of one stored certificate (never key material): what ``list()`` and ``history()`` return."""

    id: str
    name: str | None
    version: int | None
    versions: tuple[int, ...]
    current: bool
    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    fingerprint: str
    spki_pin: str
    has_key: bool
    chain_length: int
    created: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (times as ``2026-01-01T00:00:00Z``)."""
        d = attrs.asdict(self)
        d["not_before"] = format_time(self.not_before)
        d["not_after"] = format_time(self.not_after)
        d["versions"] = list(self.versions)
        d["sans"] = list(self.sans)
        return d


@attrs.frozen
class StoredCertificate:
    """An entry as ``get()`` returns it: metadata, the parsed chain (leaf first) and the decrypted key."""

    info: CertInfo
    chain: tuple[x509.Certificate, ...] = attrs.field(repr=False)
    chain_pem: bytes = attrs.field(repr=False)
    key: PrivateKey | None = attrs.field(default=None, repr=False)

    @property
    def id(self) -> str:
        """The entry ID (hex SHA-256 of the leaf DER)."""
        return self.info.id

    @property
    def name(self) -> str | None:
        """The name this entry was reached through, if any."""
        return self.info.name

    @property
    def version(self) -> int | None:
        """The version of ``name`` this entry is, if any."""
        return self.info.version

    @property
    def has_key(self) -> bool:
        """Whether a private key is stored with the chain."""
        return self.key is not None

    def certified_key(self) -> CertifiedKey:
        """The chain and key as a CertifiedKey (cert_path ``store:NAME`` or ``store:ID``) for TLS contexts."""
        if self.key is None:
            raise StoreError("invalid_request", f"store entry {self.name or self.id} has no private key")
        label = f"store:{self.name or self.id}"
        return CertifiedKey(chain=self.chain, key=self.key, cert_path=label, key_path=label)


def is_id(ref: str) -> bool:
    """True if ``ref`` looks like an entry ID (64 hex digits)."""
    return bool(_ID_RE.fullmatch(ref))


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid store name, else StoreError('invalid_name')."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or is_id(name):
        raise StoreError(
            "invalid_name",
            f"invalid store name {name!r}: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit, "
            "and not 64 hex digits (that is an ID); one 'NAMESPACE/' prefix is allowed",
        )
    return name


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """Split a ref into ``("id", ID, None)``, ``("name", NAME, None)`` or ``("name", NAME, VERSION)``."""
    if not isinstance(ref, str) or not ref:
        raise StoreError("invalid_ref", "empty store reference")
    if is_id(ref):
        return "id", ref.lower(), None
    name, sep, version = ref.partition("@")
    check_name(name)
    if not sep:
        return "name", name, None
    if not version.isdigit() or int(version) < 1:
        raise StoreError("invalid_ref", f"invalid store reference {ref!r}: expected NAME@VERSION with VERSION >= 1")
    return "name", name, int(version)
