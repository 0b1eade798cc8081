"""When to order a certificate: renewal time from the certificate's validity (or ARI), backoff after failures."""
# -*- test-case-name: tests.test_acme_unit -*-
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

# Re-check every certificate at least this often (jittered), whatever its renewal time.
MAX_CHECK = 600.0
BACKOFF_BASE = 60.0
BACKOFF_CAP = 4 * 3600.0


@dataclass(frozen=True)
class Decision:
    """Whether to order now (``reason``: missing, names, expired, ratio, ari) or when to look again."""

    order: bool
    reason: str
    renew_at: datetime | None = None


def renewal_at(not_before: datetime, not_after: datetime, ratio: float) -> datetime:
    """When ``ratio`` of the lifetime is left."""
    return not_after - (not_after - not_before) * ratio


def decide(now: datetime, names: tuple[str, ...], current, ratio: float, ari_at: datetime | None = None) -> Decision:
    """Order now or not, for ``names`` and the stored certificate ``current`` (CertInfo-like or None).

    ``ari_at``: the time inside the CA's renewalInfo window (RFC 9773) chosen for it; it wins
    over the ratio when the CA offers it.
    """
    if current is None:
        return Decision(True, "missing")
    if not set(names) <= {s.lower() for s in current.sans}:
        return Decision(True, "names")
    if now >= current.not_after:
        return Decision(True, "expired")
    if ari_at is not None:
        return Decision(now >= ari_at, "ari", ari_at)
    at = renewal_at(current.not_before, current.not_after, ratio)
    return Decision(now >= at, "ratio", at)


def next_check(now: datetime, renew_at: datetime | None, *, max_check: float = MAX_CHECK,
               rng: random.Random | None = None) -> float:
    """Seconds until the next look: the renewal time, but at most ``max_check`` (minus up to 10% jitter)."""
    rng = rng or random
    cap = max_check * (1 - 0.1 * rng.random())
    if renew_at is None:
        return cap
    return max(0.0, min(cap, (renew_at - now).total_seconds()))


def backoff(failures: int, retry_after: float | None = None, *, base: float = BACKOFF_BASE,
            cap: float = BACKOFF_CAP, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: exponential with jitter, capped;
    a server's Retry-After is honoured (never less)."""
    rng = rng or random
    wait = min(cap, base * (2 ** max(0, failures - 1)))
    wait *= 1 - 0.2 * rng.random()
    if retry_after is not None:
        wait = max(wait, min(retry_after, 24 * 3600.0))
    return wait


def ari_choice(start: datetime, end: datetime, rng: random.Random | None = None) -> datetime:
    """A uniformly random time in the CA's suggested window (RFC 9773 section 4.2)."""
    rng = rng or random
    if end <= start:
        return start
    return start + timedelta(seconds=rng.random() * (end - start).total_seconds())
