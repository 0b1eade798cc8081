# -*- test-case-name: tests.test_k8s_e2e -*-
"""Blocking API calls, for when no reactor runs: the startup read of Secrets, and the `txgate k8s` command.

``fetch_secrets`` runs in ``makeService``, before anything listens and before the reactor starts, so
listeners start with the Secrets' certificates (bounded; a Secret not read in time is left to the
watch and its listener starts with a placeholder). ``fetch_secret_cas`` does the same for CA bundles
(``client_ca`` / ``upstream_ca = k8s-secret:NS/NAME#KEY``), which have no placeholder: a missing key
or a bad PEM is a ConfigError naming the file, section, key and Secret, and so is a Secret that cannot
be read unless the store holds its bundle from before. Everything in the running gateway (watches,
CSRs) goes through ``txgate.k8s.client``.
"""
from __future__ import annotations

import http.client
import json
import os
import ssl
import tempfile
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

from twisted.logger import Logger

from txgate.k8s.kubeconfig import ClusterAccess
from txgate.k8s.objects import SecretProblem, parse_secret_ca, parse_tls_secret, secret_path

log = Logger(namespace="txgate.k8s")


def _context(access: ClusterAccess) -> ssl.SSLContext:
    if access.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cadata=access.ca_pem.decode() if access.ca_pem else None)
    if access.client_cert_pem:
        # load_cert_chain reads files only: a private temporary file, removed at once.
        fd, path = tempfile.mkstemp(prefix="txgate-k8s-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(access.client_cert_pem + b"\n" + access.client_key_pem)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
    return ctx


def blocking_request(access: ClusterAccess, method: str, path: str, body: dict | None = None, *,
                     timeout: float = 30.0, ctx: ssl.SSLContext | None = None) -> dict:
    """One JSON request; the decoded answer, or ApiError for a 4xx/5xx answer (OSError when unreachable)."""
    from txgate.k8s.client import TokenSource, api_error

    parts = urlsplit(access.server)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=ctx or _context(access),
                                       timeout=timeout)
    try:
        headers = {"Accept": "application/json", "User-Agent": "txgate"}
        token = TokenSource(access.token, access.token_file).current()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status >= 400:
            raise api_error(resp.status, raw)
        return json.loads(raw)
    finally:
        conn.close()


def fetch_secrets(access: ClusterAccess, wants, store, timeout: float) -> None:
    """GET each wanted Secret (namespace, name, store name) and put a good one in the store; within ``timeout``."""
    if not wants or timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    ctx = _context(access)
    for ns, name, store_name in wants:
        left = deadline - time.monotonic()
        label = f"k8s-secret:{ns}/{name}"
        if left <= 0:
            log.warn("{label}: not read within [kubernetes] startup_timeout; starting with a placeholder",
                     label=label)
            continue
        try:
            obj = blocking_request(access, "GET", secret_path(ns, name), timeout=left, ctx=ctx)
            secret = parse_tls_secret(obj, datetime.now(timezone.utc))
            _put_if_new(store, store_name, secret.chain_pem, secret.key_pem)
        except SecretProblem as e:
            log.warn("{label}: {reason}; not served", label=label, reason=str(e))
        except Exception as e:
            log.warn("{label}: cannot read it at startup ({error}); starting with a placeholder", label=label,
                     error=str(e) or e.__class__.__name__)


def fetch_secret_cas(access: ClusterAccess, config, store, timeout: float, *, new_only: bool = False) -> None:
    """GET the Secret of each CA source of ``config`` and put its bundle in the store; ConfigError when it cannot be had.

    ``new_only`` (a reload): only the bundles the store does not hold yet (the others are followed)."""
    from txgate.config import ConfigError
    from txgate.config.kubernetes import secret_ca_ref, store_name_secret_ca
    from txgate.store import StoreError

    sources = config.kubernetes_cas()
    if new_only:
        sources = [src for src in sources if not _stored(store, store_name_secret_ca(src[2]))]
    if not sources:
        return
    deadline = time.monotonic() + max(timeout, 0.0)
    ctx = _context(access)
    read: dict[tuple[str, str], object] = {}  # (namespace, name) -> the Secret, or why it could not be read
    for section, key, word in sources:
        ns, name, data_key = secret_ca_ref(word)
        store_name = store_name_secret_ca(word)
        if (ns, name) not in read:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError("not read within [kubernetes] startup_timeout")
                read[(ns, name)] = blocking_request(access, "GET", secret_path(ns, name), timeout=left, ctx=ctx)
            except Exception as e:
                read[(ns, name)] = e
        obj = read[(ns, name)]
        if isinstance(obj, Exception):
            error = str(obj) or obj.__class__.__name__
            if _stored(store, store_name):
                log.warn("{word}: cannot read the Secret at startup ({error}); using the CA bundle read before",
                         word=word, error=error)
                continue
            raise ConfigError(config.path, section, key, f"{word}: cannot read the Secret {ns}/{name} ({error})")
        try:
            pem = parse_secret_ca(obj, data_key)
            _put_if_new(store, store_name, pem, None)
        except SecretProblem as e:
            raise ConfigError(config.path, section, key, f"{word}: Secret {ns}/{name}: {e}") from None
        except StoreError as e:
            raise ConfigError(config.path, section, key, f"{word}: Secret {ns}/{name}: {data_key}: {e.reason}") from None


def _stored(store, store_name: str) -> bool:
    from txgate.store import StoreError

    try:
        store.get(store_name)
    except StoreError:
        return False
    return True


def _put_if_new(store, store_name: str, chain_pem: bytes, key_pem: bytes | None) -> None:
    from cryptography import x509

    from txgate.store import StoreError

    chain = tuple(x509.load_pem_x509_certificates(chain_pem))
    try:
        if tuple(store.get(store_name).chain) == chain:
            return
    except StoreError:
        pass
    store.put(store_name, chain_pem, key_pem)
