"""Startup and `txgate check` warnings about ACME: can the CA reach a listener that answers its challenges?"""
# -*- test-case-name: tests.test_acme_config -*-
from __future__ import annotations

from txgate.config import Config
from txgate.plan.model import Plan


def acme_warnings(config: Config, plan: Plan) -> None:
    """Warn when no listener can answer the [acme] challenges (the CA validates on ports 80 and 443)."""
    certs = config.acme_certificates()
    if not certs:
        return
    challenges = config.acme.challenges
    plain = [ln for ln in config.listeners if not ln.tls]
    tls_acme = [ln for ln in config.listeners if ln.tls and _uses_acme(ln)]
    can = []
    if "http-01" in challenges and plain:
        can.append("http-01")
    if "tls-alpn-01" in challenges and tls_acme:
        can.append("tls-alpn-01")
    if not can:
        plan.warn("acme", "challenges", f"no listener can answer {' or '.join(challenges)}: add a tls = off "
                  "listener (http-01) or list tls-alpn-01; certificates cannot be issued")
        return
    ports = {ln.port for ln in plain} if "http-01" in can else set()
    ports |= {ln.port for ln in tls_acme} if "tls-alpn-01" in can else set()
    if not ports & {80, 443}:
        plan.warn("acme", "challenges", "no challenge-answering listener binds port 80 (http-01) or 443 "
                  "(tls-alpn-01): a public CA validates only there (fine behind a port forward)")


def _uses_acme(ln) -> bool:
    return ln.certificate.acme is not None or any(spec.acme is not None for _n, spec in ln.sni)
