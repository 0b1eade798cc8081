# -*- test-case-name: tests.test_ocsp_e2e -*-
"""The process's OCSP machinery for the running gateway: stapling refreshers and the client-status checker."""
from __future__ import annotations

from txgate.ocsp.client import ClientPolicy, ClientStatusChecker
from txgate.ocsp.fetch import Fetcher
from txgate.ocsp.staple import Stapling


class OCSPService:
    """Created once by the gateway service; ``use(plan)`` after each generation goes live, ``stop()`` at the end."""

    def __init__(self, reactor, *, run_blocking=None, metrics=None, fetch=None) -> None:
        fetch = fetch if fetch is not None else Fetcher(reactor)
        self.stapling = Stapling(reactor, fetch, run_blocking=run_blocking, metrics=metrics)
        self.clients = ClientStatusChecker(reactor, fetch, metrics=metrics)

    def use(self, plan) -> None:
        """Staple for the certificates of this plan (running refreshers carry over)."""
        self.stapling.use(plan.staples, plan.config.gateway.state_dir)

    def client_policy(self, plan, listener) -> ClientPolicy | None:
        """The client_ocsp policy of a listener that asks for client certificates, or None."""
        if listener.client_ocsp == "off" or plan.client_verifiers.get(listener.name) is None:
            return None
        return ClientPolicy(self.clients, listener.client_ocsp, listener.client_ocsp_responder,
                            listener.client_ocsp_timeout)

    def stop(self) -> None:
        """Stop every refresher."""
        self.stapling.stop()
