# -*- test-case-name: tests.test_k8s_e2e -*-
"""Following one kubernetes.io/tls Secret: list, then watch from its resourceVersion, into the certificate store.

Each good version of the Secret is written to the store under its derived name; the store's change
notification makes the gateway reload (no dropped connections). A bad version (malformed PEM, a key
that does not match) keeps the previous certificate, with one log line naming the Secret and the
reason. The watch is resumed from the last resourceVersion (bookmarks keep it fresh); a 410 Gone
means a fresh list; any other break reconnects with exponential backoff.
"""
from __future__ import annotations

from datetime import datetime, timezone

from twisted.internet import defer, task
from twisted.logger import Logger

from txgate.k8s.client import ApiError
from txgate.k8s.objects import SecretProblem, parse_tls_secret, secret_path

log = Logger(namespace="txgate.k8s")


class Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class SecretFollower:
    """Keeps the store entry ``store_name`` equal to the Secret NAMESPACE/NAME's certificate."""

    BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
    WATCH_SECONDS = 300

    def __init__(self, client, dstore, namespace: str, name: str, store_name: str, reactor) -> None:
        self.client, self.dstore, self.reactor = client, dstore, reactor
        self.namespace, self.name, self.store_name = namespace, name, store_name
        self.label = f"k8s-secret:{namespace}/{name}"
        self.rv: str | None = None
        self.applied: bytes | None = None  # the (chain, key) last written or found in the store
        self.listed: defer.Deferred = defer.Deferred()  # fires after the first list was applied
        self.running = False
        self._queue: defer.Deferred = defer.succeed(None)  # applies events in order
        self._gone = False
        self._backoff = self.BACKOFF_MIN

    def start(self) -> None:
        """Start following (runs until ``stop``)."""
        self.running = True
        self._run()

    def stop(self) -> None:
        self.running = False

    @defer.inlineCallbacks
    def _run(self):
        while self.running:
            try:
                if self.rv is None:
                    yield self._list()
                self._gone = False
                started = self.reactor.seconds()
                yield self.client.watch(secret_path(self.namespace), {
                    "fieldSelector": f"metadata.name={self.name}", "resourceVersion": self.rv,
                    "allowWatchBookmarks": "true", "timeoutSeconds": str(self.WATCH_SECONDS)}, self._event)
                yield self._queue
                if self._gone:
                    raise Gone()
                if self.reactor.seconds() - started >= self.BACKOFF_MIN:
                    self._backoff = self.BACKOFF_MIN
                    continue  # a watch that ended normally resumes at once
                why = "the watch ended at once"  # a server that closes every watch: back off, do not spin
            except Gone:
                log.info("{label}: resourceVersion {rv} is gone; listing again", label=self.label, rv=self.rv)
                self.rv = None
                continue
            except ApiError as e:
                if e.status == 410:
                    log.info("{label}: resourceVersion {rv} is gone; listing again", label=self.label, rv=self.rv)
                    self.rv = None
                    continue
                why = str(e)
            except Exception as e:
                why = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
            if not self.running:
                break
            log.warn("{label}: watch failed ({error}); retrying in {delay:.1f}s", label=self.label, error=why,
                     delay=self._backoff)
            yield task.deferLater(self.reactor, self._backoff, lambda: None)
            self._backoff = min(self._backoff * 2, self.BACKOFF_MAX)

    @defer.inlineCallbacks
    def _list(self):
        got = yield self.client.request("GET", secret_path(self.namespace),
                                        query={"fieldSelector": f"metadata.name={self.name}"})
        items = [i for i in got.get("items") or () if (i.get("metadata") or {}).get("name") == self.name]
        if not items:
            log.warn("{label}: the Secret does not exist (waiting for it)", label=self.label)
        for item in items:
            yield self._apply(item)
        self.rv = str((got.get("metadata") or {}).get("resourceVersion") or "") or None
        if not self.listed.called:
            self.listed.callback(None)

    def _event(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                self._gone = True
            else:
                log.warn("{label}: watch error: {message}", label=self.label, message=obj.get("message"))
            return
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self._queue.addCallback(lambda _: self._apply(obj))
        elif kind == "DELETED":
            log.warn("{label}: the Secret was deleted; keeping the certificate in use", label=self.label)
        if rv:
            self.rv = str(rv)

    @defer.inlineCallbacks
    def _apply(self, obj: dict):
        """Write a good Secret version to the store; log a bad one and keep the previous certificate."""
        if not self.running:  # no longer named by the running config
            return
        try:
            secret = parse_tls_secret(obj, datetime.now(timezone.utc))
        except SecretProblem as e:
            log.warn("{label}: {reason}; keeping the previous certificate", label=self.label, reason=str(e))
            return
        content = secret.chain_pem + b"\0" + secret.key_pem
        if content == self.applied:
            return
        if self.applied is None and (yield self._same_in_store(secret)):
            self.applied = content
            return
        try:
            entry = yield self.dstore.put(self.store_name, secret.chain_pem, secret.key_pem)
        except Exception as e:
            log.warn("{label}: {reason}; keeping the previous certificate", label=self.label,
                     reason=getattr(e, "reason", str(e)))
            return
        self.applied = content
        log.info("{label}: certificate {id} stored as {name} (resourceVersion {rv})", label=self.label,
                 id=entry.id[:16], name=self.store_name, rv=secret.resource_version)

    @defer.inlineCallbacks
    def _same_in_store(self, secret) -> bool:
        """Whether the store already serves this certificate (no new version after a restart)."""
        from cryptography import x509

        try:
            current = yield self.dstore.get(self.store_name)
        except Exception:
            return False
        leaf = x509.load_pem_x509_certificates(secret.chain_pem)[0]
        return current.chain[0] == leaf
