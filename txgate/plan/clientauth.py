# -*- test-case-name: tests.test_mtls_config,tests.test_reload_unit -*-
"""Client-certificate policy: allowlists of mTLS APIs, each listener's ClientVerifier, and its signature."""
from __future__ import annotations

import os
from datetime import datetime

from txgate.config import Config, ConfigError
from txgate.plan.checks import file_stamp
from txgate.plan.model import Plan


def _load_client_entries(config: Config, section: str, tokens: tuple[str, ...], plan: Plan, now):
    """Allowlist entries of one key; expired file entries are startup warnings."""
    from txgate.tls.clientauth import Entries, expired_entries, load_entries

    if not tokens:
        return Entries()
    try:
        entries = load_entries(tokens)
    except ValueError as e:
        raise ConfigError(config.path, section, "client_certificates", str(e)) from None
    for line in expired_entries(entries, now):
        plan.warn(section, "client_certificates", line)
    return entries


def prepare_client_auth(config: Config, plan: Plan, now: datetime, store=None, *, required: bool = True) -> None:
    """Allowlists of `mtls = require` APIs and the client verifier of each listener that asks for certificates."""
    from txgate.tls.clientauth import Allowlist

    shared = _load_client_entries(config, "security", config.security.client_certificates, plan, now)
    for cert in shared.cas + shared.exact:
        plan.held.append(("security client_certificates", "client_allowlist", cert))
    api_cas: dict[str, list] = {}
    for api in config.apis:
        section = f"api:{api.name}"
        if not api.mtls:
            continue
        entries = _load_client_entries(config, section, api.client_certificates, plan, now)
        for cert in entries.cas + entries.exact:
            plan.held.append((f"{section} client_certificates", "client_allowlist", cert))
        entries.extend(shared)
        api_cas[api.name] = list(entries.cas)
        try:
            plan.allowlists[api.name] = Allowlist(api.name, entries, api.client_subjects, api.client_sans)
        except ValueError as e:  # an exact subject that does not parse
            raise ConfigError(config.path, section, "client_subjects", str(e)) from None
    for ln in config.listeners:
        if ln.tls:
            _prepare_verifier(config, plan, ln, shared, api_cas, now, store, required)


def _prepare_verifier(config: Config, plan: Plan, ln, shared, api_cas: dict, now: datetime, store=None,
                      required: bool = True) -> None:
    """The ClientVerifier of one TLS listener (none, with warnings for unused keys, when it asks for nothing)."""
    from txgate.plan.casources import load_ca_source
    from txgate.tls.clientverify import ClientVerifier

    section = f"listener:{ln.name}"
    apis = config.apis_for(ln.name)
    mtls_apis = [a for a in apis if a.mtls]
    mode = ln.client_auth if ln.client_auth != "none" else ("optional" if mtls_apis else None)
    if mode is None:
        for key, value in (("client_ca", ln.client_ca), ("client_crl", ln.client_crl)):
            if value:
                plan.warn(section, key, "unused: the listener does not ask for client "
                          "certificates (client_auth = none and no mtls = require API)")
        for a in apis:
            if a.forward_client_cert == "xfcc":
                plan.warn(f"api:{a.name}", "forward_client_cert", f"listener '{ln.name}' does not ask "
                          "for client certificates (client_auth = none and no mtls = require API): nothing to forward")
        return
    anchors = []
    if ln.client_ca:
        found = load_ca_source(config, section, "client_ca", ln.client_ca, plan, store, required=required)
        if found is None:  # `txgate check` before the gateway read the Secret: nothing more to check here
            return
        anchors.extend(found)
    _check_no_entry_apis(config, ln.name, mtls_apis, plan, anchors)
    for a in mtls_apis:
        anchors.extend(api_cas[a.name])
    anchors.extend(shared.cas)
    crls = _load_crls(config, plan, section, ln.client_crl, now)
    if not anchors and mode == "require":
        raise ConfigError(config.path, section, "client_auth",
                          "require needs trust anchors: set client_ca (or CA entries in client_certificates)")
    _check_ca_entries_anchored(config, ln.name, mtls_apis, api_cas, anchors)
    if crls:
        _warn_crl_coverage(config, section, anchors, crls, plan)
    plan.client_verifiers[ln.name] = ClientVerifier(
        listener=ln.name, mode=mode, anchors=anchors, crls=crls, depth=ln.verify_depth,
        announce=ln.announce_client_cas, crl_missing=ln.client_crl_missing,
    )


def _load_crls(config: Config, plan: Plan, section: str, paths, now: datetime) -> list:
    """The CRLs of a listener's client_crl files; an expired one is a startup warning."""
    from txgate.tls.clientverify import load_crls

    crls = []
    for path in paths:
        try:
            found = load_crls(path)
        except ValueError as e:
            raise ConfigError(config.path, section, "client_crl", str(e)) from None
        for crl in found:
            nxt = crl.next_update_utc
            if nxt is not None and nxt < now:
                plan.warn(section, "client_crl", f"{path}: CRL of '{crl.issuer.rfc4514_string()}' "
                          f"expired on {nxt.strftime('%Y-%m-%dT%H:%M:%SZ')}: certificates it covers are refused")
        crls.extend(found)
    return crls


def _check_no_entry_apis(config: Config, listener: str, mtls_apis, plan: Plan, client_cas: list) -> None:
    """Give each mTLS API the listener's client_ca; an API without entries needs one to allow anyone.

    Without entries (none of its own, none in [security]), an API allows the certificates whose
    verified chain passes through a client_ca certificate of the listener (not those that verified
    only through another API's CA entry, which also sits in the listener's trust store).
    """
    for api in mtls_apis:
        allow = plan.allowlists[api.name]
        allow.trust_listener_cas(listener, client_cas)
        if allow.any_verified and not client_cas:
            raise ConfigError(
                config.path, f"api:{api.name}", "client_certificates",
                f"an mTLS API without entries (here or in [security]) allows only certificates issued under its "
                f"listener's client_ca, and listener '{listener}' has none: it would allow no one (list entries, "
                f"or set client_ca in [listener:{listener}])",
            )


def _warn_crl_coverage(config: Config, section: str, anchors: list, crls: list, plan: Plan) -> None:
    """client_crl set: an intermediate CA in the trust store that no CRL covers is a startup warning.

    The verifier refuses a chain with a certificate whose issuer has no CRL (or, with
    client_crl_missing = allow, lets it pass unchecked): either way an uncovered intermediate is worth
    knowing at startup, for the certificates it issues (a CRL issued by it) and for the intermediate
    itself (a CRL issued by its issuer).
    """
    from cryptography.hazmat.primitives import serialization

    from txgate.tls.clientauth import sha256

    issuers = {crl.issuer for crl in crls}
    listener = section.split(":", 1)[1]
    seen = set()
    for ca in anchors:
        fp = sha256(ca.public_bytes(serialization.Encoding.DER))
        if ca.issuer == ca.subject or fp in seen:
            continue
        seen.add(fp)
        gaps = []
        if ca.subject not in issuers:
            gaps.append("no CRL issued by it (the certificates it issues are not revocation-checked)")
        if ca.issuer not in issuers:
            gaps.append(f"no CRL from its issuer '{ca.issuer.rfc4514_string()}' (the intermediate itself is not "
                        "revocation-checked)")
        if gaps:
            plan.warn(section, "client_crl", f"intermediate CA '{ca.subject.rfc4514_string()}' in the trust "
                      f"path of listener '{listener}' is not covered: " + "; ".join(gaps))


def _check_ca_entries_anchored(config: Config, listener: str, mtls_apis, api_cas: dict, anchors: list) -> None:
    """An intermediate CA entry is useless unless its issuer is a trust anchor of the listener too."""
    subjects = {a.subject for a in anchors}
    for api in mtls_apis:
        for ca in api_cas[api.name]:
            if ca.issuer != ca.subject and ca.issuer not in subjects:
                raise ConfigError(
                    config.path, f"api:{api.name}", "client_certificates",
                    f"intermediate CA '{ca.subject.rfc4514_string()}': its issuer '{ca.issuer.rfc4514_string()}' "
                    f"is not a trust anchor of listener '{listener}' (add it to client_ca)",
                )


def client_auth_signature(config: Config, listener: str, ca_stamps: dict | None = None) -> tuple:
    """Everything that decides which client certificates a listener's APIs accept (files by mtime/size,
    CA bundles from Secrets by the digests in ``ca_stamps``, a Plan's)."""
    from txgate.plan.casources import ca_source_stamp

    ln = next((x for x in config.listeners if x.name == listener), None)
    if ln is None:
        return ()
    lsig = (ln.client_auth, ca_source_stamp(ln.client_ca, ca_stamps), tuple(file_stamp(p) for p in ln.client_crl),
            ln.verify_depth)
    entries = lambda items: tuple(file_stamp(e) if os.path.exists(e) else e for e in items)  # noqa: E731
    apis = tuple(
        (a.name, a.mtls, entries(a.client_certificates), a.client_subjects, a.client_sans, a.forward_client_cert,
         a.path, a.hosts)
        for a in config.apis_for(listener)
        if a.mtls or a.forward_client_cert != "off"
    )
    return (lsig, apis, entries(config.security.client_certificates))
