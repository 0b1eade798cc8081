# -*- test-case-name: tests.test_ocsp_unit -*-
"""Which listener certificates get OCSP staples (``ocsp_stapling``), with their cached responses loaded."""
from __future__ import annotations

from datetime import datetime

from cryptography.hazmat.primitives import hashes

from txgate.config import Config, ListenerConfig
from txgate.plan.model import Plan


def staple_target(config: Config, plan: Plan, ln: ListenerConfig, key: str, user: str, ck, now: datetime):
    """The StapleHolder for one certificate of a listener (shared by every user of it), or None.

    ``auto`` staples when the certificate names a responder (AIA) or ``ocsp_responder`` is set; ``on``
    also warns when it cannot; the issuer is the next certificate of the chain file.
    """
    from txgate.ocsp.check import cert_key, must_staple, responder_url
    from txgate.ocsp.staple import StapleTarget, load_cached

    section = f"listener:{ln.name}"
    leaf = ck.leaf
    needs = must_staple(leaf)
    if ln.ocsp_stapling == "off":
        if needs:
            plan.warn(section, "ocsp_stapling", f"{_label(ck)} is Must-Staple but stapling is off: "
                      "clients that enforce it will refuse this certificate")
        return None
    url = ln.ocsp_responder or responder_url(leaf)
    issuer = ck.chain[1] if len(ck.chain) > 1 else None
    if url is None or issuer is None:
        if ln.ocsp_stapling == "on" or needs:
            why = "no OCSP responder is known (no AIA OCSP URL; set ocsp_responder)" if url is None else \
                "its chain has no issuer certificate after the leaf"
            what = "is Must-Staple" if needs else "ocsp_stapling = on"
            plan.warn(section, "ocsp_stapling" if ln.ocsp_stapling == "on" else key,
                      f"{_label(ck)} {what} but cannot be stapled: {why}")
        return None
    ident = cert_key(leaf, issuer)
    target = plan.staples.get(ident)
    if target is None:
        target = StapleTarget(ident, leaf, issuer, url, needs)
        load_cached(target, config.gateway.state_dir, now)
        plan.staples[ident] = target
    target.users.append(user)
    return target.holder


def warn_client_ocsp(plan: Plan, ln: ListenerConfig) -> None:
    """`client_ocsp` on a listener that asks for no client certificate has nothing to check."""
    if ln.client_ocsp != "off" and ln.name not in plan.client_verifiers:
        plan.warn(f"listener:{ln.name}", "client_ocsp", "this listener asks for no client certificates "
                  "(client_auth = none and no mtls API): nothing to check")


def staple_lookup(plan: Plan):
    """The ServerTLS hook: leaf SHA-256 fingerprint -> the holder whose callback staples for it."""
    by_leaf = {t.cert.fingerprint(hashes.SHA256()): t.holder for t in plan.staples.values()}

    def holder_for(ck):
        return by_leaf.get(ck.leaf.fingerprint(hashes.SHA256()))

    return holder_for


def _label(ck) -> str:
    return ck.cert_path or ck.leaf.subject.rfc4514_string()
