# -*- test-case-name: tests.test_store -*-
"""The certificate store: chains with optional private keys (encrypted at rest), by ID or versioned name.

Backends: a directory (``state_dir/store/``) and Redis (``redis://HOST:PORT/DB``, pub/sub change
messages for fleets). Every Store method blocks; in the reactor thread use ``DeferredStore``.

API::

    open_store(url, state_dir, secret, *, clock=None) -> Store   # url: "dir" | "redis://HOST:PORT/DB"
    load_secret(secret_file=None, environ=None) -> bytes | None  # file, else $TXGATE_STORE_SECRET

    Store.put(name | None, chain_pem, key_pem=None) -> Entry(id, name, version)
    Store.get(ref) -> StoredCertificate(info, chain, chain_pem, key; .certified_key())
    Store.resolve(ref) -> Entry                      # ref: NAME, NAME@VERSION or ID
    Store.list() -> [CertInfo]                       # current versions, then unnamed entries
    Store.history(name) -> [CertInfo]
    Store.rollback(name) -> Entry
    Store.delete(ref) -> None
    Store.create_pending_key(name, dns=(), ips=(), *, key_type="ec", common_name=None) -> csr_pem
    Store.pending_csr(name) -> csr_pem; Store.pending_names() -> [name]
    Store.complete_pending(name, chain_pem) -> Entry
    Store.subscribe(callback, *, call=None) -> Subscription(.close())   # callback(name | None)
    Store.close()

    StoreError(code, reason): .code is stable, .http_status maps it for the admin API.
    split_pem_bundle(pem) -> (chain_pem, key_pem | None)
"""
from __future__ import annotations

import os
from datetime import datetime
from typing import Callable

from txgate.store.base import RecordStore, Store, Subscription, split_pem_bundle
from txgate.store.crypto import ENV_SECRET, KeyBox, load_secret
from txgate.store.deferred import DeferredStore
from txgate.store.model import CODE_STATUS, CertInfo, Entry, StoredCertificate, StoreError, is_id, parse_ref

__all__ = [
    "CODE_STATUS",
    "CertInfo",
    "DeferredStore",
    "ENV_SECRET",
    "Entry",
    "KeyBox",
    "RecordStore",
    "Store",
    "StoreError",
    "StoredCertificate",
    "Subscription",
    "is_id",
    "load_secret",
    "open_store",
    "parse_ref",
    "split_pem_bundle",
]


def open_store(
    url: str | None, state_dir: str, secret: bytes | str | None, *, clock: Callable[[], datetime] | None = None
) -> Store:
    """The store for a ``[gateway] store`` value: ``dir`` (default: ``state_dir/store``) or ``redis://...``."""
    if not url or url == "dir":
        from txgate.store.directory import DirectoryStore

        return DirectoryStore(os.path.join(state_dir, "store"), secret, clock=clock)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from txgate.store.redis_backend import RedisStore

        return RedisStore(url, secret, clock=clock)
    raise StoreError("invalid_url", f"unknown store {url.split('://')[0]!r}: expected 'dir' or 'redis://HOST:PORT/DB'")
