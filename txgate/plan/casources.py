# -*- test-case-name: tests.test_k8s_unit,tests.test_k8s_e2e,tests.test_mtls_config -*-
"""A CA bundle named by ``client_ca`` / ``upstream_ca``: a PEM file, or a Secret's key (`k8s-secret:NS/NAME#KEY`).

A Secret's CA bundle is read by the Kubernetes source into the certificate store (a key-less entry
under ``txgate.config.kubernetes.store_name_secret_ca``); the plan takes it from there, so a change
in the Secret is a store change and therefore a hot reload. Its stamp (a digest of the bundle) goes
into ``plan.ca_stamps`` so a reload can tell that a listener's client CAs changed.
"""
from __future__ import annotations

import hashlib

from txgate.config import Config, ConfigError
from txgate.config.kubernetes import secret_ca_ref, store_name_secret_ca
from txgate.plan.model import Plan


def load_ca_source(config: Config, section: str, key: str, word: str, plan: Plan, store=None, *,
                   required: bool = True) -> list | None:
    """The certificates of a CA source; ConfigError naming section and key when it cannot be had.

    A Secret's bundle not in the store yet is an error when ``required`` (the gateway read the Secret
    at startup); otherwise (``txgate check``) a warning, and None.
    """
    from txgate.tls.certs import CertificateError, load_ca_bundle

    if secret_ca_ref(word) is None:
        try:
            certs = load_ca_bundle(word)
        except CertificateError as e:
            raise ConfigError(config.path, section, key, str(e)) from None
    else:
        certs = _from_store(config, section, key, word, plan, store, required)
        if certs is None:
            return None
    for ca in certs:
        plan.held.append((f"{section} {key}", "ca", ca))
    return certs


def _from_store(config: Config, section: str, key: str, word: str, plan: Plan, store, required: bool):
    from cryptography.hazmat.primitives import serialization

    from txgate.store import StoreError

    got = None
    if store is not None:
        try:
            got = store.get(store_name_secret_ca(word))
        except StoreError:
            got = None
    if got is None:
        if required:
            raise ConfigError(config.path, section, key, f"{word}: not read from the cluster (the Secret could "
                              "not be read at startup: see the lines above)")
        plan.warn(section, key, f"{word}: not read from the cluster yet (the gateway reads it at startup)")
        return None
    certs = list(got.chain)
    digest = hashlib.sha256(b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)).hexdigest()
    plan.ca_stamps[word] = digest
    return certs


def ca_source_stamp(word: str | None, stamps: dict | None):
    """What identifies a CA source's content for a reload: the file's stamp, or the Secret bundle's digest."""
    from txgate.plan.checks import file_stamp

    if word and secret_ca_ref(word) is not None:
        return (word, (stamps or {}).get(word))
    return file_stamp(word)
