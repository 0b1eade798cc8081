# -*- test-case-name: tests.test_workers_e2e -*-
"""The supervisor process of ``twistd txgate`` with workers > 1: what it runs, and how a reload reaches workers.

The supervisor runs the admin API, the store watcher, the expiry monitor and the Supervisor of
the worker processes; it serves no proxy traffic. Its GatewayService (role ``supervisor``) keeps
the running Config and Plan (for the admin API: held certificates, store usage) and validates
every reload once, as a single gateway does; only a valid configuration goes to the workers.
"""
from __future__ import annotations

import os

from twisted.internet import defer
from twisted.logger import Logger

from txgate.config import Config
from txgate.plan import Plan
from txgate.runtime.gateway import GatewayService

log = Logger()


class SupervisorGateway(GatewayService):
    """A GatewayService that validates and hands reloads to the workers instead of swapping generations."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, role="supervisor", **kw)
        self.workers = None  # txgate.runtime.workers.Supervisor
        self._reason = "reload"

    def _reload(self, reason: str):
        self._reason = reason
        return super()._reload(reason)

    def _swap(self, plan: Plan):
        cfg = plan.config

        def swapped(failures):
            self.plan, self.config = plan, cfg
            self._record_running()
            parts = [f"{len(cfg.listeners)} listeners, {len(cfg.apis)} APIs", f"{self.workers.count} workers"]
            for failure in failures:
                log.error("reload ({reason}) failed on {failure}", reason=self._reason, failure=failure)
                parts.append(failure)
            return "; ".join(parts)

        return defer.maybeDeferred(self.workers.reload, cfg, self._reason).addCallback(swapped)

    def reopen_logs(self, reason: str = "SIGUSR1", announce: bool = True):
        """Reopen the supervisor's own log file, then have every worker reopen its access log.

        The line ``log files reopened`` comes once the workers have answered, so what they write
        after it goes to the new files. Returns a Deferred (fired with None).
        """
        from txgate.runtime.gateway import log as service_log

        super().reopen_logs(reason, announce=False)
        d = defer.succeed(None) if self.workers is None else self.workers.reopen_logs()

        def done(_):
            if announce:
                service_log.info("log files reopened ({reason})", reason=reason)

        return d.addCallback(done)

    @defer.inlineCallbacks
    def stopService(self):
        """After every worker has drained and exited (the Supervisor stops first): close the store, log."""
        if self.workers is not None and self.workers.stopped is not None:
            yield self.workers.stopped
        yield super().stopService()


def make_supervised_service(config: Config, count: int, *, loader=None, reactor=None):
    """The supervisor's MultiService: gateway (supervisor role), admin API, expiry monitor, and ``count`` workers."""
    from txgate.metrics_multiprocess import SupervisorMetrics
    from txgate.runtime.workers import Supervisor
    from txgate.runtime.assemble import makeService

    metrics = SupervisorMetrics(os.path.join(config.gateway.state_dir, "metrics"))
    top = makeService(config, reactor, loader=loader, gateway_class=SupervisorGateway, metrics=metrics)
    gateway = top.getServiceNamed("txgate")
    # For measurements only (docs/workers.md): one shared socket instead of a SO_REUSEPORT group.
    mode = os.environ.get("TXGATE_WORKER_SOCKETS", "reuseport")
    supervisor = Supervisor(gateway, count, gateway.reactor, mode=mode)
    gateway.workers = supervisor
    metrics.supervisor = supervisor
    supervisor.setServiceParent(top)
    return top
