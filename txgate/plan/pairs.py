# -*- test-case-name: tests.test_config,tests.test_store_config -*-
"""Resolving one certificate reference of gw.ini (CERT.pem KEY.pem, or store:REF) to a CertifiedKey."""
from __future__ import annotations

from datetime import datetime

from txgate.config import CertSpec, Config, ConfigError
from txgate.plan.model import Plan


def load_pair(config: Config, section: str, key: str, spec: CertSpec, now: datetime, plan: Plan | None = None,
              store=None):
    """A CERT.pem KEY.pem pair or a `store:REF` entry as a CertifiedKey; errors name section and key.

    A Kubernetes source (`k8s-secret:`, `k8s-csr:`) whose certificate has not reached the store yet
    gives None (the caller serves a placeholder, with a warning naming the source).
    """
    from txgate.tls.certs import CertificateError, check_validity, load_certified_key

    if spec.kubernetes and not _in_store(store, spec.store_ref):
        if plan is not None:
            plan.warn(section, key, f"{spec.label}: no certificate from Kubernetes yet "
                      "(a placeholder is used until it arrives)")
        return None
    if spec.store_ref is not None:
        from txgate.store import StoreError

        label = spec.label
        if store is None:
            raise ConfigError(config.path, section, key, f"{label}: no certificate store is open "
                              f"(the store under [gateway] state_dir does not exist yet)")
        try:
            got = store.get(spec.store_ref)
        except StoreError as e:
            raise ConfigError(config.path, section, key, f"{label}: {e.reason}") from None
        if got.key is None:
            raise ConfigError(config.path, section, key,
                              f"{label}: the store entry {got.id} has no private key (put its key with the chain)")
        ck = got.certified_key()
        try:
            check_validity(ck.leaf, label, now)
        except CertificateError as e:
            raise ConfigError(config.path, section, key, str(e)) from None
        if plan is not None:
            plan.store_ids[spec.store_ref] = got.id
        return ck
    try:
        return load_certified_key(spec.cert_path, spec.key_path, now=now)
    except CertificateError as e:
        raise ConfigError(config.path, section, key, str(e)) from None


def warn_expiry(plan: Plan, section: str, key: str, ck, now: datetime) -> None:
    """A startup warning when a certificate expires soon (or has expired)."""
    from txgate.tls.certs import expiry_warning

    w = expiry_warning(ck, now)
    if w:
        plan.warn(section, key, w)


def _in_store(store, ref: str) -> bool:
    """Whether the store has a current entry named ``ref`` (with a key)."""
    from txgate.store import StoreError

    if store is None:
        return False
    try:
        return store.get(ref).key is not None
    except StoreError:
        return False
