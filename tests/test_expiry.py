"""ExpiryMonitor on a MemoryReactorClock: warning, error, cooldown, no flood.

`FakeFacade` stands in for the service facade (the real `held_certificates` is covered end to end).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent

import txgate.expiry as expiry
from txgate.admin.facade import HeldCertificate
from txgate.expiry import ERROR, WARNING, ExpiryMonitor

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
HOUR, DAY = 3600, 86400


class FakeFacade:
    """Stand-in for the service facade: a settable list of held certificates."""

    def __init__(self, held=()) -> None:
        self.held = list(held)
        self.calls = 0
        self.fail = False

    def held_certificates(self):
        self.calls += 1
        if self.fail:
            raise RuntimeError("facade broken")
        return self.held


def cert(name: str, days_left: float, role: str = "listener", fp: str | None = None) -> HeldCertificate:
    return HeldCertificate(name=name, role=role, fingerprint=fp or (name.encode().hex() * 8)[:64],
                           not_after=T0 + timedelta(days=days_left), subject=f"CN={name}")


@pytest.fixture
def events(monkeypatch):
    got: list[dict] = []
    monkeypatch.setattr(expiry, "log", Logger(namespace="txgate.expiry", observer=got.append))
    return got


@pytest.fixture
def clock():
    c = MemoryReactorClock()
    c.advance(T0.timestamp())
    return c


def lines(events) -> list[tuple[str, str, str]]:
    return [(e["log_level"].name, e.get("code", ""), e.get("name", "")) for e in events]


def test_warns_within_warning_days_and_errors_once_expired(clock, events):
    facade = FakeFacade([cert("fresh", 90), cert("soon", 10), cert("gone", -2)])
    m = ExpiryMonitor(facade, clock, warning_days=30)
    m.startService()
    assert lines(events) == [("warn", "certificate_expiring", "soon"), ("error", "certificate_expired", "gone")]
    text = [formatEvent(e) for e in events]
    assert "soon (listener) expires on 2026-06-11T00:00:00Z (in 10.0 days)" in text[0]
    assert "gone (listener) expired on 2026-05-30T00:00:00Z" in text[1]
    assert "sha256 " + facade.held[2].fingerprint in text[1]
    m.stopService()


def test_no_flood_within_the_cooldown_then_again_after_it(clock, events):
    facade = FakeFacade([cert("soon", 10), cert("gone", -2)])
    m = ExpiryMonitor(facade, clock, warning_days=30, interval=HOUR, cooldown=DAY)
    m.startService()
    assert len(events) == 2
    for _ in range(23):
        clock.advance(HOUR)
    assert facade.calls == 24
    assert len(events) == 2  # 23 more checks, nothing new
    clock.advance(HOUR)  # 24 h after the first lines
    assert lines(events)[2:] == [("warn", "certificate_expiring", "soon"), ("error", "certificate_expired", "gone")]
    m.stopService()
    clock.advance(10 * DAY)
    assert facade.calls == 25  # stopped: no more checks


def test_warning_turns_into_an_error_at_expiry_without_waiting_for_the_cooldown(clock, events):
    facade = FakeFacade([cert("edge", 0.5)])
    m = ExpiryMonitor(facade, clock, interval=HOUR, cooldown=DAY)
    m.startService()
    assert lines(events) == [("warn", "certificate_expiring", "edge")]
    for _ in range(13):
        clock.advance(HOUR)
    assert lines(events) == [("warn", "certificate_expiring", "edge"), ("error", "certificate_expired", "edge")]


def test_cooldown_is_per_fingerprint_role_and_level(clock, events):
    same_fp = "ab" * 32
    facade = FakeFacade([cert("main", 5, "listener", same_fp), cert("main sni", 5, "sni", same_fp)])
    m = ExpiryMonitor(facade, clock, interval=HOUR)
    m.check()
    assert [e["role"] for e in events] == ["listener", "sni"]
    # A renewal (new fingerprint) is judged on its own at once.
    facade.held = [cert("main", 3, "listener", "cd" * 32)]
    clock.advance(HOUR)
    m.check()
    assert len(events) == 3 and events[2]["fingerprint"] == "cd" * 32


def test_a_certificate_no_longer_held_is_forgotten(clock, events):
    c = cert("flappy", 5)
    facade = FakeFacade([c])
    m = ExpiryMonitor(facade, clock)
    m.check()
    facade.held = []
    m.check()
    assert m.last_logged == {}
    facade.held = [c]
    m.check()
    assert len(events) == 2


def test_check_returns_what_it_logged(clock, events):
    soon = cert("soon", 1)
    m = ExpiryMonitor(FakeFacade([soon, cert("ok", 365)]), clock)
    assert m.check() == [(soon, WARNING)]
    assert m.check() == []
    m2 = ExpiryMonitor(FakeFacade([cert("x", -1)]), clock)
    assert [lvl for _, lvl in m2.check()] == [ERROR]


def test_a_failing_facade_is_logged_and_the_timer_keeps_running(clock, events):
    facade = FakeFacade([cert("soon", 1)])
    facade.fail = True
    m = ExpiryMonitor(facade, clock, interval=HOUR)
    m.startService()
    assert events[0]["log_level"].name == "critical"  # log.failure
    facade.fail = False
    clock.advance(HOUR)
    assert lines(events)[-1] == ("warn", "certificate_expiring", "soon")
    m.stopService()


def test_warning_days_zero_only_errors(clock, events):
    m = ExpiryMonitor(FakeFacade([cert("soon", 1), cert("gone", -1)]), clock, warning_days=0)
    m.check()
    assert lines(events) == [("error", "certificate_expired", "gone")]


@pytest.mark.parametrize("kw", [{"interval": 0}, {"cooldown": -1}, {"warning_days": -1}])
def test_bad_settings_are_refused(clock, kw):
    with pytest.raises(ValueError):
        ExpiryMonitor(FakeFacade(), clock, **kw)
