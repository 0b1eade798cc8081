# -*- test-case-name: tests.test_ocsp_unit -*-
"""When to fetch an OCSP response again: half the validity window with jitter, backoff after failures."""
from __future__ import annotations

from datetime import datetime

#: Never refresh sooner than this after a good fetch (a responder with a tiny window).
MIN_REFRESH = 60.0
#: A response without nextUpdate is fetched again after this long.
NO_NEXT_UPDATE_REFRESH = 1800.0
#: Retry delays after failures: first, factor, cap (seconds).
RETRY_FIRST = 10.0
RETRY_FACTOR = 2.0
RETRY_MAX = 3600.0
#: Jitter: +- this fraction of the delay, so many certificates do not hit a responder at once.
JITTER = 0.1


def refresh_delay(this_update: datetime, next_update: datetime | None, now: datetime, rnd: float) -> float:
    """Seconds from ``now`` until the next fetch after a good response; ``rnd`` is uniform in [0, 1)."""
    if next_update is None:
        base = NO_NEXT_UPDATE_REFRESH
        return max(MIN_REFRESH, base * (1 + JITTER * (2 * rnd - 1)))
    window = (next_update - this_update).total_seconds()
    at = this_update.timestamp() + window / 2 + window * JITTER * (2 * rnd - 1)
    delay = at - now.timestamp()
    # Past the half-way point already (e.g. a cached response at startup): soon, but not in a loop.
    left = (next_update - now).total_seconds()
    return max(min(MIN_REFRESH, max(left / 2, 1.0)), delay)


def retry_delay(failures: int, rnd: float, expires_in: float | None = None) -> float:
    """Seconds until the next attempt after ``failures`` consecutive failures (1 = the first).

    With a still-current response that expires in ``expires_in`` seconds, never wait past a quarter
    of what is left (so a flapping responder does not let a good staple lapse)."""
    delay = min(RETRY_MAX, RETRY_FIRST * RETRY_FACTOR ** max(0, failures - 1))
    if expires_in is not None and expires_in > 0:
        delay = min(delay, max(RETRY_FIRST, expires_in / 4))
    return delay * (1 + JITTER * (2 * rnd - 1))
