# -*- test-case-name: tests.test_ocsp_unit,tests.test_ocsp_e2e -*-
"""Stapling: the holder a TLS context's OCSP callback reads, and the refreshers that fill it.

Contexts are built once (in the plan), each with ``set_ocsp_server_callback(holder.callback)``;
the runtime's ``Stapling`` keeps one ``Refresher`` per certificate (issuer key + serial) across
reloads, fetches on the injected clock, verifies, and only then puts a response into the holder.
A response that cannot be fetched or verified never reaches a client; the previous good one stays
until it expires.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from cryptography import x509
from twisted.logger import Logger

from txgate.ocsp import cache
from txgate.ocsp.check import OCSPError, Status, build_request, verify_response
from txgate.ocsp.schedule import refresh_delay, retry_delay

log = Logger(namespace="txgate.ocsp")

#: Seconds a staple fetch may take.
FETCH_TIMEOUT = 10.0


class StapleHolder:
    """The current staple of one certificate; ``callback`` is what pyOpenSSL calls in a handshake."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.status: Status | None = None
        self._der = b""
        self._expires = 0.0
        self._now = now

    def set(self, status: Status | None) -> None:
        """Staple ``status`` from now on (None: staple nothing)."""
        self.status = status
        self._der = b"" if status is None else status.der
        self._expires = 0.0 if status is None else status.expires().timestamp()

    def current(self) -> bytes:
        """The DER response to staple, or b"" (none, or the held one has expired)."""
        if self._der and self._now() < self._expires:
            return self._der
        return b""

    def callback(self, conn, data) -> bytes:
        """pyOpenSSL's OCSP server callback: b"" means no staple."""
        try:
            return self.current()
        except Exception:  # pyOpenSSL would turn an exception into a failed handshake
            return b""


@dataclass
class StapleTarget:
    """One certificate to staple for: where to ask, who must have signed, who uses it."""

    key: str
    cert: x509.Certificate
    issuer: x509.Certificate
    url: str
    must_staple: bool
    users: list = field(default_factory=list)  # "listener:NAME" / "listener:NAME sni:HOST"
    holder: StapleHolder = field(default_factory=StapleHolder)

    @property
    def name(self) -> str:
        """The first user: how logs and metrics name this certificate."""
        return self.users[0] if self.users else self.key


def load_cached(target: StapleTarget, state_dir: str, now: datetime) -> Status | None:
    """The cached response of ``target`` if it still verifies now (else None); puts it into the holder."""
    der = cache.load(state_dir, target.key)
    if der is None:
        return None
    try:
        status = verify_response(der, target.cert, target.issuer, now)
    except OCSPError:
        return None
    if status.status == "unknown":
        return None
    target.holder.set(status)
    return status


class Refresher:
    """Keeps one target's holder filled: fetch, verify, staple, schedule the next fetch."""

    def __init__(self, target: StapleTarget, clock, fetch, *, save=None, metrics=None,
                 rnd: Callable[[], float] = random.random) -> None:
        self.target = target
        self.clock = clock
        self.fetch = fetch  # (url, request_der, timeout) -> Deferred[bytes]
        self.save = save  # (key, der) -> None, or None
        self.metrics = metrics
        self.rnd = rnd
        self.failures = 0
        self.call = None
        self.inflight = None
        self.stopped = False
        self.request = build_request(target.cert, target.issuer)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), timezone.utc)

    @property
    def status(self) -> Status | None:
        return self.target.holder.status

    def adopt(self, target: StapleTarget) -> None:
        """A reload built a new holder for this certificate: keep stapling the best response in it."""
        old = self.status
        new = target.holder.status
        if old is not None and (new is None or old.this_update > new.this_update):
            target.holder.set(old)
        self.target = target

    def start(self) -> None:
        """Fetch now, or schedule the refresh of a response already held (from the cache)."""
        status = self.status
        if status is not None and status.current(self.now()):
            self._schedule(refresh_delay(status.this_update, status.next_update, self.now(), self.rnd()))
        else:
            self._schedule(0)

    def stop(self) -> None:
        """Cancel the pending fetch and the timer."""
        self.stopped = True
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        if self.inflight is not None:
            d, self.inflight = self.inflight, None
            d.cancel()

    def _schedule(self, delay: float) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = self.clock.callLater(delay, self._fetch)

    def _fetch(self) -> None:
        self.call = None
        d = self.fetch(self.target.url, self.request, FETCH_TIMEOUT)
        self.inflight = d
        d.addCallbacks(self._got, self._failed)
        d.addErrback(lambda f: log.failure("OCSP refresh of {name} failed unexpectedly", f, name=self.target.name))

    def _got(self, der: bytes) -> None:
        self.inflight = None
        if self.stopped:
            return
        t = self.target
        try:
            status = verify_response(der, t.cert, t.issuer, self.now())
        except OCSPError as e:
            return self._fail(e.reason, str(e))
        if status.status == "unknown":
            return self._fail("status_unknown", "the responder does not know this certificate")
        self.failures = 0
        t.holder.set(status)
        if status.status == "revoked":
            log.error("OCSP: certificate of {name} (serial {serial:x}) is REVOKED (since {when}); stapling that",
                      name=t.name, serial=t.cert.serial_number, when=status.revocation_time)
        else:
            log.info("OCSP: stapling a {status} response for {name} (next update {next})", status=status.status,
                     name=t.name, next=status.next_update)
        if self.save is not None:
            self.save(t.key, der)
        self._schedule(refresh_delay(status.this_update, status.next_update, self.now(), self.rnd()))

    def _failed(self, failure) -> None:
        self.inflight = None
        if self.stopped:
            return
        reason = getattr(failure.value, "reason", "unreachable")
        self._fail(reason, failure.getErrorMessage())

    def _fail(self, reason: str, detail: str) -> None:
        t = self.target
        self.failures += 1
        if self.metrics is not None:
            self.metrics.ocsp_fetch_failed(reason)
        now = self.now()
        status = self.status
        if status is not None and not status.current(now):
            t.holder.set(None)
            status = None
        expires_in = (status.expires() - now).total_seconds() if status is not None else None
        delay = retry_delay(self.failures, self.rnd(), expires_in)
        if t.must_staple and status is None:
            log.error("OCSP: {name} is Must-Staple and has no valid response to staple ({detail}); retrying in "
                      "{delay:.0f}s", name=t.name, detail=detail, delay=delay)
        else:
            log.warn("OCSP: fetching the status of {name} from {url} failed ({detail}); {kept}; retrying in "
                     "{delay:.0f}s", name=t.name, url=t.url, detail=detail, delay=delay,
                     kept="keeping the previous response" if status is not None else "no staple")
        self._schedule(delay)


class Stapling:
    """The process's refreshers, one per certificate, carried across reloads (``use(plan.staples)``)."""

    def __init__(self, clock, fetch, *, run_blocking=None, metrics=None) -> None:
        self.clock = clock
        self.fetch = fetch
        self.run_blocking = run_blocking  # (fn, *args) -> Deferred; None: write in this thread
        self.metrics = metrics
        self.refreshers: dict[str, Refresher] = {}
        self.state_dir = ""
        if metrics is not None:
            metrics.ocsp_source = self.report

    def use(self, staples: dict[str, StapleTarget], state_dir: str) -> None:
        """Serve these targets from now on: adopt running refreshers, start new ones, stop the rest."""
        self.state_dir = state_dir
        for key in list(self.refreshers):
            if key not in staples:
                self.refreshers.pop(key).stop()
        for key, target in staples.items():
            r = self.refreshers.get(key)
            if r is not None:
                r.adopt(target)
                continue
            r = Refresher(target, self.clock, self.fetch, save=self._save, metrics=self.metrics)
            self.refreshers[key] = r
            r.start()

    def stop(self) -> None:
        """Stop every refresher."""
        for r in self.refreshers.values():
            r.stop()
        self.refreshers.clear()

    def _save(self, key: str, der: bytes) -> None:
        state_dir = self.state_dir
        if self.run_blocking is None:
            try:
                cache.save(state_dir, key, der)
            except OSError as e:
                log.warn("OCSP: cannot keep the response in {dir}: {error}", dir=state_dir, error=str(e))
            return
        d = self.run_blocking(cache.save, state_dir, key, der)
        d.addErrback(lambda f: log.warn("OCSP: cannot keep the response in {dir}: {error}", dir=state_dir,
                                        error=f.getErrorMessage()))

    def report(self) -> list[tuple[str, float | None, bool]]:
        """For metrics: (certificate name, staple age in seconds or None, Must-Staple without a staple)."""
        now = self.clock.seconds()
        out = []
        for r in self.refreshers.values():
            t = r.target
            status = t.holder.status
            live = status is not None and status.expires().timestamp() > now
            age = now - status.this_update.timestamp() if live else None
            out.append((t.name, age, t.must_staple and not live))
        return out
