# -*- test-case-name: tests.test_config_security,tests.test_config -*-
"""Upstream trust: pins, pin mode, CA bundle and client certificate of each https:// target -> UpstreamTLS."""
from __future__ import annotations

from datetime import datetime

from txgate.config import ApiConfig, Config, ConfigError
from txgate.plan.model import Plan
from txgate.plan.pairs import load_pair


def prepare_upstreams(config: Config, plan: Plan, now: datetime, store=None, *, required: bool = True) -> None:
    """An UpstreamTLS for each https:// target into ``plan.upstream_tls``, with the trust warnings."""
    pin_cache: dict = {}
    for api in config.apis:
        _prepare_api(config, plan, api, now, pin_cache, store, required)


def _prepare_api(config: Config, plan: Plan, api: ApiConfig, now: datetime, pin_cache: dict, store,
                 required: bool = True) -> None:
    from txgate.plan.casources import load_ca_source
    from txgate.tls.client import UpstreamTLS
    from txgate.tls.server import TLSSettingError

    section = f"api:{api.name}"
    ca_certs = None
    if api.upstream_ca:
        ca_certs = load_ca_source(config, section, "upstream_ca", api.upstream_ca, plan, store, required=required)
        if ca_certs is None:  # `txgate check` before the gateway read the Secret
            ca_certs = []
    for target in api.upstreams:
        if not target.tls:
            if api.pinned_public_keys or api.upstream_certificate:
                plan.warn(section, "upstream", f"{target.label} is plain HTTP: pins and the "
                          "upstream client certificate apply to https:// targets only")
            continue
        chain_check, client = upstream_trust(config, api, target, now, pin_cache, plan, store)
        if client is not None:
            plan.held.append((f"{section} upstream_client {target.label}", "upstream_client", client.leaf))
        try:
            plan.upstream_tls[(api.name, target.label)] = UpstreamTLS(
                api.upstream_server_name or target.host,
                ca_certs=ca_certs,
                verify=api.upstream_verify,
                client_certificate=client,
                min_tls=api.upstream_min_tls,
                ciphers=api.upstream_ciphers,
                chain_check=chain_check,
            )
        except Exception as e:
            ciphers = isinstance(e, TLSSettingError) and api.upstream_ciphers
            raise ConfigError(config.path, section, e.key if ciphers else "upstream", f"{target.label}: {e}") from None
        if chain_check is not None and not api.upstream_verify:
            plan.warn(section, "upstream_verify", f"off with pins: {target.label} is checked "
                      "against its pins ONLY (no chain, expiry or host name verification)")
    if not api.upstream_verify and any(t.tls for t in api.upstreams):
        plan.warn(section, "upstream_verify", "off - upstream certificates are NOT verified")


def resolve_pins(config: Config, section: str, tokens: tuple[str, ...], cache: dict):
    """Pin tokens -> (PinSet, printable pins); errors name the section and key."""
    from txgate import pins as _pins
    from txgate.config.tokens import FILE, token_kind

    if tokens in cache:
        return cache[tokens]
    digests: list[bytes] = []
    for token in tokens:
        try:
            if token_kind(token) != FILE:
                digests.append(_pins.parse_pin(token))
            else:
                found = _pins.pins_from_file(token)
                if not found:
                    raise ValueError(f"{token}: no certificate, public key or CSR found")
                digests.extend(found)
        except (ValueError, OSError) as e:
            raise ConfigError(config.path, section, "pinned_public_keys", str(e)) from None
    result = (_pins.PinSet(digests), [_pins.format_pin(d) for d in dict.fromkeys(digests)])
    cache[tokens] = result
    return result


def upstream_trust(config: Config, api: ApiConfig, target, now: datetime, pin_cache: dict, plan: Plan | None = None,
                   store=None):
    """(PinCheck or None, client CertifiedKey or None) of one target: an API's own keys replace [security]'s."""
    from txgate.config import select_by_host
    from txgate.tls.pinning import PinCheck

    sec = config.security
    # [security] patterns match the name the certificate is checked for (upstream_server_name)
    # as well as the URL's host: the most specific rule over both applies.
    names = tuple(dict.fromkeys(n for n in (api.upstream_server_name, target.host) if n))
    if api.pinned_public_keys is not None:
        tokens, pin_section = api.pinned_public_keys, f"api:{api.name}"
    else:
        tokens, pin_section = select_by_host(sec.pinned_public_keys, names, target.port), "security"
    chain_check = None
    if tokens:
        pinset, printable = resolve_pins(config, pin_section, tokens, pin_cache)
        chain_check = PinCheck(pinset, printable, api.pin_mode or sec.pin_mode, api.name, target.label)
    client = None
    if api.upstream_certificate is not None:
        client = load_pair(config, f"api:{api.name}", "upstream_certificate", api.upstream_certificate, now,
                           plan, store)
    else:
        spec = select_by_host(sec.upstream_certificates, names, target.port)
        if spec is not None:
            client = load_pair(config, "security", "upstream_certificates", spec, now, plan, store)
    return chain_check, client
