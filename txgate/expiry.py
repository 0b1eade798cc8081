# -*- test-case-name: tests.test_expiry -*-
"""Expiry monitoring: every certificate the gateway holds, checked on a timer, logged without flooding.

Contract (for ``txgate.runtime``)::

    monitor = ExpiryMonitor(facade, reactor, warning_days=config.gateway.expiry_warning_days)
    monitor.setServiceParent(top)   # a twisted Service: checks at start, then every ``interval`` seconds

Each check asks ``facade.held_certificates()`` (every role: listener, sni, client_allowlist,
upstream_client, ca, store) and logs, per certificate and role:

- a warning once it is within ``warning_days`` of its notAfter (code ``certificate_expiring``),
- an error once it has expired (code ``certificate_expired``),

each at most once per ``cooldown`` seconds for the same (fingerprint, role, level). A renewed
certificate has a new fingerprint, so it starts with a clean slate; the cooldown memory of
certificates no longer held is dropped at each check.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from twisted.application.service import Service
from twisted.internet import task
from twisted.logger import Logger

from txgate.admin.facade import HeldCertificate

log = Logger()

WARNING = "warning"
ERROR = "error"
DAY = 86400.0


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def level_of(held: HeldCertificate, now: float, warning_seconds: float) -> str | None:
    """``ERROR`` if expired at ``now`` (Unix time), ``WARNING`` within ``warning_seconds``, else None."""
    left = held.not_after.timestamp() - now
    if left <= 0:
        return ERROR
    if left <= warning_seconds:
        return WARNING
    return None


class ExpiryMonitor(Service):
    """Checks the held certificates every ``interval`` seconds; ``clock`` is a reactor (IReactorTime)."""

    name = "txgate-expiry"

    def __init__(
        self,
        facade: Any,
        clock: Any,
        warning_days: float = 30,
        interval: float = 3600,
        cooldown: float = DAY,
    ) -> None:
        if interval <= 0 or cooldown < 0 or warning_days < 0:
            raise ValueError("interval must be > 0, cooldown and warning_days >= 0")
        self.facade = facade
        self.clock = clock
        self.warning_seconds = warning_days * DAY
        self.interval = interval
        self.cooldown = cooldown
        # (fingerprint, role, level) -> when it was last logged (clock seconds)
        self.last_logged: dict[tuple[str, str, str], float] = {}
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("expiry monitor stopped", failure=f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> list[tuple[HeldCertificate, str]]:
        """One pass: log what is due; returns the (certificate, level) pairs logged this time."""
        now = self.clock.seconds()
        try:
            held = list(self.facade.held_certificates())
        except Exception:
            log.failure("expiry monitor: listing the held certificates failed")
            return []
        logged: list[tuple[HeldCertificate, str]] = []
        current: set[tuple[str, str, str]] = set()
        for cert in held:
            level = level_of(cert, now, self.warning_seconds)
            if level is None:
                continue
            key = (cert.fingerprint, cert.role, level)
            current.add(key)
            last = self.last_logged.get(key)
            if last is not None and now - last < self.cooldown:
                continue
            self.last_logged[key] = now
            self._log(cert, level, now)
            logged.append((cert, level))
        # Forget what is no longer held (or has moved from warning to error).
        for key in [k for k in self.last_logged if k not in current]:
            del self.last_logged[key]
        return logged

    def _log(self, cert: HeldCertificate, level: str, now: float) -> None:
        if level == ERROR:
            log.error(
                "certificate_expired: {name} ({role}) expired on {not_after}: subject '{subject}' sha256 {fingerprint}",
                code="certificate_expired", name=cert.name, role=cert.role, not_after=_iso(cert.not_after),
                subject=cert.subject, fingerprint=cert.fingerprint,
            )
        else:
            days = (cert.not_after.timestamp() - now) / DAY
            log.warn(
                "certificate_expiring: {name} ({role}) expires on {not_after} (in {days:.1f} days): "
                "subject '{subject}' sha256 {fingerprint}",
                code="certificate_expiring", name=cert.name, role=cert.role, not_after=_iso(cert.not_after),
                days=days, subject=cert.subject, fingerprint=cert.fingerprint,
            )
