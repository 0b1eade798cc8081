# -*- test-case-name: tests.test_reload_unit,tests.test_shutdown_e2e,tests.test_reload_e2e -*-
"""GatewayService: the running gateway's lifetime: listen, swap generations in on reload, shut down."""
from __future__ import annotations

from datetime import datetime, timezone

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from txgate.admin.facade import ReloadResult
from txgate.config import ConfigError, ListenerConfig
from txgate.config.hostnames import host_port
from txgate.directwrite import lean_accepts
from txgate.plan import Plan, prepare
from txgate.runtime import eventloop
from txgate.runtime.accept import lean_listen
from txgate.runtime.generation import Generation, build_generation
from txgate.runtime.reload import (Coalescer, Debounce, Retirer, drain_changed_client_auth, plan_port_moves,
                                   reload_notes, store_change_matters, store_change_reason)

# The namespace these log lines had before the plan/runtime split (users grep for it).
log = Logger(namespace="txgate.service")


def log_listening(config, ln: ListenerConfig, host: str, port: int) -> None:
    """The line announcing a listener (tests and tools read its port from it)."""
    host = f"[{host}]" if ":" in host else host
    apis = config.apis_for(ln.name)
    log.info("listener {name} on {scheme}://{host}:{port} ({apis})", name=ln.name,
             scheme="https" if ln.tls else "http", host=host, port=port,
             apis=", ".join(a.name for a in apis) or "no APIs")


class Front(Factory):
    """The factory a listening port keeps across reloads: each connection goes to the current generation."""

    noisy = False

    def __init__(self, name: str, current) -> None:
        self.name = name
        self.current = current

    @property
    def current(self):
        return self._current

    @current.setter
    def current(self, top) -> None:
        # Each connection goes straight to the generation's factory (no call through this one).
        # None from it when the listener refuses the connection (max_connections): the port closes the socket.
        self._current = top
        self.buildProtocol = top.buildProtocol

    def logPrefix(self) -> str:
        return f"txgate listener {self.name}"


class GatewayService(Service):
    """Listeners, dispatchers and upstream pools built from one Plan, rebuilt on reload.

    A reload (SIGHUP, the facade's ``reload``, a store change) re-reads the config file and the store,
    prepares everything off the reactor thread, and swaps a new generation of runtime objects in for
    new connections. Listening sockets stay open unless their bind changed; established connections
    keep the generation they started with, whose upstream pools close once the last of them is gone.
    """

    name = "txgate"
    RETIRE_CHECK = 1.0
    DEBOUNCE = 0.2

    def __init__(self, plan: Plan, reactor=None, *, loader=None, store=None, metrics=None,
                 role: str = "single", listen_fds: dict | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.plan = plan
        self.config = plan.config
        # () -> Config: re-reads the config file on reload (default: reuse the startup config).
        self.loader = loader or (lambda: self.config)
        self.store = store  # blocking txgate.store.Store, or None
        self.deferred_store = None
        self.metrics = metrics
        self.ports: dict[str, object] = {}
        self.fronts: dict[str, Front] = {}
        self.binds: dict[str, tuple[str, int]] = {}
        self.connections: dict[str, set] = {}  # listener name -> open Negotiators, shared by generations
        self.current: Generation | None = None
        self.retirer = Retirer(reactor, self.RETIRE_CHECK, self.connections, lambda: self.current)
        self.retiring = self.retirer.retiring  # the replaced generations still in use
        self._flusher = None
        self._sub = None
        self._store_debounce = Debounce(reactor, self.DEBOUNCE, self._store_reload)
        self._coalesce = Coalescer(self._reload)
        self.store_listing: list = []  # CertInfo of the store entries (refreshed on changes)
        # Runs blocking work (file and store reads, context building) off the reactor thread.
        self.run_blocking = self._in_thread
        from txgate.ocsp.service import OCSPService

        # OCSP staple refreshers and the client-status cache: one per process, carried across reloads.
        self.ocsp = OCSPService(reactor, run_blocking=lambda fn, *a: self.run_blocking(fn, *a), metrics=metrics)
        # Worker processes (txgate.runtime.workers): "single" listens and serves; a "supervisor" serves no
        # traffic (no generation, no ports); a "worker" adopts the supervisor's sockets (listener name ->
        # (fd, family)) and leaves store watching to the supervisor.
        self.role = role
        self.listen_fds = listen_fds or {}
        from txgate.acme.challenges import ChallengeBoard
        from txgate.acme.shelves import open_shelf

        # Pending ACME challenges, answered by every generation's listeners (see txgate.acme): kept where
        # the process that answers sees them (the supervisor orders, its workers answer; a fleet shares Redis).
        self.challenges = ChallengeBoard(open_shelf(role, self.config.gateway.state_dir, store))
        # Called with the new Config after each successful reload (e.g. the ACME service follows it).
        self.on_reload: list = []

    def _in_thread(self, fn, *args):
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def _build(self, plan: Plan) -> Generation:
        return build_generation(plan, self.reactor, connections=self.connections, metrics=self.metrics,
                                previous=self.current, challenges=self.challenges, ocsp=self.ocsp)

    def _listen(self, ln: ListenerConfig, front: Front):
        """Listen on a listener's bind with ``front``; a failure is a ConfigError naming its bind.

        Accepted connections get txgate's TCP transport class (direct writes, lean read dispatch), and
        the port txgate's accept loop (`txgate.runtime.accept`) where the reactor has the lean dispatch."""
        port = self._open_port(ln, front)
        lean_accepts(port)
        lean_listen(port)
        return port

    def _open_port(self, ln: ListenerConfig, front: Front):
        from twisted.internet.error import CannotListenError

        if self.role == "worker":
            from txgate.runtime.sockets import adopt

            if ln.name not in self.listen_fds:
                raise ConfigError(self.config.path, f"listener:{ln.name}", "bind",
                                  "a new listener address needs a worker restart (the supervisor owns the sockets)")
            return adopt(self.reactor, *self.listen_fds[ln.name], front)
        try:
            return self.reactor.listenTCP(ln.port, front, backlog=1024, interface=ln.host)
        except CannotListenError as e:
            err = getattr(e, "socketError", None)
            why = getattr(err, "strerror", None) or str(err or e)
            raise ConfigError(self.config.path, f"listener:{ln.name}", "bind",
                              f"{host_port(ln.host, ln.port)}: {why}") from None

    def _log_listening(self, gen: Generation, ln: ListenerConfig) -> None:
        if self.role == "worker":
            return  # the supervisor owns the sockets and announces them once
        addr = self.ports[ln.name].getHost()
        log_listening(gen.config, ln, addr.host, addr.port)

    # -- service ----------------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        for w in self.plan.warnings:
            log.warn("{warning}", warning=w)
        if self.role != "worker":
            for section, names in self.plan.acme_placeholders:
                log.info("[{section}]: no ACME certificate for {names} yet: serving one from the local CA until it "
                         "is issued", section=section, names=" ".join(names))
        if self.plan.local_ca_path and self.role != "worker":
            log.info("local CA certificate: {path} (clients can trust it with: curl --cacert {path})",
                     path=self.plan.local_ca_path)
        if self.role == "supervisor":
            self._record_running()  # its Supervisor opened the listeners' sockets (privileged start)
            self._watch_store()
            return
        eventloop.install(self.reactor)  # reads on txgate's connections without the legacy log context
        gen = self._build(self.plan)
        self.current = gen
        self.ocsp.use(self.plan)
        self._flusher = task.LoopingCall(self._flush_logs)
        self._flusher.clock = self.reactor
        self._flusher.start(0.5, now=False)
        for ln in self.config.listeners:
            front = Front(ln.name, gen.tops[ln.name])
            self.ports[ln.name] = self._listen(ln, front)
            self.fronts[ln.name] = front
            self.binds[ln.name] = (ln.host, ln.port)
            self._log_listening(gen, ln)
        self._record_running()
        if self.role != "worker":
            self._watch_store()

    def _watch_store(self) -> None:
        if self.store is not None:
            from txgate.store import DeferredStore

            self.deferred_store = DeferredStore(self.store, self.reactor)
            try:
                self._sub = self.deferred_store.subscribe(self._store_changed)
            except Exception as e:  # e.g. Redis went away since startup: changes then need a reload
                log.error("store: cannot subscribe to changes ({error}); reload with SIGHUP after store writes",
                          error=str(e))
            self._refresh_listing()

    def _record_running(self) -> None:
        """Tell `txgate check` which addresses this gateway holds (state_dir/running.json).

        Under worker processes the supervisor, which owns the sockets, writes it; workers never do.
        """
        import os

        from txgate.plan.running import write_running

        if self.role == "worker" or not os.path.isdir(self.config.gateway.state_dir):
            return
        binds = [(ln.host, ln.port) for ln in self.config.listeners if ln.port]
        adm = self.config.admin
        if adm.enabled and self.plan.admin_available and adm.port:
            binds.append((adm.host, adm.port))
        try:
            write_running(self.config.gateway.state_dir, os.getpid(), binds)
        except OSError as e:
            log.warn("cannot write {state_dir}/running.json ({error}): txgate check will find the ports busy",
                     state_dir=self.config.gateway.state_dir, error=e.strerror or str(e))

    def reopen_logs(self, reason: str = "SIGUSR1", announce: bool = True) -> None:
        """Reopen the access log files and txgate's own log file (logrotate moved them)."""
        from txgate.runtime.logs import reopen_all

        seen = set()
        for gen in self._generations():
            if id(gen.access_log) not in seen:
                seen.add(id(gen.access_log))
                gen.access_log.reopen()
        reopen_all()
        if announce:
            log.info("log files reopened ({reason})", reason=reason)

    def _generations(self) -> list[Generation]:
        return [g for g in [self.current, *self.retiring] if g is not None]

    def _flush_logs(self) -> None:
        seen = set()
        for gen in self._generations():
            if id(gen.access_log) not in seen:
                seen.add(id(gen.access_log))
                gen.access_log.flush()

    @defer.inlineCallbacks
    def stopService(self):
        """Stop accepting, let in-flight requests finish (up to shutdown_timeout), then close."""
        super().stopService()
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        self._store_debounce.cancel()
        self.ocsp.stop()
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports.values()])
        self.ports.clear()
        yield self._drain(list(self.connections.values()))
        gens = self._generations()
        for gen in gens:
            gen.close_upstreams()
        self.retirer.stop()
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        closed = set()
        for gen in gens:
            if id(gen.access_log) not in closed:
                closed.add(id(gen.access_log))
                gen.access_log.close()
        if self.store is not None:
            yield self.run_blocking(self.store.close)
        import os

        from txgate.plan.running import remove_running

        if self.role != "worker":
            remove_running(self.config.gateway.state_dir, os.getpid())
        log.info("txgate stopped")

    @defer.inlineCallbacks
    def _drain(self, sets: list[set]):
        """Ask every connection to finish gracefully; abort what is left after shutdown_timeout."""
        for conns in sets:
            for conn in list(conns):
                conn.shutdown()
        deadline = self.reactor.seconds() + self.config.gateway.shutdown_timeout
        while any(sets) and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        left = sum(len(c) for c in sets)
        if left:
            log.warn("shutdown_timeout reached: closing {n} connections", n=left)
            for conns in sets:
                for conn in list(conns):
                    conn.transport.abortConnection()

    # -- reload ----------------------------------------------------------------------------------
    def reload(self, reason: str = "reload") -> defer.Deferred:
        """Rebuild from the config file and the store; Deferred[ReloadResult]. A failure keeps the running config.

        Reloads never overlap: one asked for while another runs is queued, and the ones asked for
        meanwhile share it (they all get its result).
        """
        return self._coalesce(reason)

    def _load_and_prepare(self) -> Plan:
        """Off the reactor thread: read gw.ini again and prepare it against the running store."""
        cfg = self.loader()
        notes = reload_notes(cfg, self.config)
        if cfg.kubernetes_cas() and self.role != "worker":
            # A CA bundle named for the first time has no placeholder: read its Secret now (the
            # Kubernetes source follows it once this reload is in).
            from txgate.k8s.bootstrap import fetch_secret_cas
            from txgate.plan.kubernetes import kubernetes_access

            fetch_secret_cas(kubernetes_access(cfg), cfg, self.store, cfg.kubernetes.startup_timeout, new_only=True)
        plan = prepare(cfg, now=datetime.now(timezone.utc), check_ports=False, store=self.store)
        plan.warnings.extend(notes)
        plan.admin_available = self.plan.admin_available
        return plan

    @defer.inlineCallbacks
    def _reload(self, reason: str):
        try:
            plan = yield self.run_blocking(self._load_and_prepare)
            summary = yield defer.maybeDeferred(self._swap, plan)
        except ConfigError as e:
            log.error("reload ({reason}) failed, keeping the running configuration: {error}",
                      reason=reason, error=str(e))
            return ReloadResult(False, str(e))
        except Exception as e:
            log.failure("reload ({reason}) failed, keeping the running configuration", reason=reason)
            return ReloadResult(False, f"{e.__class__.__name__}: {e}")
        for w in plan.warnings:
            log.warn("{warning}", warning=w)
        # A reload also reopens the log files (as nginx does): a moved access log is let go.
        self.reopen_logs(reason, announce=False)
        log.info("reloaded ({reason}): {summary}", reason=reason, summary=summary)
        for hook in self.on_reload:
            try:
                hook(plan.config)
            except Exception:
                log.failure("after-reload hook failed")
        if self.store is not None:
            self._refresh_listing()
        return ReloadResult(True, summary)

    def _swap(self, plan: Plan) -> str:
        """In the reactor: open new ports, point every port at the new generation, close removed ports."""
        cfg = plan.config
        new = {ln.name: ln for ln in cfg.listeners}
        gen = self._build(plan)
        moves = plan_port_moves(self.binds, cfg.listeners)
        opened: dict[str, tuple] = {}  # name -> (port, front)
        try:
            for name in moves.to_open:
                front = Front(name, gen.tops[name])
                opened[name] = (self._listen(new[name], front), front)
        except ConfigError:
            for port, _front in opened.values():
                port.stopListening()
            gen.discard(self.current)
            raise
        closed_at = {}
        for name in moves.closed:
            port = self.ports.pop(name)
            addr = port.getHost()
            closed_at[name] = host_port(addr.host, addr.port)
            port.stopListening()
            self.fronts.pop(name)
            self.binds.pop(name)
        for name, old_name in moves.adopted.items():
            self.ports[name] = self.ports.pop(old_name)
            self.binds[name] = self.binds.pop(old_name)
            self.fronts[name] = self.fronts.pop(old_name)
            self.fronts[name].name = name
        for name, (port, front) in opened.items():
            self.ports[name], self.fronts[name] = port, front
            self.binds[name] = (new[name].host, new[name].port)
        for name, front in self.fronts.items():
            front.current = gen.tops[name]
        old = self.current
        self.current = gen
        self.plan = plan
        self.ocsp.use(plan)
        self.config = cfg
        self._record_running()
        for name in moves.closed:
            log.info("listener {name} stopped listening on {address} (removed or moved)", name=name,
                     address=closed_at[name])
        for name in list(opened) + list(moves.adopted):
            self._log_listening(gen, new[name])
        if old is not None:
            drain_changed_client_auth(self.connections, old.config, cfg, old.plan.ca_stamps, plan.ca_stamps)
            self.retirer.retire(old)
        parts = [f"{len(cfg.listeners)} listeners, {len(cfg.apis)} APIs"]
        if opened or moves.adopted:
            parts.append("listening: " + ", ".join(list(opened) + list(moves.adopted)))
        if moves.closed:
            parts.append("stopped: " + ", ".join(moves.closed))
        return "; ".join(parts)

    # -- store changes -----------------------------------------------------------------------------
    def _store_changed(self, name) -> None:
        """A store change (None: anything may have changed): reload if the config uses it, debounced."""
        self._refresh_listing()
        if store_change_matters(name, self.config, self.plan.store_ids):
            self._store_debounce.add(name)

    def _store_reload(self, names: set) -> None:
        self.reload(store_change_reason(names))

    def _refresh_listing(self) -> None:
        if self.deferred_store is None:
            return

        def got(infos):
            self.store_listing = infos

        def failed(f):
            log.warn("store: cannot list the entries: {error}", error=f.getErrorMessage())

        self.deferred_store.list().addCallbacks(got, failed)
