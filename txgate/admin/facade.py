# -*- test-case-name: tests.test_admin -*-
"""What the admin API and the expiry monitor may ask of the running gateway (and nothing more).

`txgate.runtime.facade.ServiceFacade` implements this; `txgate.admin` and `txgate.metrics` only use it, so the admin
room never imports the service's internals.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class HeldCertificate:
    """One certificate the gateway holds, in one role."""

    name: str          # e.g. "listener:main", "listener:main sni:api.example.com", "store:web", "local CA"
    role: str          # listener | sni | client_allowlist | upstream_client | ca | store
    fingerprint: str   # hex SHA-256 of the DER
    not_after: datetime  # aware, UTC
    subject: str


@dataclass(frozen=True)
class TargetState:
    """One upstream target of one API, as the status page shows it."""

    api: str
    route: str          # the API's hosts and path prefix
    target: str         # the target URL, or builtin:echo
    connections: int | None  # open connections in this process (None: builtin, or not known here)
    state: str          # "up" (answered last), "failing" (failed last), "unused", "builtin"
    detail: str = ""    # the last failure's code


def target_state(last_success: float | None, last_failure: tuple[str, float] | None) -> tuple[str, str]:
    """(state, detail) of a target from when it last answered and its last failure (code, when)."""
    if last_failure is not None and (last_success is None or last_failure[1] >= last_success):
        return "failing", last_failure[0]
    if last_success is not None:
        return "up", ""
    return "unused", ""


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    message: str       # why it failed (config error line) or a short summary of what changed


class GatewayFacade(Protocol):
    """The running gateway, as the admin API sees it."""

    store: object | None  # txgate.store.DeferredStore, or None when no store is configured

    def reload(self, reason: str):
        """Rebuild from the config file and the store; Deferred[ReloadResult]. A failure keeps the running config."""

    def certificate_usage(self) -> dict[str, list[str]]:
        """Store references in use -> who uses them (e.g. {"web": ["listener:main"], "<id>": [...]})."""

    def held_certificates(self) -> list[HeldCertificate]:
        """Every certificate held, in every role (for expiry monitoring and metrics)."""

    def upstream_connections(self) -> dict[str, int]:
        """Open upstream connections per API (for the metrics gauge)."""

    def listeners(self) -> list[tuple[str, str, bool]]:
        """(name, address, TLS?) of every listener (the status page)."""

    def upstream_targets(self) -> list[TargetState]:
        """Every API's targets and their state (the status page)."""

    def acme_status(self) -> list[dict]:
        """Every ACME certificate's state (GET /acme; optional: [] when absent)."""
