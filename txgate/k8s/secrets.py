# -*- test-case-name: tests.test_k8s_e2e -*-
"""Following one Secret into the certificate store: its TLS pair, and CA bundles under named keys (``#ca.crt``).

The Secret is followed by ``txgate.k8s.watch.ObjectWatch`` (list, then watch from its
resourceVersion). Each good version of what the config takes from it is written to the store under
its derived name: the pair (``tls.crt`` + ``tls.key``) for ``k8s-secret:NS/NAME``, a key-less entry
for each ``k8s-secret:NS/NAME#KEY`` CA source. The store's change notification makes the gateway
reload (no dropped connections). A bad version (malformed PEM, a key that does not match, a missing
key) keeps the previous certificate or CA, with one log line naming the Secret and the reason.
"""
from __future__ import annotations

from datetime import datetime, timezone

from twisted.internet import defer
from twisted.logger import Logger

from txgate.k8s.objects import SecretProblem, parse_secret_ca, parse_tls_secret, secret_path
from txgate.k8s.watch import ObjectWatch

log = Logger(namespace="txgate.k8s")


class SecretFollower:
    """Keeps the store entries of the Secret NAMESPACE/NAME equal to its content.

    ``store_name``: where its TLS pair goes (None when only CAs are taken from it); ``ca_keys``:
    (data key, store name) of each CA bundle taken from it.
    """

    def __init__(self, client, dstore, namespace: str, name: str, store_name: str | None, reactor, *,
                 ca_keys: tuple[tuple[str, str], ...] = ()) -> None:
        self.dstore = dstore
        self.namespace, self.name, self.store_name, self.ca_keys = namespace, name, store_name, ca_keys
        self.label = f"k8s-secret:{namespace}/{name}"
        self.applied: dict[str, bytes] = {}  # store name -> content last written or found in the store
        self.watch = ObjectWatch(client, secret_path(namespace), name, self.label, reactor,
                                 on_object=self._apply, on_deleted=self._deleted, on_missing=self._missing)

    @property
    def listed(self) -> defer.Deferred:
        """Fires after the first list was applied."""
        return self.watch.listed

    @property
    def running(self) -> bool:
        return self.watch.running

    def start(self) -> None:
        """Start following (runs until ``stop``)."""
        self.watch.start()

    def stop(self) -> None:
        self.watch.stop()

    def _missing(self) -> None:
        log.warn("{label}: the Secret does not exist (waiting for it)", label=self.label)

    def _deleted(self, _obj) -> None:
        log.warn("{label}: the Secret was deleted; keeping the certificates in use", label=self.label)

    @defer.inlineCallbacks
    def _apply(self, obj: dict):
        """Write the good parts of a Secret version to the store; log a bad part and keep its previous version."""
        if self.store_name is not None:
            yield self._apply_pair(obj)
        for key, store_name in self.ca_keys:
            yield self._apply_ca(obj, key, store_name)

    @defer.inlineCallbacks
    def _apply_pair(self, obj: dict):
        try:
            secret = parse_tls_secret(obj, datetime.now(timezone.utc))
        except SecretProblem as e:
            log.warn("{label}: {reason}; keeping the previous certificate", label=self.label, reason=str(e))
            return
        yield self._put(self.store_name, secret.chain_pem, secret.key_pem, "certificate", secret.resource_version)

    @defer.inlineCallbacks
    def _apply_ca(self, obj: dict, key: str, store_name: str):
        try:
            pem = parse_secret_ca(obj, key)
        except SecretProblem as e:
            log.warn("{label}#{key}: {reason}; keeping the previous CA", label=self.label, key=key, reason=str(e))
            return
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        yield self._put(store_name, pem, None, f"CA ({key})", rv)

    @defer.inlineCallbacks
    def _put(self, store_name: str, chain_pem: bytes, key_pem: bytes | None, what: str, rv: str):
        content = chain_pem + b"\0" + (key_pem or b"")
        if content == self.applied.get(store_name):
            return
        if store_name not in self.applied and (yield self._same_in_store(store_name, chain_pem)):
            self.applied[store_name] = content
            return
        try:
            entry = yield self.dstore.put(store_name, chain_pem, key_pem)
        except Exception as e:
            log.warn("{label}: {reason}; keeping the previous {what}", label=self.label,
                     reason=getattr(e, "reason", str(e)), what="CA" if key_pem is None else "certificate")
            return
        self.applied[store_name] = content
        log.info("{label}: {what} {id} stored as {name} (resourceVersion {rv})", label=self.label, what=what,
                 id=entry.id[:16], name=store_name, rv=rv)

    @defer.inlineCallbacks
    def _same_in_store(self, store_name: str, chain_pem: bytes) -> bool:
        """Whether the store already holds this content (no new version after a restart)."""
        from cryptography import x509

        try:
            current = yield self.dstore.get(store_name)
        except Exception:
            return False
        return tuple(current.chain) == tuple(x509.load_pem_x509_certificates(chain_pem))
