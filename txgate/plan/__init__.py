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
            store=None, gateway_binds=frozenset()) -> Plan:
    """Load and check every certificate and TLS setting; raise ConfigError naming file, section, key.

    With ``create_state=False`` (``txgate check``) nothing is written: listeners on the local CA
    get every check except issuing their certificate. ``store`` (a blocking ``txgate.store.Store``)
    resolves ``store:REF`` certificates; reloads pass the running one and ``check_ports=False``.
    ``gateway_binds`` are addresses the running gateway of this config holds (free for the port check).
    Independent checks all run: every mistake is raised at once (``ConfigErrors``).
    """
    from txgate.config.ini import first_per_key
    from txgate.config.model import ConfigError, raise_collected
    from txgate.plan import checks
    from txgate.plan.acme import acme_warnings
    from txgate.plan.clientauth import prepare_client_auth
    from txgate.plan.files import check_files, check_state_dir, warn_open_keys
    from txgate.plan.listeners import prepare_listeners
    from txgate.plan.upstreams import prepare_upstreams

    check_files(config)  # every unreadable file at once; the steps below would only repeat them
    now = now or datetime.now(timezone.utc)
    plan = Plan(config=config, warnings=list(config.warnings))
    errors: list[ConfigError] = []

    def step(fn, *args, **kw) -> bool:
        # Independent checks each report their mistake; the caller sees them all at once.
        try:
            fn(*args, **kw)
        except ConfigError as e:
            errors.append(e)
            return False
        return True

    step(checks.check_access_log, config)
    state_ok = step(check_state_dir, config)  # (the local CA and a dir store live there)
    step(checks.check_admin, config, plan)
    auth_ok = step(prepare_client_auth, config, plan, now, store, required=create_state)
    step(checks.check_h2_engine, config, plan)
    if check_ports:
        step(checks.check_ports, config, plan, gateway_binds)
    # Listeners may create the local CA in state_dir: only once everything before checked out.
    if state_ok and auth_ok and not (errors and create_state):
        step(prepare_listeners, config, plan, now, create_state=create_state, store=store)
    if state_ok:
        step(prepare_upstreams, config, plan, now, store=store, required=create_state)
    raise_collected(first_per_key(errors))
    warn_open_keys(config, plan)
    acme_warnings(config, plan)
    return plan
