# -*- test-case-name: tests.test_k8s_e2e,tests.test_k8s_unit -*-
"""Certificates signed in the cluster: a key made here (kept encrypted in the store), a CertificateSigningRequest,
approval and ``status.certificate``, installation in the store, renewal at 2/3 of the lifetime.

The private key never leaves the gateway: the store's pending key holds it until the signed certificate
completes it. Each replica submits its own CSR, named from its pod name, the use and a digest of the
key, as kubelets do. The CSR is followed with the same list + watch as Secrets
(``txgate.k8s.watch``). A restart while a CSR is pending finds it again under the pending key's name
and keeps following it (``objects.resume_action``); a new key and CSR are made only when it was
denied, failed or holds another key. A Denied or Failed condition is logged with its reason and
message; the listener keeps its placeholder (or the previous certificate) until the next reload or
restart asks again.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from twisted.internet import defer, task
from twisted.logger import Logger

from txgate.k8s.client import ApiError
from txgate.k8s.objects import CSR_API, csr_body, csr_object_name, csr_state, renew_at, resume_action, split_names
from txgate.k8s.watch import ObjectWatch

log = Logger(namespace="txgate.k8s")


@dataclass(frozen=True)
class CsrWant:
    """One certificate to obtain through a CSR: its store name, signer and names (or client CN)."""

    store_name: str
    signer: str
    names: tuple[str, ...]
    client: bool
    label: str  # who uses it, for messages


class CsrGone(Exception):
    """The CSR followed was deleted (or garbage-collected) before it was issued."""


class CsrIssuer:
    """Obtains and renews the certificate of one CsrWant."""

    BACKOFF_MAX = 60.0

    def __init__(self, client, dstore, want: CsrWant, reactor, *, pod: str, expiration_seconds: int) -> None:
        self.client, self.dstore, self.want, self.reactor = client, dstore, want, reactor
        self.pod, self.expiration_seconds = pod, expiration_seconds
        self.running = False
        self._call = None
        self._watch: ObjectWatch | None = None
        self._outcome: defer.Deferred | None = None
        self.csr_name: str | None = None

    def start(self) -> None:
        """Issue now, or schedule the renewal of the certificate already in the store."""
        self.running = True
        self._start()

    def stop(self) -> None:
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self._watch is not None:
            self._watch.stop()
        if self._outcome is not None and not self._outcome.called:
            self._outcome.callback("stopped")

    @defer.inlineCallbacks
    def _start(self):
        try:
            current = yield self.dstore.get(self.want.store_name)
        except Exception:
            current = None
        if current is not None and current.key is not None:
            self._schedule(current.chain[0])
        else:
            self._issue()

    def _schedule(self, leaf) -> None:
        when = renew_at(leaf.not_valid_before_utc, leaf.not_valid_after_utc)
        delay = max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
        log.info("{label}: certificate valid until {until}; renewing in {delay:.0f}s", label=self.want.label,
                 until=leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), delay=delay)
        if self.running:
            self._call = self.reactor.callLater(delay, self._issue)

    @defer.inlineCallbacks
    def _issue(self):
        delay = 1.0
        while self.running:
            try:
                name = yield self._resume_or_submit()
                outcome = yield self._follow(name)
                return outcome
            except ApiError as e:
                why = str(e)
            except Exception as e:
                why = f"{e.__class__.__name__}: {e}"
            if not self.running:
                break
            log.warn("{label}: CSR failed ({error}); retrying in {delay:.0f}s", label=self.want.label, error=why,
                     delay=delay)
            yield task.deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, self.BACKOFF_MAX)
        return "stopped"

    @defer.inlineCallbacks
    def _pending_csr(self):
        """The CSR PEM of the store's pending key for this use (None without one)."""
        from txgate.store import StoreError

        try:
            return (yield self.dstore.pending_csr(self.want.store_name))
        except StoreError as e:
            if e.code == "no_pending_key":
                return None
            raise

    @defer.inlineCallbacks
    def _get_csr(self, name: str):
        try:
            return (yield self.client.request("GET", f"{CSR_API}/{name}"))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    @defer.inlineCallbacks
    def _resume_or_submit(self):
        """The name of the CSR to follow: the pending key's own (after a restart), or a new one submitted now."""
        want = self.want
        csr_pem = yield self._pending_csr()
        found = None
        if csr_pem is not None:
            found = yield self._get_csr(csr_object_name(want.store_name, self.pod, csr_pem))
        action = resume_action(found, csr_pem)
        if action == "follow":
            name = found["metadata"]["name"]
            log.info("{label}: following CertificateSigningRequest {csr} (submitted before for the pending key)",
                     label=want.label, csr=name)
            return name
        if action == "new-key":
            dns, ips = split_names(want.names)
            cn = self.pod if want.client else None
            csr_pem = yield self.dstore.create_pending_key(want.store_name, [] if want.client else dns,
                                                           [] if want.client else ips, common_name=cn)
        name = csr_object_name(want.store_name, self.pod, csr_pem)
        body = csr_body(name, csr_pem, want.signer, client=want.client, expiration_seconds=self.expiration_seconds)
        yield self.client.request("POST", CSR_API, body)
        log.info("{label}: submitted CertificateSigningRequest {csr} (signer {signer}); waiting for approval "
                 "and the certificate", label=want.label, csr=name, signer=want.signer)
        return name

    @defer.inlineCallbacks
    def _follow(self, name: str):
        """Watch the CSR until it is issued (installed), denied or failed; CsrGone when it disappears."""
        self.csr_name = name
        self._outcome = outcome = defer.Deferred()

        def gone(*_args) -> None:
            if not outcome.called:
                outcome.errback(CsrGone(f"CertificateSigningRequest {name} no longer exists"))

        self._watch = ObjectWatch(self.client, CSR_API, name, f"{self.want.label}: CSR {name}", self.reactor,
                                  on_object=lambda obj: self._csr_version(obj, outcome),
                                  on_deleted=gone, on_missing=gone)
        self._watch.start()
        try:
            result = yield outcome
        finally:
            self._watch.stop()
        return result

    @defer.inlineCallbacks
    def _csr_version(self, obj: dict, outcome: defer.Deferred):
        if outcome.called:
            return
        want, name = self.want, obj["metadata"]["name"]
        state = csr_state(obj)
        if state.outcome == "issued":
            try:
                entry = yield self.dstore.complete_pending(want.store_name, state.certificate)
                got = yield self.dstore.get(want.store_name)
            except Exception as e:
                if not outcome.called:
                    outcome.errback(e)
                return
            log.info("{label}: CertificateSigningRequest {csr} issued certificate {id}; installed as {store}",
                     label=want.label, csr=name, id=entry.id[:16], store=want.store_name)
            if not outcome.called:
                outcome.callback("issued")
            self._schedule(got.chain[0])
        elif state.outcome in ("denied", "failed"):
            log.error("{label}: CertificateSigningRequest {csr} {outcome}: {reason}: {message}",
                      label=want.label, csr=name, outcome=state.outcome, reason=state.reason or "-",
                      message=state.message or "-")
            if not outcome.called:
                outcome.callback(state.outcome)
