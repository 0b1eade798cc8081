# -*- test-case-name: tests.test_signals_e2e,tests.test_embed_e2e,tests.test_shutdown_e2e -*-
"""Unix signals of a running gateway: SIGHUP reloads, SIGUSR1 reopens log files, SIGTERM/SIGINT stop cleanly.

``twistd txgate`` installs all three; an embedding program calls ``handle_signals(top)`` on the
service ``txgate.makeService`` returned (before starting it), or calls ``top.facade.reload()`` and
``reopen_logs(top)`` itself from its own handlers.
"""
from __future__ import annotations

import signal

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger(namespace="txgate.service")


def _reactor():
    from twisted.internet import reactor

    return reactor


class _SignalService(Service):
    """Installs a handler for ``signum`` when started (privileged start included: before the listeners)."""

    signum: int | None = None
    installed = False

    def _install(self) -> None:
        if self.installed or self.signum is None:
            return
        self.installed = True
        reactor = _reactor()
        previous = signal.getsignal(self.signum)

        def handler(signum, frame):
            reactor.callFromThread(self.fire)
            if callable(previous):
                previous(signum, frame)  # e.g. twistd's own SIGUSR1 rotation of its log file

        signal.signal(self.signum, handler)

    def privilegedStartService(self) -> None:
        # Installed before any child's startService (which logs the listeners): once a listener is
        # announced, the signal does its job instead of killing the process.
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        super().startService()
        self._install()  # an embedding program calls startService only

    def fire(self) -> None:
        raise NotImplementedError


class ReloadOnSignal(_SignalService):
    """SIGHUP reloads the gateway (config file and store), like the facade's ``reload``."""

    signum = getattr(signal, "SIGHUP", None)

    def __init__(self, gateway) -> None:
        self.gateway = gateway

    def fire(self) -> None:
        self.gateway.reload("SIGHUP")

    def stopService(self) -> None:
        super().stopService()
        if self.signum is not None:
            signal.signal(self.signum, signal.SIG_IGN)
            self.installed = False


class ReopenOnSignal(_SignalService):
    """SIGUSR1 reopens the access log and txgate's own log file (after logrotate moved them)."""

    signum = getattr(signal, "SIGUSR1", None)

    def __init__(self, gateway) -> None:
        self.gateway = gateway

    def fire(self) -> None:
        self.gateway.reopen_logs("SIGUSR1")


class CleanExitOnSignals(Service):
    """SIGTERM/SIGINT stop the reactor gracefully and twistd exits 0.

    twistd re-raises the terminating signal after shutdown (exit status 143); a gateway that
    drained cleanly is a success, so these handlers stop the reactor themselves.
    """

    def startService(self) -> None:
        super().startService()
        reactor = _reactor()

        def handler(signum, frame):
            reactor.callFromThread(reactor.stop)

        def install():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, handler)

        # After the reactor has installed its own handlers (it does so while starting up).
        reactor.callLater(0, install)


def handle_signals(top, *, clean_exit: bool = True) -> None:
    """Make ``top`` (what ``txgate.makeService`` returned) handle SIGHUP, SIGUSR1 and (optionally) SIGTERM/SIGINT.

    Call it before starting ``top``. ``clean_exit=False`` leaves SIGTERM/SIGINT to the embedding program.
    """
    gateway = top.getServiceNamed("txgate")
    services = [ReloadOnSignal(gateway), ReopenOnSignal(gateway)]
    if clean_exit:
        services.insert(0, CleanExitOnSignals())
    for svc in services:
        svc.setServiceParent(top)
        # Now, not when ``top`` starts its children: the gateway (started before these) announces its
        # listeners, and a SIGHUP sent on seeing that line must reload, not kill the process.
        install = getattr(svc, "_install", None)
        if install is not None:
            install()


def reopen_logs(top) -> None:
    """Reopen the access log and txgate's log file now (what SIGUSR1 does)."""
    top.getServiceNamed("txgate").reopen_logs("request")
