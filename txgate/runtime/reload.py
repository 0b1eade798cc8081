# -*- test-case-name: tests.test_reload_unit,tests.test_runtime_unit,tests.test_reload_e2e -*-
"""Reload mechanics: coalescing requests, which ports a swap keeps, opens, adopts or closes, draining
connections whose client-certificate policy changed, retiring old generations, debouncing store changes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from txgate.config import Config
from txgate.plan.clientauth import client_auth_signature
from txgate.plan.store import ref_names
from txgate.runtime.generation import Generation

# The namespace these log lines had before the plan/runtime split (users grep for it).
log = Logger(namespace="txgate.service")


class Coalescer:
    """Runs ``run(reason) -> Deferred`` one at a time: one asked for while another runs is queued,
    and the ones asked for meanwhile share it (they all get its result)."""

    def __init__(self, run: Callable[[str], defer.Deferred]) -> None:
        self._run = run
        self._running = False
        self._queued: tuple[list, str] | None = None

    def __call__(self, reason: str) -> defer.Deferred:
        if self._running:
            d = defer.Deferred()
            if self._queued is None:
                self._queued = ([d], reason)
            else:
                self._queued[0].append(d)
            return d
        self._running = True
        d = self._run(reason)

        def done(result):
            self._running = False
            queued, self._queued = self._queued, None
            if queued is not None:
                waiters, why = queued

                def fire(res):
                    for w in waiters:
                        w.callback(res)

                self(why).addCallback(fire)
            return result

        return d.addBoth(done)


def reload_notes(new: Config, running: Config) -> list[str]:
    """Warnings for changes a reload does not apply (the running store and admin API are kept)."""
    notes = []
    gw_new, gw_old = new.gateway, running.gateway
    if (gw_new.store, gw_new.store_secret_file) != (gw_old.store, gw_old.store_secret_file):
        notes.append(f"{new.path}: [gateway] store: store and store_secret_file changes take effect at the "
                     "next restart (the running store is kept)")
    if new.admin != running.admin:
        notes.append(f"{new.path}: [admin]: changes take effect at the next restart")
    if (new.kubernetes.kubeconfig, new.kubernetes.context) != (running.kubernetes.kubeconfig,
                                                               running.kubernetes.context):
        notes.append(f"{new.path}: [kubernetes] kubeconfig, context: changes take effect at the next restart "
                     "(the running API server connection is kept)")
    if (gw_new.workers, gw_new.worker_affinity) != (gw_old.workers, gw_old.worker_affinity):
        notes.append(f"{new.path}: [gateway] workers: workers and worker_affinity changes take effect at the "
                     "next restart")
    return notes


@dataclass
class PortMoves:
    """What a swap does with the listening ports (by listener name)."""

    keep: set = field(default_factory=set)  # same name, same bind: the port stays
    adopted: dict = field(default_factory=dict)  # new name -> old name whose bind it takes over
    to_open: list = field(default_factory=list)  # new binds
    closed: list = field(default_factory=list)  # ports nobody keeps or adopts


def plan_port_moves(binds: dict[str, tuple[str, int]], listeners) -> PortMoves:
    """Decide, from the open ports' binds and the new listeners, which ports stay, move, open or close.

    A listener whose bind is gone (removed or renamed) frees its port only after the swap; a new
    listener on exactly that address takes over the open socket instead of rebinding.
    """
    new = {ln.name: ln for ln in listeners}
    moves = PortMoves()
    moves.keep = {n for n in binds if n in new and binds[n] == (new[n].host, new[n].port)}
    freed = {bind: n for n, bind in binds.items() if n not in new}
    for name, ln in new.items():
        if name in moves.keep:
            continue
        old_name = freed.get((ln.host, ln.port))
        if old_name is not None and ln.port:
            moves.adopted[name] = old_name
            continue
        moves.to_open.append(name)
    moves.closed = [n for n in binds if n not in moves.keep and n not in moves.adopted.values()]
    return moves


def drain_changed_client_auth(connections: dict[str, set], old_cfg: Config, new_cfg: Config,
                              old_stamps: dict | None = None, new_stamps: dict | None = None) -> None:
    """Connections whose client-certificate policy changed are drained (graceful close).

    Established connections keep the generation they started with — except where that would keep
    a removed or revoked client in: when a listener's client verification or an allowlist of one
    of its APIs changed (config or the files behind it: CAs, CRLs, allowlist files), its open
    connections finish their requests and close (h2: GOAWAY), so clients reconnect under the
    new policy. ``old_stamps``/``new_stamps`` are the plans' ``ca_stamps`` (CA bundles from Secrets)."""
    for ln in new_cfg.listeners:
        conns = connections.get(ln.name)
        if not conns:
            continue
        old_sig = client_auth_signature(old_cfg, ln.name, old_stamps)
        if old_sig == client_auth_signature(new_cfg, ln.name, new_stamps):
            continue
        log.info("listener {name}: client certificate policy changed; draining {n} open connections",
                 name=ln.name, n=len(conns))
        for conn in list(conns):
            try:
                conn.shutdown()
            except Exception:
                log.failure("draining a connection failed")


class Retirer:
    """Closes a replaced generation's upstream pools (and its own access log) once no connection uses it."""

    def __init__(self, clock, interval: float, connections: dict[str, set],
                 current: Callable[[], Generation | None]) -> None:
        self.clock = clock
        self.interval = interval
        self.connections = connections
        self.current = current
        self.retiring: list[Generation] = []
        self._loop: task.LoopingCall | None = None

    def retire(self, gen: Generation) -> None:
        """Watch ``gen`` until the connections open now are gone, then close what it alone holds."""
        gen.old_connections = {c for conns in self.connections.values() for c in conns}
        self.retiring.append(gen)
        self.check()
        if self.retiring and (self._loop is None or not self._loop.running):
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def check(self) -> None:
        """Close the retiring generations no live connection uses any more."""
        live = set()
        for conns in self.connections.values():
            live |= conns
        for gen in list(self.retiring):
            gen.old_connections &= live
            if gen.old_connections:
                continue
            self.retiring.remove(gen)
            gen.close_upstreams()
            in_use = {id(g.access_log) for g in [self.current(), *self.retiring] if g is not None}
            if id(gen.access_log) not in in_use:
                gen.access_log.flush()
                gen.access_log.close()
        if not self.retiring:
            self.stop()

    def stop(self) -> None:
        """Stop watching (shutdown closes every generation itself)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()


def store_change_matters(name: str | None, config: Config, store_ids: dict) -> bool:
    """A store change (None: anything may have changed) concerns the running config when it uses the entry."""
    return name is None or name in ref_names(config.store_refs()) or name in set(store_ids.values())


class Debounce:
    """Collects names and calls ``fire(names)`` once they stop coming for ``delay`` seconds."""

    def __init__(self, clock, delay: float, fire: Callable[[set], None]) -> None:
        self.clock = clock
        self.delay = delay
        self.fire = fire
        self._names: set = set()
        self._call = None

    def add(self, name) -> None:
        """One more name; (re)starts the quiet period."""
        self._names.add(name)
        if self._call is not None and self._call.active():
            self._call.reset(self.delay)
        else:
            self._call = self.clock.callLater(self.delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        names, self._names = self._names, set()
        self.fire(names)

    def cancel(self) -> None:
        """Drop the pending call (the names collected so far are not fired)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def store_change_reason(names: set) -> str:
    """The reload reason of debounced store changes: the entry names, or 'resync' (None: anything)."""
    what = "resync" if None in names else ", ".join(sorted(n for n in names if n))
    return f"store change: {what}"
