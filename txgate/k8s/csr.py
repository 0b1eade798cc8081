# -*- test-case-name: tests.test_k8s_e2e -*-
"""Certificates signed in the cluster: a key made here (kept encrypted in the store), a CertificateSigningRequest,
approval and ``status.certificate``, installation in the store, renewal at 2/3 of the lifetime.

The private key never leaves the gateway: the store's pending key holds it until the signed certificate
completes it. Each replica submits its own CSR (named with its pod name), as kubelets do. A Denied or
Failed condition is logged with its reason and message; the listener keeps its placeholder (or the
previous certificate) until the next reload or restart asks again.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from twisted.internet import defer, task
from twisted.logger import Logger

from txgate.k8s.client import ApiError
from txgate.k8s.objects import CSR_API, csr_body, csr_object_name, csr_state, renew_at, split_names

log = Logger(namespace="txgate.k8s")


@dataclass(frozen=True)
class CsrWant:
    """One certificate to obtain through a CSR: its store name, signer and names (or client CN)."""

    store_name: str
    signer: str
    names: tuple[str, ...]
    client: bool
    label: str  # who uses it, for messages


class CsrIssuer:
    """Obtains and renews the certificate of one CsrWant."""

    POLL = 1.0
    BACKOFF_MAX = 60.0

    def __init__(self, client, dstore, want: CsrWant, reactor, *, pod: str, expiration_seconds: int) -> None:
        self.client, self.dstore, self.want, self.reactor = client, dstore, want, reactor
        self.pod, self.expiration_seconds = pod, expiration_seconds
        self.running = False
        self._call = None
        self.csr_name: str | None = None

    def start(self) -> None:
        """Issue now, or schedule the renewal of the certificate already in the store."""
        self.running = True
        self._start()

    def stop(self) -> None:
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()

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
                outcome = yield self._submit_and_wait()
                return outcome
            except ApiError as e:
                why = str(e)
            except Exception as e:
                why = f"{e.__class__.__name__}: {e}"
            log.warn("{label}: CSR failed ({error}); retrying in {delay:.0f}s", label=self.want.label, error=why,
                     delay=delay)
            yield task.deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, self.BACKOFF_MAX)

    @defer.inlineCallbacks
    def _submit_and_wait(self):
        want = self.want
        dns, ips = split_names(want.names)
        cn = self.pod if want.client else None
        csr_pem = yield self.dstore.create_pending_key(want.store_name, [] if want.client else dns,
                                                       [] if want.client else ips, common_name=cn)
        name = csr_object_name(want.store_name, self.pod, int(self.reactor.seconds()))
        body = csr_body(name, csr_pem, want.signer, client=want.client,
                        expiration_seconds=self.expiration_seconds)
        yield self.client.request("POST", CSR_API, body)
        self.csr_name = name
        log.info("{label}: submitted CertificateSigningRequest {csr} (signer {signer}); waiting for approval "
                 "and the certificate", label=want.label, csr=name, signer=want.signer)
        while self.running:
            obj = yield self.client.request("GET", f"{CSR_API}/{name}")
            state = csr_state(obj)
            if state.outcome == "issued":
                entry = yield self.dstore.complete_pending(want.store_name, state.certificate)
                log.info("{label}: CertificateSigningRequest {csr} issued certificate {id}; installed as {store}",
                         label=want.label, csr=name, id=entry.id[:16], store=want.store_name)
                got = yield self.dstore.get(want.store_name)
                self._schedule(got.chain[0])
                return "issued"
            if state.outcome in ("denied", "failed"):
                log.error("{label}: CertificateSigningRequest {csr} {outcome}: {reason}: {message}",
                          label=want.label, csr=name, outcome=state.outcome, reason=state.reason or "-",
                          message=state.message or "-")
                return state.outcome
            yield task.deferLater(self.reactor, self.POLL, lambda: None)
        return "stopped"
