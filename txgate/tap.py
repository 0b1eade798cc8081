"""twistd glue: `twistd txgate --config gw.ini`."""
from __future__ import annotations

import signal
import sys

from twisted.application.service import Service
from twisted.python import usage


class Options(usage.Options):
    optParameters = [["config", "c", None, "path to gw.ini (default: the embedded defaults)"]]

    def postOptions(self) -> None:
        pass


def makeService(options):
    """Validate the configuration (one line on stderr and exit 1 on a mistake) and build the service."""
    from txgate import config as _config
    from txgate.runtime.assemble import makeService as _make

    path = options["config"]
    loader = (lambda: _config.load(path)) if path else _config.default_config
    try:
        cfg = loader()
        top = _make(cfg, loader=loader)
    except _config.ConfigError as e:
        sys.stderr.write("".join(f"txgate: configuration error: {line}\n" for line in e.lines()))
        sys.stderr.flush()
        raise SystemExit(1)
    CleanExitOnSignals().setServiceParent(top)
    ReloadOnSignal(top.getServiceNamed("txgate")).setServiceParent(top)
    return top


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
