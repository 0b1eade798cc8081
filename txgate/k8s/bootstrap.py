# -*- test-case-name: tests.test_k8s_e2e -*-
"""Blocking API calls, for when no reactor runs: the startup read of Secrets, and the `txgate k8s` command.

``fetch_secrets`` runs in ``makeService``, before anything listens and before the reactor starts, so
listeners start with the Secrets' certificates (bounded; a Secret not read in time is left to the
watch and its listener starts with a placeholder). Everything in the running gateway (watches, CSRs)
goes through ``txgate.k8s.client``.
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
from txgate.k8s.objects import SecretProblem, parse_tls_secret, secret_path

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
            _put_if_new(store, store_name, secret)
        except SecretProblem as e:
            log.warn("{label}: {reason}; not served", label=label, reason=str(e))
        except Exception as e:
            log.warn("{label}: cannot read it at startup ({error}); starting with a placeholder", label=label,
                     error=str(e) or e.__class__.__name__)


def _put_if_new(store, store_name: str, secret) -> None:
    from cryptography import x509

    from txgate.store import StoreError

    leaf = x509.load_pem_x509_certificates(secret.chain_pem)[0]
    try:
        if store.get(store_name).chain[0] == leaf:
            return
    except StoreError:
        pass
    store.put(store_name, secret.chain_pem, secret.key_pem)
