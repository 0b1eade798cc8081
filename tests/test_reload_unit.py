"""Reload decisions without sockets: generation swap, failures, coalescing, store-change debounce, pool retirement."""
from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from txgate.config import ConfigError, parse_text
from txgate.service import GatewayService, ServiceFacade, prepare

BASE = "[admin]\nbind = off\n[gateway]\naccess_log = off\n"


def config(certs, body: str = ""):
    cert, key = certs.leaf("unit-reload", ["localhost"])
    return parse_text(BASE + f"[listener:main]\nbind = 127.0.0.1:0\ncertificate = {cert} {key}\n"
                      "[api:echo]\npath = /echo\nupstream = builtin:echo\n" + body, "gw.ini")


class Harness:
    def __init__(self, certs) -> None:
        self.certs = certs
        self.reactor = MemoryReactorClock()
        self.next = config(certs)
        self.loads = 0
        svc = GatewayService(prepare(self.next, check_ports=False, create_state=False), self.reactor,
                             loader=self.load)
        svc.run_blocking = lambda fn, *a: defer.maybeDeferred(fn, *a)
        self.svc = svc
        svc.startService()

    def load(self):
        self.loads += 1
        if isinstance(self.next, Exception):
            raise self.next
        return self.next

    def result(self, d):
        out = []
        d.addBoth(out.append)
        assert out, "reload did not finish"
        return out[0]


@pytest.fixture
def h(certs):
    harness = Harness(certs)
    yield harness
    harness.svc.stopService()


def test_reload_swaps_the_generation_behind_the_same_port(h):
    port, front = h.svc.ports["main"], h.svc.fronts["main"]
    old_top = front.current
    h.next = config(h.certs, "[api:more]\npath = /more\nupstream = builtin:echo\n")
    result = h.result(h.svc.reload("test"))
    assert (result.ok, result.message) == (True, "1 listeners, 2 APIs")
    assert h.svc.ports["main"] is port and h.svc.fronts["main"] is front
    assert front.current is not old_top
    assert front.current.wrappedFactory is h.svc.current.factories["main"]
    assert h.svc.current.factories["main"].dispatcher.router.match("localhost", "/more/x") is not None
    assert len(h.reactor.tcpServers) == 1  # no rebind


def test_failed_reload_keeps_everything(h):
    top, prepared = h.svc.fronts["main"].current, h.svc.plan
    h.next = ConfigError("gw.ini", "api:echo", "colour", "unknown key")
    result = h.result(h.svc.reload("test"))
    assert (result.ok, result.message) == (False, "gw.ini: [api:echo] colour: unknown key")
    assert h.svc.fronts["main"].current is top and h.svc.plan is prepared


def test_reloads_asked_for_while_one_runs_share_one_more_run(h):
    gate = defer.Deferred()
    h.svc.run_blocking = lambda fn, *a: gate.addCallback(lambda _: fn(*a))
    first = h.svc.reload("a")
    second, third = h.svc.reload("b"), h.svc.reload("c")
    assert h.loads == 0
    h.svc.run_blocking = lambda fn, *a: defer.maybeDeferred(fn, *a)
    gate.callback(None)
    assert h.result(first).ok and h.result(second).ok and h.result(third).ok
    assert h.loads == 2


def test_store_changes_are_debounced_and_filtered(h):
    reasons = []
    h.svc.reload = lambda reason: reasons.append(reason) or defer.succeed(None)
    h.svc.config = parse_text(BASE + "[listener:main]\nbind = 127.0.0.1:0\ncertificate = store:web\n", "gw.ini")
    h.svc._store_changed("other")
    h.reactor.advance(1)
    assert reasons == []
    for _ in range(3):
        h.svc._store_changed("web")
        h.reactor.advance(0.1)
    assert reasons == []
    h.reactor.advance(0.2)
    assert reasons == ["store change: web"]
    h.svc._store_changed(None)
    h.reactor.advance(0.25)
    assert reasons == ["store change: web", "store change: resync"]


class FakePool:
    def __init__(self) -> None:
        self.closed = False
        self.open_connections = 3

    def close(self) -> None:
        self.closed = True


class FakeUpstream:
    def __init__(self) -> None:
        self.pools = [FakePool()]

    def close(self) -> None:
        for p in self.pools:
            p.close()


def test_old_upstream_pools_close_when_their_connections_are_gone(h):
    old = h.svc.current
    up = FakeUpstream()
    old.upstreams["echo"] = up
    conn = object()
    h.svc.connections["main"].add(conn)
    assert h.result(h.svc.reload("test")).ok
    assert h.svc.retiring == [old] and not up.pools[0].closed
    assert ServiceFacade(h.svc).upstream_connections() == {"echo": 3}
    h.reactor.advance(h.svc.RETIRE_CHECK)
    assert not up.pools[0].closed
    h.svc.connections["main"].discard(conn)
    h.reactor.advance(h.svc.RETIRE_CHECK)
    assert up.pools[0].closed and h.svc.retiring == []
