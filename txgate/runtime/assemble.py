# -*- test-case-name: tests.test_embed_e2e,tests.test_store_config,tests.test_config_e2e -*-
"""makeService(config): validate, open the store, and assemble the gateway, admin API and expiry monitor."""
from __future__ import annotations

from twisted.application.service import MultiService
from twisted.logger import Logger

from txgate.config import Config
from txgate.plan import prepare
from txgate.plan.checks import check_default_admin_port
from txgate.plan.files import check_files
from txgate.plan.kubernetes import kubernetes_access
from txgate.plan.store import open_gateway_store
from txgate.runtime.facade import ServiceFacade
from txgate.runtime.gateway import GatewayService

# The namespace these log lines had before the plan/runtime split (users grep for it).
log = Logger(namespace="txgate.service")


def makeService(config: Config, reactor=None, *, loader=None, gateway_class=None, metrics=None) -> MultiService:
    """Build the gateway as a MultiService (validates first; raises ConfigError).

    ``loader`` re-reads the configuration on reload (``lambda: txgate.config.load(path)``); without
    it a reload rebuilds from the same Config (the store may still have changed). The supervisor of
    worker processes (``txgate.runtime.supervised``) passes its own ``gateway_class`` and ``metrics``.
    """
    # Validate before anything is created in state_dir: the files gw.ini names first, then the store
    # is opened first only when the config refers to it (and then must already exist), else after
    # everything else checked out.
    check_files(config)
    access = kubernetes_access(config)
    store = open_gateway_store(config, create=False) if config.store_refs() else None
    try:
        if access is not None:
            from txgate.k8s.bootstrap import fetch_secret_cas, fetch_secrets
            from txgate.k8s.service import secret_wants

            if store is None:
                store = open_gateway_store(config)
            fetch_secrets(access, secret_wants(config), store, config.kubernetes.startup_timeout)
            fetch_secret_cas(access, config, store, config.kubernetes.startup_timeout)
        plan = prepare(config, store=store)
        if store is None:
            store = open_gateway_store(config)
        if config.admin.enabled and not config.admin.bind_explicit:
            check_default_admin_port(config, plan)
    except BaseException:
        if store is not None:
            store.close()
        raise
    from txgate import pins as _pins
    from txgate.admin.config import AdminConfig as AdminListenerConfig
    from txgate.admin.service import AdminService
    from txgate.expiry import ExpiryMonitor
    from txgate.metrics import Metrics

    _pins.announce()  # once per process, whoever asks first
    from txgate.http.h2engine import describe_engine

    log.info("HTTP/2 engine: {engine}", engine=describe_engine(config.gateway.h2_engine))
    if metrics is None:
        metrics = Metrics()
    top = MultiService()
    gateway = (gateway_class or GatewayService)(plan, reactor, loader=loader, store=store, metrics=metrics)
    gateway.setServiceParent(top)
    facade = ServiceFacade(gateway)
    top.facade = facade
    adm = config.admin
    if adm.enabled and plan.admin_available:
        admin_config = AdminListenerConfig(bind_host=adm.host, bind_port=adm.port, client_ca=adm.client_ca,
                                           token_file=adm.token_file, state_dir=config.gateway.state_dir,
                                           allowed_hosts=adm.allowed_hosts)
        AdminService(facade, admin_config, gateway.reactor, metrics=metrics).setServiceParent(top)
    ExpiryMonitor(facade, gateway.reactor, warning_days=config.gateway.expiry_warning_days).setServiceParent(top)
    if config.acme.present or config.acme_certificates():
        add_acme(top, gateway, config, metrics)
    if access is not None:
        from txgate.k8s.service import KubernetesSource

        source = KubernetesSource(config, access, store, gateway.reactor, current_config=lambda: gateway.config)
        gateway.on_reload.append(lambda cfg: source.sync())
        source.setServiceParent(top)
    return top


def add_acme(top: MultiService, gateway: GatewayService, config: Config, metrics=None):
    """The ACME service: issues and renews the config's ACME certificates into the gateway's store."""
    from txgate.acme.service import AcmeService
    from txgate.plan.store import store_secret

    acme = AcmeService(lambda: gateway.config, gateway.store, gateway.challenges, gateway.reactor,
                       secret=store_secret(config), metrics=metrics)
    gateway.on_reload.append(lambda cfg: acme.sync())
    acme.setServiceParent(top)
    top.acme = acme
    if getattr(top, "facade", None) is not None:
        top.facade.acme = acme
    return acme
