# -*- test-case-name: tests.test_config,tests.test_state_dir -*-
"""Server TLS of each listener: its certificates (files, store, the local CA) and SNI table."""
from __future__ import annotations

from datetime import datetime

from txgate.config import Config, ConfigError, ListenerConfig
from txgate.plan.model import Plan
from txgate.plan.ocsp import staple_lookup, staple_target, warn_client_ocsp
from txgate.plan.pairs import load_pair, warn_expiry


def prepare_listeners(config: Config, plan: Plan, now: datetime, *, create_state: bool, store=None) -> None:
    """A ServerTLS for each TLS listener into ``plan.server_tls`` (none without create_state on the local CA)."""
    local = LocalIssuer(config, plan, now)
    for ln in config.listeners:
        if ln.tls:
            _prepare_listener(config, plan, ln, local, now, create_state=create_state, store=store)


def _prepare_listener(config: Config, plan: Plan, ln: ListenerConfig, local: LocalIssuer, now: datetime, *,
                      create_state: bool, store) -> None:
    from txgate.tls.certs import names_cover
    from txgate.tls.server import DuplicateSNIName, ServerTLS, TLSSettingError, check_tls_settings

    section = f"listener:{ln.name}"
    warn_client_ocsp(plan, ln)
    try:
        check_tls_settings(min_tls=ln.min_tls, max_tls=ln.max_tls, ciphers=ln.ciphers,
                           tls13_ciphersuites=ln.tls13_ciphersuites, groups=ln.groups)
    except TLSSettingError as e:
        raise ConfigError(config.path, section, e.key, f"rejected by OpenSSL: {e}") from None
    if ln.certificate.local:
        default = local.issue(local_names(config, ln)) if create_state else None
    elif ln.certificate.acme is not None:
        default = acme_pair(plan, section, ln.certificate, local, store, now, create_state=create_state)
    else:
        default = load_pair(config, section, "certificate", ln.certificate, now, plan, store)
        if default is None and create_state:  # a Kubernetes certificate not there yet: a local placeholder
            default = local.issue(local_names(config, ln))
    if default is not None:
        warn_expiry(plan, section, "certificate", default, now)
        plan.held.append((section, "listener", default.leaf))
        staple_target(config, plan, ln, "certificate", section, default, now)
    sni = []
    for name, spec in ln.sni:
        if spec.local:
            if not create_state:
                continue
            ck = local.issue([name])
        elif spec.acme is not None:
            ck = acme_pair(plan, section, spec, local, store, now, create_state=create_state)
            if ck is None:
                continue
        else:
            ck = load_pair(config, section, "sni", spec, now, plan, store)
            if ck is None:  # a Kubernetes certificate not there yet
                if not create_state:
                    continue
                ck = local.issue([name])
            elif not names_cover(ck.leaf, name):
                plan.warn(section, "sni", f"certificate {spec.cert_path or spec.label} does not cover '{name}' "
                          f"(its names: {', '.join(ck.dns_names + [str(i) for i in ck.ip_addresses]) or 'none'})")
        warn_expiry(plan, section, "sni", ck, now)
        plan.held.append((f"{section} sni:{name}", "sni", ck.leaf))
        staple_target(config, plan, ln, "sni", f"{section} sni:{name}", ck, now)
        sni.append((name, ck))
    if default is None:
        return
    try:
        plan.server_tls[ln.name] = ServerTLS(
            default=default, sni=sni, min_tls=ln.min_tls, max_tls=ln.max_tls, ciphers=ln.ciphers,
            tls13_ciphersuites=ln.tls13_ciphersuites, groups=ln.groups, alpn=ln.alpn,
            session_tickets=ln.session_tickets,
            client_verifier=plan.client_verifiers.get(ln.name),
            staple=staple_lookup(plan) if plan.staples else None,
            hand_over=config.gateway.tls_record_layer == "txgate",
        )
    except TLSSettingError as e:
        raise ConfigError(config.path, section, e.key, f"rejected by OpenSSL: {e}") from None
    except DuplicateSNIName as e:  # two sni entries that name the same host after normalisation
        raise ConfigError(config.path, section, e.key, _openssl_message(e)) from None
    except Exception as e:  # e.g. a key that does not match its certificate
        raise ConfigError(config.path, section, "certificate", _openssl_message(e)) from None


def acme_pair(plan: Plan, section: str, spec, local: LocalIssuer, store, now: datetime, *, create_state: bool):
    """The ACME certificate of ``spec`` from the store (``acme/NAME``), or a local-CA placeholder for its
    names until it is issued (None without create_state)."""
    from txgate.store import StoreError
    from txgate.tls.certs import names_cover

    slot = spec.acme_slot
    got = None
    if store is not None:
        try:
            got = store.get(slot)
        except StoreError:
            got = None
    if got is not None and got.key is not None and now < got.info.not_after \
            and all(names_cover(got.chain[0], n) for n in spec.acme):
        plan.store_ids[slot] = got.id
        return got.certified_key()
    plan.acme_placeholders.append((section, spec.acme))
    return local.issue(list(spec.acme)) if create_state else None


def local_names(config: Config, listener: ListenerConfig) -> list[str]:
    """The names a local-CA certificate of a listener covers: loopback, its bind host, its APIs' hosts."""
    names = ["localhost", "127.0.0.1", "::1"]
    if listener.host not in ("", "0.0.0.0", "::") and listener.host not in names:
        names.append(listener.host)
    for api in config.apis_for(listener.name):
        for h in api.hosts:
            if h not in names:
                names.append(h)
    return names


class LocalIssuer:
    """The local CA, opened on first use; its errors name [gateway] state_dir."""

    def __init__(self, config: Config, plan: Plan, now: datetime) -> None:
        self.config, self.plan, self.now = config, plan, now
        self.ca = None

    def issue(self, names: list[str]):
        """A server certificate for ``names`` from the local CA (created in state_dir if needed)."""
        from txgate.tls.certs import CertificateError
        from txgate.tls.localca import LocalCA

        try:
            if self.ca is None:
                self.ca = LocalCA.ensure(self.config.gateway.state_dir, now=self.now)
                self.plan.local_ca_path = self.ca.ca_path
                self.plan.held.append(("local CA", "ca", self.ca.certificate))
            return self.ca.issue_server(names, now=self.now)
        except (CertificateError, OSError) as e:
            raise ConfigError(self.config.path, "gateway", "state_dir", _os_message(e)) from None


def _os_message(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


def _openssl_message(e: Exception) -> str:
    text = str(e)
    return text if len(text) < 200 else text[:200] + "..."
