# -*- test-case-name: tests.test_admin,tests.test_reload_unit,tests.test_expiry -*-
"""ServiceFacade: what the admin API, metrics and the expiry monitor may ask of the running gateway."""
from __future__ import annotations

from txgate.admin.facade import HeldCertificate, TargetState, target_state
from txgate.runtime.gateway import GatewayService


def _cert_fingerprint(cert) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex()


class ServiceFacade:
    """``txgate.admin.facade.GatewayFacade`` over the running GatewayService (what the admin API may ask)."""

    def __init__(self, service: GatewayService) -> None:
        self._service = service
        self.acme = None  # the AcmeService, when the config has ACME certificates (runtime.assemble)

    def acme_status(self) -> list[dict]:
        """Every ACME certificate's state (``GET /acme``); [] without ACME."""
        return self.acme.status() if self.acme is not None else []

    @property
    def store(self):
        """The DeferredStore of the running gateway (None before start, or without a store)."""
        return self._service.deferred_store

    @property
    def expiry_warning_days(self) -> int:
        return self._service.config.gateway.expiry_warning_days

    def reload(self, reason: str):
        """Rebuild from the config file and the store; Deferred[ReloadResult]."""
        return self._service.reload(reason)

    def certificate_usage(self) -> dict[str, list[str]]:
        """Store refs in use -> users; each entry ID a ref resolved to is listed too."""
        svc = self._service
        usage = {ref: list(users) for ref, users in svc.config.store_refs().items()}
        for ref, entry_id in svc.plan.store_ids.items():
            if entry_id != ref:
                users = usage.setdefault(entry_id, [])
                users.extend(u for u in usage.get(ref, []) if u not in users)
        return usage

    def held_certificates(self) -> list[HeldCertificate]:
        """Listener, SNI, allowlist, upstream client and CA certificates, plus the store's entries."""
        svc = self._service
        out = []
        seen = set()
        for name, role, cert in svc.plan.held:
            fp = _cert_fingerprint(cert)
            key = (name, role, fp)
            if key in seen:
                continue
            seen.add(key)
            out.append(HeldCertificate(name=name, role=role, fingerprint=fp, not_after=cert.not_valid_after_utc,
                                       subject=cert.subject.rfc4514_string()))
        for info in svc.store_listing:
            label = f"store:{info.name}" if info.name else f"store:{info.id}"
            out.append(HeldCertificate(name=label, role="store", fingerprint=info.fingerprint,
                                       not_after=info.not_after, subject=info.subject))
        return out

    def upstream_connections(self) -> dict[str, int]:
        """Open upstream connections per API, over every live generation."""
        svc = self._service
        out: dict[str, int] = {}
        for gen in [svc.current, *svc.retiring]:
            if gen is None:
                continue
            for api, up in gen.upstreams.items():
                n = sum(p.open_connections for p in up.pools) if up is not None else 0
                out[api] = out.get(api, 0) + n
        if svc.current is not None:
            for api in svc.current.upstreams:
                out.setdefault(api, 0)
        return out

    def listeners(self) -> list[tuple[str, str, bool]]:
        """(name, address actually bound (or configured), TLS?) of every listener, in config order."""
        from txgate.config.hostnames import host_port

        svc = self._service
        out = []
        for ln in svc.config.listeners:
            host, port = ln.host, ln.port
            try:
                addr = svc.ports[ln.name].getHost()
                host, port = addr.host, addr.port
            except Exception:
                pass  # not bound here (yet): the configured address
            out.append((ln.name, host_port(host, port), ln.tls))
        return out

    def upstream_targets(self) -> list[TargetState]:
        """Every API's targets with their state in this process (builtin APIs as one row)."""
        svc = self._service
        gen = svc.current
        out = []
        for api in svc.config.apis:
            route = " ".join(api.hosts) + (" " if api.hosts else "") + api.path
            up = gen.upstreams.get(api.name) if gen is not None else None
            if up is None:
                out.append(TargetState(api.name, route, "builtin:echo" if api.echo else "-", None, "builtin"))
                continue
            for pool in up.pools:
                if svc.role == "supervisor":  # the workers hold the connections and know the state
                    out.append(TargetState(api.name, route, pool.label, None, "in workers"))
                    continue
                out.append(TargetState(api.name, route, pool.label, pool.open_connections,
                                       *target_state(pool.last_success, pool.last_failure)))
        return out
