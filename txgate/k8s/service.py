# -*- test-case-name: tests.test_k8s_unit,tests.test_k8s_e2e -*-
"""The Kubernetes certificate source: which Secrets and CSRs a Config needs, and the service that follows them.

Certificates from the cluster go into the gateway's certificate store under derived names
(``txgate.config.kubernetes``); the gateway reloads on store changes, so a Secret update or an issued
CSR is served by the next generation without dropping connections.
"""
from __future__ import annotations

import os
import socket

from twisted.application.service import Service
from twisted.logger import Logger

from txgate.config import Config
from txgate.k8s.csr import CsrIssuer, CsrWant

log = Logger(namespace="txgate.k8s")


def secret_wants(config: Config) -> list[tuple[str, str, str]]:
    """(namespace, name, store name) of every Secret the config uses, once each."""
    out: dict[str, tuple[str, str, str]] = {}
    for _section, _key, _user, spec in config.kubernetes_specs():
        if spec.k8s_secret is not None:
            ns, _, name = spec.k8s_secret.partition("/")
            out.setdefault(spec.store_ref, (ns, name, spec.store_ref))
    return list(out.values())


def followed_secrets(config: Config) -> list[tuple[str, str, str | None, tuple[tuple[str, str], ...]]]:
    """(namespace, name, store name of its TLS pair or None, ((CA key, store name), ...)) of every Secret to follow."""
    from txgate.config.kubernetes import secret_ca_ref, store_name_secret_ca

    found: dict[tuple[str, str], list] = {}
    for ns, name, store_name in secret_wants(config):
        found[(ns, name)] = [store_name, []]
    for _section, _key, word in config.kubernetes_cas():
        ns, name, data_key = secret_ca_ref(word)
        cas = found.setdefault((ns, name), [None, []])[1]
        if (data_key, store_name_secret_ca(word)) not in cas:
            cas.append((data_key, store_name_secret_ca(word)))
    return [(ns, name, store_name, tuple(cas)) for (ns, name), (store_name, cas) in found.items()]


def csr_wants(config: Config) -> list[CsrWant]:
    """Every certificate the config asks the cluster to sign, with the names it must carry."""
    from txgate.plan.listeners import local_names

    wants: list[CsrWant] = []
    for ln in config.listeners:
        if not ln.tls:
            continue
        section = f"listener:{ln.name}"
        if ln.certificate.k8s_csr is not None:
            wants.append(CsrWant(ln.certificate.store_ref, ln.certificate.k8s_csr,
                                 tuple(local_names(config, ln)), False, section))
        for name, spec in ln.sni:
            if spec.k8s_csr is not None:
                wants.append(CsrWant(spec.store_ref, spec.k8s_csr, (name,), False, f"{section} sni:{name}"))
    seen = {w.store_name for w in wants}
    for section, _key, user, spec in config.kubernetes_specs():
        if spec.k8s_csr is not None and spec.store_ref not in seen and not section.startswith("listener:"):
            seen.add(spec.store_ref)
            wants.append(CsrWant(spec.store_ref, spec.k8s_csr, (), True, user))
    return wants


def pod_name(config: Config, environ=None) -> str:
    """This replica's name in CSR names: [kubernetes] pod_name, $POD_NAME, else the host name."""
    environ = os.environ if environ is None else environ
    return config.kubernetes.pod_name or environ.get("POD_NAME") or socket.gethostname().split(".")[0].lower()


class KubernetesSource(Service):
    """Follows the running config's Secrets and CSRs into the store (started with the gateway).

    ``current_config`` gives the configuration in use (it changes on reload); ``sync`` (called at start
    and after each reload) compares the Secrets and CSRs it names with those followed, and starts or
    stops the difference.
    """

    name = "kubernetes"

    def __init__(self, config: Config, access, store, reactor, current_config=None) -> None:
        self.config, self.access, self.store, self.reactor = config, access, store, reactor
        self.current_config = current_config or (lambda: self.config)
        self.client = None
        self.dstore = None
        self.workers: dict = {}  # want key -> SecretFollower or CsrIssuer
        self._synced = None

    def startService(self) -> None:
        super().startService()
        from txgate.k8s.client import KubeClient
        from txgate.store import DeferredStore

        self.client = KubeClient(self.access, self.reactor)
        self.dstore = DeferredStore(self.store, self.reactor)
        log.info("kubernetes: API server {server} ({source}; {credentials})", server=self.access.server,
                 source=self.access.source, credentials=self.access.credentials())
        self.sync()

    def wanted(self, config: Config) -> dict:
        """want key -> a factory of its worker, for everything ``config`` names."""
        from txgate.k8s.secrets import SecretFollower

        out = {}
        for ns, name, store_name, cas in followed_secrets(config):
            out[("secret", ns, name, store_name, cas)] = (
                lambda ns=ns, name=name, sn=store_name, cas=cas: SecretFollower(
                    self.client, self.dstore, ns, name, sn, self.reactor, ca_keys=cas))
        pod = pod_name(config)
        seconds = config.kubernetes.csr_expiration_seconds
        for want in csr_wants(config):
            out[("csr", want, pod, seconds)] = (
                lambda want=want: CsrIssuer(self.client, self.dstore, want, self.reactor, pod=pod,
                                            expiration_seconds=seconds))
        return out

    def sync(self) -> None:
        """Start the workers the running config needs and stop those it no longer names."""
        if not self.running:
            return
        config = self.current_config()
        if config is self._synced:
            return
        self._synced = config
        wanted = self.wanted(config)
        for key in [k for k in self.workers if k not in wanted]:
            self.workers.pop(key).stop()
        for key, make in wanted.items():
            if key not in self.workers:
                self.workers[key] = worker = make()
                worker.start()

    def stopService(self):
        super().stopService()
        for worker in self.workers.values():
            worker.stop()
        if self.client is not None:
            return self.client.close()
        return None
