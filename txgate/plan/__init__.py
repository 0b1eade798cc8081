# -*- test-case-name: tests.test_config,tests.test_mtls_config,tests.test_config_security,tests.test_store_config -*-
"""Config -> Plan: check a Config against the machine and turn it into ready TLS contexts and trust decisions.

``prepare(config)`` is the one entry point; each step lives in its own module: ``files`` (the files
gw.ini names, state_dir), ``checks`` (the access log, [admin] files, port probes), ``clientauth`` (allowlists and client verifiers),
``listeners`` (server TLS, the local CA), ``upstreams`` (pins and upstream TLS), ``store``
(the certificate store's secret and opening it).
"""
from __future__ import annotations

from datetime import datetime, timezone

from txgate.config import Config
from txgate.plan.model import Plan

__all__ = ["Plan", "prepare"]


def prepare(config: Config, *, now: datetime | None = None, check_ports: bool = True, create_state: bool = True,
            store=None) -> Plan:
    """Load and check every certificate and TLS setting; raise ConfigError naming file, section, key.

    With ``create_state=False`` (``txgate check``) nothing is written: listeners on the local CA
    get every check except issuing their certificate. ``store`` (a blocking ``txgate.store.Store``)
    resolves ``store:REF`` certificates; reloads pass the running one and ``check_ports=False``.
    """
    from txgate.plan import checks
    from txgate.plan.acme import acme_warnings
    from txgate.plan.files import check_files, check_state_dir
    from txgate.plan.clientauth import prepare_client_auth
    from txgate.plan.listeners import prepare_listeners
    from txgate.plan.upstreams import prepare_upstreams

    check_files(config)
    now = now or datetime.now(timezone.utc)
    plan = Plan(config=config, warnings=list(config.warnings))
    checks.check_access_log(config)
    checks.check_h2_engine(config, plan)
    check_state_dir(config)
    checks.check_admin(config, plan)
    prepare_client_auth(config, plan, now)
    if check_ports:
        checks.check_ports(config, plan)
    prepare_listeners(config, plan, now, create_state=create_state, store=store)
    prepare_upstreams(config, plan, now, store=store)
    acme_warnings(config, plan)
    return plan
