# -*- test-case-name: tests.test_workers_unit,tests.test_workers_e2e -*-
"""The supervisor of worker processes: spawn, watch, replace (with backoff), reload and drain them.

The supervisor owns the listening sockets (``txgate.runtime.sockets``) and hands worker ``slot``
its socket of every listener as an inherited file descriptor. It talks to a worker over two pipes:
the worker's stdin carries commands (``reload ID PATH REASON``, ``reopen ID``; end of file = the
supervisor is gone, drain and exit) and the worker's fd 3 carries answers (``ready``, ``reloaded ID
ok|failed TEXT``, ``reopened ID``). Each worker reads the configuration the supervisor validated (a pickled Config in
``state_dir/run/``), so a bad edit of gw.ini never reaches a worker, not even a replacement.

Pure decisions: ``resolve_workers`` (auto = the CPUs this process may run on) and
``RestartPolicy`` (replace at once; after 5 deaths within 60 s, back off).
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from txgate.config import Config, ConfigError
from txgate.runtime import sockets as _sockets

log = Logger()

STATUS_FD = 3
FIRST_LISTEN_FD = 4
WORKER_MODULE = "txgate.runtime.worker_main"


def resolve_workers(value: int | None, cpus=None) -> int:
    """``[gateway] workers``: N, or None (auto) = the number of CPUs this process may run on."""
    if value is not None:
        return value
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, len(cpus))


def check_single_process(config: Config) -> None:
    """``txgate.makeService()`` embeds one process: an explicit ``workers`` above 1 is a ConfigError."""
    n = config.gateway.workers
    if n is not None and n > 1:
        raise ConfigError(config.path, "gateway", "workers",
                          f"{n}: txgate.makeService() runs the gateway inside your process, one worker only; "
                          "set workers = 1 (or auto), or run `twistd txgate` for worker processes")


@dataclass
class _Rolling:
    """A reload that changed listener addresses: new workers start, then the previous ones drain."""

    old: set
    old_groups: dict
    config: Config
    done: defer.Deferred | None


@dataclass
class RestartPolicy:
    """When to replace a dead worker: at once, unless it died ``max_deaths`` times within ``window`` seconds;
    then after 1, 2, 4, ... seconds (at most ``cap``) while the deaths go on."""

    max_deaths: int = 5
    window: float = 60.0
    cap: float = 30.0
    deaths: list[float] = field(default_factory=list)

    def died(self, now: float) -> tuple[float, bool]:
        """Record a death at ``now``: (seconds to wait before the replacement, whether backoff starts now)."""
        self.deaths = [t for t in self.deaths if now - t < self.window] + [now]
        n = len(self.deaths)
        if n < self.max_deaths:
            return 0.0, False
        return min(self.cap, 2.0 ** (n - self.max_deaths)), n == self.max_deaths


def exit_text(value) -> str:
    """How a process ended, from Twisted's ProcessDone/ProcessTerminated."""
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


def set_title(title: str) -> None:
    """Set the process title when ``setproctitle`` is installed (optional)."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


class WorkerProcess(ProcessProtocol):
    """One worker process, as the supervisor sees it."""

    def __init__(self, supervisor: Supervisor, slot: int) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.pid: int | None = None
        self.ready = False
        self.ended = False
        self._buf = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != STATUS_FD:
            return
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self.supervisor.worker_said(self, line.decode("utf-8", "replace"))

    def send(self, line: str) -> None:
        if not self.ended:
            self.transport.writeToChild(0, line.encode() + b"\n")

    def kill(self, sig: str) -> None:
        if not self.ended:
            try:
                self.transport.signalProcess(sig)
            except Exception:  # already gone
                pass

    def processEnded(self, reason) -> None:
        self.ended = True
        self.supervisor.worker_ended(self, reason.value)


class Supervisor(Service):
    """N worker processes serving the listeners of ``gateway`` (a GatewayService in the supervisor role)."""

    name = "txgate-workers"
    STOP_GRACE = 10.0  # seconds past shutdown_timeout before the last workers are killed

    def __init__(self, gateway, count: int, reactor, *, mode: str = "reuseport", python: str = sys.executable,
                 env: dict | None = None) -> None:
        self.gateway = gateway
        self.count = count
        self.reactor = reactor
        self.mode = mode
        self.python = python
        self.env = env
        self.slots: list[WorkerProcess | None] = [None] * count
        self.policies = [RestartPolicy() for _ in range(count)]
        self.retiring: set[WorkerProcess] = set()
        self.groups: dict[str, _sockets.ListenGroup] = {}
        self.restarts = 0
        self.stopping = False
        self.announced = False
        self.config_path = ""
        self._config_seq = 0
        self._reload_seq = 0
        self._reloads: dict[int, tuple[defer.Deferred, set[WorkerProcess], list[str]]] = {}
        self._respawns: dict[int, object] = {}
        self._rolling: _Rolling | None = None
        self.stopped: defer.Deferred | None = None

    # -- paths ------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> str:
        return os.path.join(self.gateway.config.gateway.state_dir, "run")

    @property
    def metrics_dir(self) -> str:
        return os.path.join(self.gateway.config.gateway.state_dir, "metrics")

    def _write_config(self, config: Config) -> str:
        """Pickle the validated config for the workers (0600). The previous copy stays (a worker starting
        right now may still read it; the reload command that follows names the new one); older ones go."""
        from txgate.fileio import make_private_dir

        make_private_dir(self.run_dir)
        self._config_seq += 1
        path = os.path.join(self.run_dir, f"config-{os.getpid()}-{self._config_seq}.pickle")
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            pickle.dump(config, f)
        os.replace(path + ".tmp", path)
        previous, self.config_path = self.config_path, path
        for name in os.listdir(self.run_dir):
            old = os.path.join(self.run_dir, name)
            if name.startswith("config-") and old not in (path, previous):
                try:
                    os.unlink(old)
                except OSError:
                    pass
        return path

    # -- start ------------------------------------------------------------------------------------
    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.groups = self._open_groups(self.gateway.config, {})

    def _open_groups(self, config: Config, keep: dict[str, _sockets.ListenGroup]) -> dict:
        """Socket groups for ``config``'s listeners; groups in ``keep`` with the same bind are reused."""
        from txgate.runtime import steering

        out: dict[str, _sockets.ListenGroup] = {}
        try:
            for ln in config.listeners:
                old = keep.get(ln.name)
                if old is not None and (old.host, old.requested) == (ln.host, ln.port):
                    out[ln.name] = old
                    continue
                moved = next((g for g in keep.values() if (g.host, g.requested) == (ln.host, ln.port) and ln.port),
                             None)
                if moved is not None:
                    out[ln.name] = moved
                    continue
                try:
                    group = _sockets.open_group(ln.name, ln.host, ln.port, self.count, self.mode)
                except OSError as e:
                    where = f"[{ln.host}]:{ln.port}" if ":" in ln.host else f"{ln.host}:{ln.port}"
                    raise ConfigError(config.path, f"listener:{ln.name}", "bind",
                                      f"{where}: {e.strerror or e}") from None
                if self.mode == "reuseport" and config.gateway.worker_affinity == "client_address":
                    steering.attach(group.sockets[0], self.count)
                out[ln.name] = group
        except BaseException:
            for name, g in out.items():
                if g not in keep.values():
                    g.close()
            raise
        return out

    def startService(self) -> None:
        super().startService()
        set_title("txgate: supervisor")
        _prepare_metrics_dir(self.metrics_dir)
        self._write_config(self.gateway.config)
        for slot in range(self.count):
            self.spawn(slot)

    def _args(self, slot: int, groups: dict[str, _sockets.ListenGroup]) -> tuple[list[str], dict[int, object]]:
        args = [self.python, "-m", WORKER_MODULE, "--slot", str(slot), "--config", self.config_path]
        child_fds: dict[int, object] = {0: "w", 1: 1, 2: 2, STATUS_FD: "r"}
        fd = FIRST_LISTEN_FD
        for name, group in groups.items():
            child_fds[fd] = group.fd_for(slot)
            args += ["--listen", f"{fd}:{int(group.family)}:{name}"]
            fd += 1
        return args, child_fds

    def spawn(self, slot: int, groups: dict | None = None) -> WorkerProcess:
        """Start the worker of ``slot`` (it reads the current validated config)."""
        self._respawns.pop(slot, None)
        args, child_fds = self._args(slot, groups if groups is not None else self.groups)
        env = dict(self.env if self.env is not None else os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        proto = WorkerProcess(self, slot)
        self.reactor.spawnProcess(proto, self.python, args, env=env, path=os.getcwd(), childFDs=child_fds)
        self.slots[slot] = proto
        return proto

    # -- what workers say ---------------------------------------------------------------------------
    def worker_said(self, w: WorkerProcess, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "ready":
            w.ready = True
            if self.announced and self._rolling is None:
                log.info("worker {slot} (pid {pid}) ready", slot=w.slot, pid=w.pid)
            self._check_ready()
        elif word in ("reloaded", "reopened"):
            ident, _, text = rest.partition(" ")
            pending = self._reloads.get(int(ident))
            if pending is not None:
                pending[1].discard(w)
                if word == "reloaded" and not text.startswith("ok"):
                    pending[2].append(f"worker {w.slot}: {text}")
                self._check_reload(int(ident))

    def _check_ready(self) -> None:
        if not all(w is not None and w.ready for w in self.slots):
            return
        if not self.announced:
            self.announced = True
            self._announce(self.gateway.config, list(self.groups))
        if self._rolling is not None and self._rolling.done is not None:
            self._finish_rolling()

    def _announce(self, config: Config, names: list[str]) -> None:
        from txgate.runtime.gateway import log_listening

        for ln in config.listeners:
            if ln.name in names:
                g = self.groups[ln.name]
                log_listening(config, ln, g.sockets[0].getsockname()[0], g.port)
        pids = ", ".join(str(w.pid) for w in self.slots if w is not None)
        log.info("{n} workers serving (pids {pids})", n=self.count, pids=pids)

    def worker_ended(self, w: WorkerProcess, value) -> None:
        how = exit_text(value)
        for ident in list(self._reloads):
            if w in self._reloads[ident][1]:
                self._reloads[ident][1].discard(w)
                self._check_reload(ident)
        if w in self.retiring:
            self.retiring.discard(w)
            log.info("worker {slot} (pid {pid}, previous generation) {how}", slot=w.slot, pid=w.pid, how=how)
            self._check_rolling_done()
            self._check_stopped()
            return
        if self.slots[w.slot] is not w:
            return
        if self.stopping:
            log.info("worker {slot} (pid {pid}) {how}", slot=w.slot, pid=w.pid, how=how)
            self.slots[w.slot] = None
            self._check_stopped()
            return
        self.restarts += 1
        delay, backoff = self.policies[w.slot].died(self.reactor.seconds())
        if backoff:
            log.error("worker {slot} (pid {pid}) {how}: it died {n} times within {window:.0f} s; replacing it with "
                      "backoff (next in {delay:.0f} s, up to {cap:.0f} s)", slot=w.slot, pid=w.pid, how=how,
                      n=self.policies[w.slot].max_deaths, window=self.policies[w.slot].window, delay=delay,
                      cap=self.policies[w.slot].cap)
        else:
            log.warn("worker {slot} (pid {pid}) {how}; replacing it{later}", slot=w.slot, pid=w.pid, how=how,
                     later=f" in {delay:.0f} s" if delay else "")
        if delay:
            self._respawns[w.slot] = self.reactor.callLater(delay, self.spawn, w.slot)
        else:
            self.spawn(w.slot)

    # -- reload -------------------------------------------------------------------------------------
    def reload(self, config: Config, reason: str) -> defer.Deferred:
        """Every worker swaps to ``config`` (already validated): Deferred[list of worker failures].

        Same listener addresses: each worker reloads in place (like a single gateway). Changed
        addresses: new workers start on the new sockets, then the previous ones drain and exit."""
        if {ln.name: (ln.host, ln.port) for ln in config.listeners} != {
                n: (g.host, g.requested) for n, g in self.groups.items()}:
            return self._roll(config)
        self._write_config(config)
        return self._ask(lambda ident: f"reload {ident} {self.config_path} {reason}",
                         {w for w in self.slots if w is not None and not w.ended})

    def reopen_logs(self) -> defer.Deferred:
        """Every worker (previous generation included) reopens its access log: Deferred fired once all answered."""
        return self._ask(lambda ident: f"reopen {ident}",
                         {w for w in [*self.slots, *self.retiring] if w is not None and not w.ended})

    def _ask(self, command, live: set) -> defer.Deferred:
        """Send ``command(ident)`` to the ``live`` workers: Deferred[failures] once each answered or ended."""
        self._reload_seq += 1
        ident = self._reload_seq
        d: defer.Deferred = defer.Deferred()
        self._reloads[ident] = (d, set(live), [])
        for w in live:
            w.send(command(ident))
        self._check_reload(ident)
        return d

    def _check_reload(self, ident: int) -> None:
        d, waiting, failures = self._reloads[ident]
        if not waiting:
            del self._reloads[ident]
            d.callback(failures)

    def _roll(self, config: Config) -> defer.Deferred:
        """Start a generation of workers on the new socket layout (raises ConfigError if a bind fails)."""
        if self._rolling is not None:
            raise ConfigError(config.path, None, None, "a restart of the workers is still under way; retry")
        old_groups = self.groups
        groups = self._open_groups(config, old_groups)
        self._write_config(config)
        old = {w for w in self.slots if w is not None}
        d: defer.Deferred = defer.Deferred()
        self._rolling = _Rolling(old, old_groups, config, d)
        self.groups = groups
        for slot in range(self.count):
            pending = self._respawns.pop(slot, None)
            if pending is not None and pending.active():
                pending.cancel()
            self.spawn(slot)
        return d

    def _finish_rolling(self) -> None:
        rolling = self._rolling
        old_groups, config, d = rolling.old_groups, rolling.config, rolling.done
        rolling.done = None
        self.retiring |= {w for w in rolling.old if not w.ended}
        for w in self.retiring:
            w.kill("TERM")
        new_names = [n for n in self.groups if old_groups.get(n) is not self.groups[n]]
        for name, g in old_groups.items():
            if g not in self.groups.values():
                log.info("listener {name} stopped listening on {address} (removed or moved)", name=name,
                         address=g.where)
        self._announce(config, new_names)
        self._check_rolling_done()
        d.callback([])

    def _check_rolling_done(self) -> None:
        if self._rolling is None or self._rolling.done is not None or self.retiring:
            return
        old_groups = self._rolling.old_groups
        self._rolling = None
        for g in old_groups.values():
            if g not in self.groups.values():
                g.close()

    # -- stop ---------------------------------------------------------------------------------------
    def stopService(self):
        """SIGTERM every worker (each drains within shutdown_timeout), wait for all, close the sockets."""
        super().stopService()
        self.stopping = True
        for call in self._respawns.values():
            if call.active():
                call.cancel()
        self._respawns.clear()
        live = [w for w in [*self.slots, *self.retiring] if w is not None and not w.ended]
        self.stopped = defer.Deferred()
        for w in live:
            w.kill("TERM")
        grace = self.gateway.config.gateway.shutdown_timeout + self.STOP_GRACE
        killer = self.reactor.callLater(grace, self._kill_all)
        self._check_stopped()

        def done(result):
            if killer.active():
                killer.cancel()
            for g in self.groups.values():
                g.close()
            if self._rolling is not None:
                for g in self._rolling.old_groups.values():
                    g.close()
            return result

        return self.stopped.addBoth(done)

    def _kill_all(self) -> None:
        for w in [*self.slots, *self.retiring]:
            if w is not None and not w.ended:
                log.warn("worker {slot} (pid {pid}) did not stop in time: killing it", slot=w.slot, pid=w.pid)
                w.kill("KILL")

    def _check_stopped(self) -> None:
        if self.stopped is None or self.stopped.called:
            return
        if all(w is None or w.ended for w in [*self.slots, *self.retiring]):
            self.stopped.callback(None)


def _prepare_metrics_dir(path: str) -> None:
    """PROMETHEUS_MULTIPROC_DIR for this run: created 0700, emptied of an earlier run's files."""
    from txgate.fileio import make_private_dir

    make_private_dir(path)
    for name in os.listdir(path):
        if name.endswith(".db"):
            try:
                os.unlink(os.path.join(path, name))
            except OSError:
                pass
