# -*- test-case-name: tests.test_config_e2e -*-
"""twistd glue: `twistd txgate --config gw.ini`."""
from __future__ import annotations

import signal
import sys

from twisted.application.service import Service
from twisted.python import usage


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "path to gw.ini (default: the embedded defaults)"],
        ["workers", "w", None, "worker processes: auto or N, overriding [gateway] workers"],
    ]

    def postOptions(self) -> None:
        w = self["workers"]
        if w is not None and w != "auto" and not (w.isdigit() and int(w) >= 1):
            raise usage.UsageError(f"--workers: expected auto or an integer >= 1, got '{w}'")


def makeService(options):
    """Validate the configuration (one line on stderr and exit 1 on a mistake) and build the service."""
    from txgate import config as _config
    from txgate.runtime.assemble import makeService as _make
    from txgate.runtime.workers import resolve_workers

    path = options["config"]
    loader = (lambda: _config.load(path)) if path else _config.default_config
    if options["workers"] is not None:
        loader = _with_workers(loader, None if options["workers"] == "auto" else int(options["workers"]))
    try:
        cfg = loader()
        count = resolve_workers(cfg.gateway.workers)
        if count > 1:
            from txgate.runtime.supervised import make_supervised_service

            top = make_supervised_service(cfg, count, loader=loader)
        else:
            top = _make(cfg, loader=loader)
    except _config.ConfigError as e:
        sys.stderr.write(f"txgate: configuration error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    CleanExitOnSignals().setServiceParent(top)
    ReloadOnSignal(top.getServiceNamed("txgate")).setServiceParent(top)
    return top


def _with_workers(loader, workers):
    """A loader whose configs carry the command line's --workers instead of gw.ini's."""
    import dataclasses

    def load():
        cfg = loader()
        return dataclasses.replace(cfg, gateway=dataclasses.replace(cfg.gateway, workers=workers))

    return load


class ReloadOnSignal(Service):
    """SIGHUP reloads the gateway (config file and store), like the facade's ``reload``."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway

    def privilegedStartService(self) -> None:
        # Installed before any child's startService (which logs the listeners): once a listener is
        # announced, SIGHUP reloads instead of killing the process. The reactor leaves SIGHUP alone.
        super().privilegedStartService()
        from twisted.internet import reactor

        def handler(signum, frame):
            reactor.callFromThread(self.gateway.reload, "SIGHUP")

        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, handler)

    def stopService(self) -> None:
        super().stopService()
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)


class CleanExitOnSignals(Service):
    """SIGTERM/SIGINT stop the reactor gracefully and twistd exits 0.

    twistd re-raises the terminating signal after shutdown (exit status 143); a gateway that
    drained cleanly is a success, so these handlers stop the reactor themselves.
    """

    def startService(self) -> None:
        super().startService()
        from twisted.internet import reactor

        def handler(signum, frame):
            reactor.callFromThread(reactor.stop)

        def install():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, handler)

        # After the reactor has installed its own handlers (it does so while starting up).
        reactor.callLater(0, install)
