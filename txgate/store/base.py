# -*- test-case-name: tests.test_store -*-
"""The store interface (``Store``) and the backend-independent logic (``RecordStore``).

A backend only moves JSON-able records: entries by ID, name records (version history), pending
CSR keys by name; plus a lock and a change channel. Validation, versions, encryption and metadata
live here, once, so the directory and Redis backends behave alike.
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.logger import Logger

from txgate.store.crypto import KeyBox
from txgate.store.model import CertInfo, Entry, StoreError, StoredCertificate, check_name, parse_ref
from txgate.tls.certs import CertificateError, PrivateKey, cert_names, format_time, parse_private_key, public_key_der

log = Logger(namespace="txgate.store")

Callback = Callable[[Any], None]
Call = Callable[..., Any]


def utcnow() -> datetime:
    """The default clock of a store."""
    return datetime.now(timezone.utc)


def _to_bytes(data: bytes | str | None) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    raise StoreError("invalid_request", f"expected PEM bytes or text, got {type(data).__name__}")


def split_pem_bundle(data: bytes | str) -> tuple[bytes, bytes | None]:
    """Split one PEM body into (certificate blocks, private key block or None), e.g. for ``POST /certs``."""
    raw = _to_bytes(data) or b""
    certs: list[bytes] = []
    keys: list[bytes] = []
    pos = 0
    while True:
        start = raw.find(b"-----BEGIN ", pos)
        if start < 0:
            break
        label_end = raw.find(b"-----", start + 11)
        if label_end < 0:
            break
        label = raw[start + 11 : label_end]
        end_marker = b"-----END " + label + b"-----"
        end = raw.find(end_marker, label_end)
        if end < 0:
            raise StoreError("malformed_pem", "a PEM block has no END line")
        block = raw[start : end + len(end_marker)] + b"\n"
        (keys if label.endswith(b"PRIVATE KEY") else certs).append(block)
        pos = end + len(end_marker)
    if len(keys) > 1:
        raise StoreError("malformed_pem", "more than one private key in the PEM body")
    return b"".join(certs), (keys[0] if keys else None)


class Subscription(abc.ABC):
    """A registered change callback; ``close()`` unregisters it (and stops its thread, if any)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop delivering changes to the callback."""


class Store(abc.ABC):
    """A certificate store: chains with optional private keys, by ID or by versioned name.

    Refs are ``NAME`` (current version), ``NAME@VERSION`` or an ID (hex SHA-256 of the leaf DER).
    Every method blocks (file or network I/O): from the reactor thread, use ``DeferredStore``.
    Errors are ``StoreError`` with a stable ``code``; no message, repr or log line holds key material.
    """

    @abc.abstractmethod
    def put(self, name: str | None, chain_pem: bytes | str, key_pem: bytes | str | None = None) -> Entry:
        """Validate and store a chain (leaf first) with an optional key; a new version of ``name`` if given."""

    @abc.abstractmethod
    def get(self, ref: str) -> StoredCertificate:
        """The entry ``ref`` points to, with its chain and decrypted key."""

    @abc.abstractmethod
    def resolve(self, ref: str) -> Entry:
        """Which ID (and version) ``ref`` points to now, without reading the key."""

    @abc.abstractmethod
    def list(self) -> list[CertInfo]:
        """Metadata of the current version of every name, then of every unnamed entry."""

    @abc.abstractmethod
    def history(self, name: str) -> list[CertInfo]:
        """Metadata of every version of ``name``, oldest first (``current`` marks the one in use)."""

    @abc.abstractmethod
    def rollback(self, name: str) -> Entry:
        """Make the version before the current one current again; history is kept."""

    @abc.abstractmethod
    def delete(self, ref: str) -> None:
        """Delete a name with its history, or an unnamed entry by ID (``in_use`` if a name holds it)."""

    @abc.abstractmethod
    def create_pending_key(
        self, name: str, dns: Sequence[str] = (), ips: Sequence[str] = (), *, key_type: str = "ec",
        common_name: str | None = None,
    ) -> bytes:
        """Generate and keep a private key for ``name``; return only the CSR (PEM) for it."""

    @abc.abstractmethod
    def pending_csr(self, name: str) -> bytes:
        """The CSR of the pending key of ``name`` (``no_pending_key`` if there is none)."""

    @abc.abstractmethod
    def pending_names(self) -> list[str]:
        """Names that have a pending key waiting for its signed chain."""

    @abc.abstractmethod
    def complete_pending(self, name: str, chain_pem: bytes | str) -> Entry:
        """Pair a signed chain with the pending key of ``name`` and store it as its new version."""

    @abc.abstractmethod
    def subscribe(self, callback: Callback, *, call: Call | None = None) -> Subscription:
        """Call ``callback(name_or_id)`` after every change (``None``: anything may have changed).

        ``call`` runs the callback, e.g. ``reactor.callFromThread`` (default: call it directly,
        from whatever thread saw the change).
        """

    def close(self) -> None:
        """Release connections and stop subscription threads."""


class RecordStore(Store):
    """Store logic over a backend's records; subclasses implement the ``_r_*`` primitives and ``_lock``."""

    def __init__(self, secret: bytes | str | None, *, clock: Callable[[], datetime] | None = None) -> None:
        self._box = KeyBox(secret) if secret else None
        self._clock = clock or utcnow
        self._tlock = threading.RLock()

    # --- backend primitives ----------------------------------------------------------------

    @abc.abstractmethod
    def _r_get_entry(self, entry_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def _r_put_entry(self, entry_id: str, record: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def _r_delete_entry(self, entry_id: str) -> None: ...

    @abc.abstractmethod
    def _r_entry_ids(self) -> list[str]: ...

    @abc.abstractmethod
    def _r_get_name(self, name: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def _r_put_name(self, name: str, record: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def _r_delete_name(self, name: str) -> None: ...

    @abc.abstractmethod
    def _r_names(self) -> list[str]: ...

    @abc.abstractmethod
    def _r_get_pending(self, name: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def _r_put_pending(self, name: str, record: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def _r_delete_pending(self, name: str) -> None: ...

    @abc.abstractmethod
    def _r_pending_names(self) -> list[str]: ...

    @abc.abstractmethod
    def _backend_lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive access across processes (file lock, Redis lock)."""

    @abc.abstractmethod
    def _notify(self, name: str, op: str) -> None:
        """Tell subscribers (of this and other processes, where the backend can) that ``name`` changed."""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._tlock, self._backend_lock():
            yield

    # --- helpers ------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self._clock()

    def _stamp(self) -> str:
        return format_time(self._now())

    def _require_box(self, what: str) -> KeyBox:
        if self._box is None:
            raise StoreError(
                "no_secret",
                f"cannot {what}: no store secret (set store_secret_file or TXGATE_STORE_SECRET)",
            )
        return self._box

    @staticmethod
    def _entry_aad(entry_id: str) -> bytes:
        return b"txgate-store:entry:" + entry_id.encode()

    @staticmethod
    def _pending_aad(name: str) -> bytes:
        return b"txgate-store:pending:" + name.encode()

    def _parse_chain(self, chain_pem: bytes | str) -> tuple[list[x509.Certificate], bytes]:
        raw = _to_bytes(chain_pem) or b""
        if b"PRIVATE KEY-----" in raw:
            raise StoreError("malformed_pem", "the chain contains a private key; pass the key separately")
        if b"-----BEGIN CERTIFICATE-----" not in raw:
            raise StoreError("malformed_pem", "not a PEM certificate chain")
        try:
            certs = x509.load_pem_x509_certificates(raw)
        except ValueError:
            raise StoreError("malformed_pem", "malformed PEM certificate chain") from None
        if not certs:
            raise StoreError("malformed_pem", "not a PEM certificate chain")
        return certs, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def _check_validity(self, leaf: x509.Certificate) -> None:
        now = self._now()
        if now > leaf.not_valid_after_utc:
            raise StoreError("certificate_expired", f"certificate expired on {format_time(leaf.not_valid_after_utc)}")
        if now < leaf.not_valid_before_utc:
            raise StoreError(
                "certificate_not_yet_valid", f"certificate not valid before {format_time(leaf.not_valid_before_utc)}"
            )

    @staticmethod
    def _parse_key(key_pem: bytes | str) -> PrivateKey:
        try:
            return parse_private_key(_to_bytes(key_pem) or b"", "key")
        except CertificateError as e:
            raise StoreError("malformed_key", f"private key: {e.reason}") from None

    @staticmethod
    def _key_der(key: PrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def _info(
        self, entry_id: str, record: dict[str, Any], name: str | None, version: int | None,
        versions: tuple[int, ...], current: bool,
    ) -> tuple[CertInfo, list[x509.Certificate]]:
        try:
            chain = x509.load_pem_x509_certificates(record["chain_pem"].encode())
        except (ValueError, KeyError, AttributeError):
            raise StoreError("backend_error", f"store entry {entry_id} is corrupted (chain)") from None
        leaf = chain[0]
        from txgate.lifecycle.show import spki_pin

        info = CertInfo(
            id=entry_id, name=name, version=version, versions=versions, current=current,
            subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
            sans=tuple(cert_names(leaf)), not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
            fingerprint=entry_id, spki_pin=spki_pin(leaf), has_key=bool(record.get("key")),
            chain_length=len(chain), created=str(record.get("created", "")),
        )
        return info, chain

    def _name_record(self, name: str) -> dict[str, Any]:
        rec = self._r_get_name(name)
        if rec is None:
            raise StoreError("not_found", f"no store entry named {name!r}")
        return rec

    def _resolve(self, ref: str) -> tuple[Entry, tuple[int, ...], bool]:
        kind, value, version = parse_ref(ref)
        if kind == "id":
            if self._r_get_entry(value) is None:
                raise StoreError("not_found", f"no store entry with ID {value}")
            return Entry(id=value), (), True
        assert value is not None
        rec = self._name_record(value)
        versions = tuple(v["version"] for v in rec["versions"])
        wanted = rec["current"] if version is None else version
        for v in rec["versions"]:
            if v["version"] == wanted:
                return Entry(id=v["id"], name=value, version=wanted), versions, wanted == rec["current"]
        raise StoreError("not_found", f"store entry {value!r} has no version {wanted}")

    def _referenced_ids(self) -> dict[str, list[str]]:
        refs: dict[str, list[str]] = {}
        for n in self._r_names():
            rec = self._r_get_name(n)
            for v in (rec or {}).get("versions", []):
                refs.setdefault(v["id"], []).append(n)
        return refs

    # --- Store API ---------------------------------------------------------------------------

    def put(self, name: str | None, chain_pem: bytes | str, key_pem: bytes | str | None = None) -> Entry:
        if name is not None:
            check_name(name)
        certs, normalized = self._parse_chain(chain_pem)
        leaf = certs[0]
        self._check_validity(leaf)
        key = None
        if key_pem is not None:
            key = self._parse_key(key_pem)
            if public_key_der(key.public_key()) != public_key_der(leaf.public_key()):
                raise StoreError("key_mismatch", "the private key does not match the certificate")
        with self._locked():
            entry = self._put_unlocked(name, leaf, normalized, key)
        self._notify(name or entry.id, "put")
        return entry

    def _put_unlocked(
        self, name: str | None, leaf: x509.Certificate, chain_pem: bytes, key: PrivateKey | None
    ) -> Entry:
        entry_id = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
        existing = self._r_get_entry(entry_id)
        record: dict[str, Any] = {
            "id": entry_id,
            "chain_pem": chain_pem.decode(),
            "key": None,
            "created": (existing or {}).get("created") or self._stamp(),
        }
        if key is not None:
            record["key"] = self._require_box("store a private key").seal(self._key_der(key), self._entry_aad(entry_id))
        elif existing and existing.get("key"):
            record["key"] = existing["key"]  # re-adding a chain never drops its key
        self._r_put_entry(entry_id, record)
        if name is None:
            log.info("store: put entry {id} (has_key={has_key})", id=entry_id, has_key=bool(record["key"]))
            return Entry(id=entry_id)
        rec = self._r_get_name(name) or {"name": name, "versions": [], "current": 0}
        current = next((v for v in rec["versions"] if v["version"] == rec["current"]), None)
        if current is not None and current["id"] == entry_id:
            return Entry(id=entry_id, name=name, version=current["version"])
        version = max((v["version"] for v in rec["versions"]), default=0) + 1
        rec["versions"].append({"version": version, "id": entry_id, "created": self._stamp()})
        rec["current"] = version
        self._r_put_name(name, rec)
        log.info("store: put {name} version {version} id {id} (has_key={has_key})",
                 name=name, version=version, id=entry_id, has_key=bool(record["key"]))
        return Entry(id=entry_id, name=name, version=version)

    def resolve(self, ref: str) -> Entry:
        return self._resolve(ref)[0]

    def get(self, ref: str) -> StoredCertificate:
        entry, versions, current = self._resolve(ref)
        record = self._r_get_entry(entry.id)
        if record is None:
            raise StoreError("not_found", f"store entry {ref!r} points to a missing ID {entry.id}")
        info, chain = self._info(entry.id, record, entry.name, entry.version, versions, current)
        key = None
        if record.get("key"):
            box = self._require_box(f"decrypt the private key of store entry {entry.name or entry.id}")
            der = box.open(record["key"], self._entry_aad(entry.id), f"the private key of store entry {entry.id}")
            key = serialization.load_der_private_key(der, password=None)  # type: ignore[assignment]
        return StoredCertificate(info=info, chain=tuple(chain), chain_pem=record["chain_pem"].encode(), key=key)

    def list(self) -> list[CertInfo]:
        out: list[CertInfo] = []
        named: set[str] = set()
        for name in sorted(self._r_names()):
            rec = self._r_get_name(name)
            if not rec:
                continue
            versions = tuple(v["version"] for v in rec["versions"])
            for v in rec["versions"]:
                named.add(v["id"])
                if v["version"] == rec["current"]:
                    record = self._r_get_entry(v["id"])
                    if record is not None:
                        out.append(self._info(v["id"], record, name, v["version"], versions, True)[0])
        for entry_id in sorted(self._r_entry_ids()):
            if entry_id not in named:
                record = self._r_get_entry(entry_id)
                if record is not None:
                    out.append(self._info(entry_id, record, None, None, (), True)[0])
        return out

    def history(self, name: str) -> list[CertInfo]:
        check_name(name)
        rec = self._name_record(name)
        versions = tuple(v["version"] for v in rec["versions"])
        out = []
        for v in rec["versions"]:
            record = self._r_get_entry(v["id"])
            if record is not None:
                out.append(self._info(v["id"], record, name, v["version"], versions, v["version"] == rec["current"])[0])
        return out

    def rollback(self, name: str) -> Entry:
        check_name(name)
        with self._locked():
            rec = self._name_record(name)
            numbers = [v["version"] for v in rec["versions"]]
            index = numbers.index(rec["current"])
            if index == 0:
                raise StoreError("no_previous_version", f"store entry {name!r} has no version before {rec['current']}")
            previous = rec["versions"][index - 1]
            rec["current"] = previous["version"]
            self._r_put_name(name, rec)
        log.info("store: rolled {name} back to version {version} id {id}",
                 name=name, version=previous["version"], id=previous["id"])
        self._notify(name, "rollback")
        return Entry(id=previous["id"], name=name, version=previous["version"])

    def delete(self, ref: str) -> None:
        kind, value, version = parse_ref(ref)
        assert value is not None
        if version is not None:
            raise StoreError("invalid_ref", f"cannot delete one version ({ref!r}): delete the name, or roll it back")
        with self._locked():
            refs = self._referenced_ids()
            if kind == "id":
                if self._r_get_entry(value) is None:
                    raise StoreError("not_found", f"no store entry with ID {value}")
                if value in refs:
                    raise StoreError(
                        "in_use", f"entry {value} is a version of {', '.join(sorted(set(refs[value])))}; delete the name instead"
                    )
                self._r_delete_entry(value)
            else:
                rec = self._name_record(value)
                self._r_delete_name(value)
                for v in rec["versions"]:
                    if set(refs.get(v["id"], [])) <= {value}:
                        self._r_delete_entry(v["id"])
        log.info("store: deleted {ref}", ref=ref)
        self._notify(value, "delete")

    def create_pending_key(
        self, name: str, dns: Sequence[str] = (), ips: Sequence[str] = (), *, key_type: str = "ec",
        common_name: str | None = None,
    ) -> bytes:
        from txgate.lifecycle import LifecycleError, build_csr, generate_key

        check_name(name)
        box = self._require_box("keep a pending private key")
        try:
            key = generate_key(key_type)
            csr = build_csr(key, dns=dns, ips=ips, common_name=common_name)
        except LifecycleError as e:
            raise StoreError("invalid_request", str(e)) from None
        csr_pem = csr.public_bytes(serialization.Encoding.PEM)
        record = {
            "name": name,
            "key": box.seal(self._key_der(key), self._pending_aad(name)),
            "csr_pem": csr_pem.decode(),
            "created": self._stamp(),
        }
        with self._locked():
            self._r_put_pending(name, record)
        log.info("store: pending key created for {name}", name=name)
        self._notify(name, "pending")
        return csr_pem

    def pending_csr(self, name: str) -> bytes:
        check_name(name)
        rec = self._r_get_pending(name)
        if rec is None:
            raise StoreError("no_pending_key", f"no pending key for {name!r} (create a CSR first)")
        return str(rec["csr_pem"]).encode()

    def pending_names(self) -> list[str]:
        return sorted(self._r_pending_names())

    def complete_pending(self, name: str, chain_pem: bytes | str) -> Entry:
        check_name(name)
        box = self._require_box("complete a pending key")
        certs, normalized = self._parse_chain(chain_pem)
        leaf = certs[0]
        self._check_validity(leaf)
        with self._locked():
            rec = self._r_get_pending(name)
            if rec is None:
                raise StoreError("no_pending_key", f"no pending key for {name!r} (create a CSR first)")
            der = box.open(rec["key"], self._pending_aad(name), f"the pending private key of {name!r}")
            key = serialization.load_der_private_key(der, password=None)
            if public_key_der(key.public_key()) != public_key_der(leaf.public_key()):
                raise StoreError("key_mismatch", f"the certificate's public key is not the pending key of {name!r}")
            entry = self._put_unlocked(name, leaf, normalized, key)  # type: ignore[arg-type]
            self._r_delete_pending(name)
        self._notify(name, "put")
        return entry


class LocalSubscriptions:
    """In-process callback registry shared by backends (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[tuple[Callback, Call | None]] = []

    def add(self, callback: Callback, call: Call | None) -> Subscription:
        """Register ``callback``; the returned Subscription removes it."""
        item = (callback, call)
        with self._lock:
            self._subs.append(item)
        registry = self

        class _Local(Subscription):
            def close(self) -> None:
                with registry._lock:
                    if item in registry._subs:
                        registry._subs.remove(item)

        return _Local()

    def dispatch(self, name: str | None) -> None:
        """Deliver ``name`` to every callback (errors in one callback are logged, not raised)."""
        with self._lock:
            subs = list(self._subs)
        for callback, call in subs:
            try:
                if call is None:
                    callback(name)
                else:
                    call(_safe, callback, name)
            except Exception:
                log.failure("store: change callback failed for {name}", name=name)


def _safe(callback: Callback, name: str | None) -> None:
    try:
        callback(name)
    except Exception:
        log.failure("store: change callback failed for {name}", name=name)
