# -*- test-case-name: tests.test_reload_unit -*-
"""A generation: the runtime objects built from one Plan (dispatchers, listener factories, upstream pools)."""
from __future__ import annotations

from txgate.accesslog import AccessLog
from txgate.config import ApiConfig
from txgate.runtime.dispatch import ApiRuntime, ListenerDispatcher
from txgate.http.exchange import Limits
from txgate.runtime.listener import ListenerFactory, wrap_tls
from txgate.plan import Plan


class Generation:
    """The runtime objects built from one Plan; connections keep the generation they started with."""

    def __init__(self, plan: Plan, access_log: AccessLog) -> None:
        self.plan = plan
        self.config = plan.config
        self.access_log = access_log
        self.factories: dict[str, ListenerFactory] = {}
        self.tops: dict[str, object] = {}  # listener name -> what its port hands connections to (TLS or not)
        self.upstreams: dict[str, object] = {}
        self.old_connections: set = set()  # downstream connections still using this generation (once retired)

    def close_upstreams(self) -> None:
        """Close every upstream pool of this generation."""
        for up in self.upstreams.values():
            if up is not None:
                up.close()

    def discard(self, previous: Generation | None) -> None:
        """Undo a generation that never went live (its access log stays when ``previous`` shares it)."""
        self.close_upstreams()
        if previous is None or self.access_log is not previous.access_log:
            self.access_log.close()


def build_generation(plan: Plan, reactor, *, connections: dict[str, set], metrics=None,
                     previous: Generation | None = None, challenges=None, ocsp=None) -> Generation:
    """A generation's runtime objects (nothing listens yet); reuses ``previous``'s access log if unchanged.

    ``connections`` (listener name -> open connections) is shared by every generation, so that
    max_connections and shutdown see every connection of a listener. ``challenges`` (the pending
    ACME challenges, shared by every generation) is answered on tls = off listeners (HTTP-01) and in
    TLS handshakes (TLS-ALPN-01). ``ocsp`` (a ``txgate.ocsp.service.OCSPService``) gives listeners
    with ``client_ocsp`` their status checks.
    """
    cfg = plan.config
    if previous is not None and (previous.config.gateway.access_log, previous.config.gateway.log_format) == (
            cfg.gateway.access_log, cfg.gateway.log_format):
        access_log = previous.access_log
    else:
        access_log = AccessLog(cfg.gateway.access_log, cfg.gateway.log_format)
    gen = Generation(plan, access_log)
    try:
        runtimes = {}
        for api in cfg.apis:
            up = None if api.echo else build_upstream(api, plan, reactor)
            gen.upstreams[api.name] = up
            runtimes[api.name] = ApiRuntime(api, up, plan.allowlists.get(api.name))
        for ln in cfg.listeners:
            apis = [runtimes[a.name] for a in cfg.apis_for(ln.name)]
            dispatcher = ListenerDispatcher(ln.name, apis, reactor, access_log, metrics=metrics,
                                            challenges=None if ln.tls else challenges,
                                            redirect_https=bool(ln.redirect_https),
                                            error_detail=cfg.gateway.error_detail)
            limits = Limits(ln.max_header_bytes, ln.header_timeout, ln.idle_timeout)
            factory = ListenerFactory(ln.name, dispatcher, limits, reactor, tls=ln.tls,
                                      max_connections=ln.max_connections,
                                      client_certs=plan.client_verifiers.get(ln.name), metrics=metrics,
                                      h2_engine=plan.h2_engine,
                                      client_ocsp=ocsp.client_policy(plan, ln) if ocsp is not None else None)
            factory.connections = connections.setdefault(ln.name, set())
            gen.factories[ln.name] = factory
            if ln.tls:
                plan.server_tls[ln.name].challenges = challenges
                gen.tops[ln.name] = wrap_tls(factory, plan.server_tls[ln.name], reactor)
            else:
                gen.tops[ln.name] = factory
    except Exception:
        gen.discard(previous)
        raise
    return gen


def build_upstream(api: ApiConfig, plan: Plan, reactor):
    """An API's Upstream: one connection pool per target, with its TLS from the plan."""
    from txgate.upstream.pool import TargetPool
    from txgate.upstream.proxy import Upstream

    pools = [
        TargetPool(
            reactor, t,
            tls_creator=plan.upstream_tls.get((api.name, t.label)),
            max_connections=api.max_connections, max_pending=api.max_pending,
            connect_timeout=api.connect_timeout, max_response_header_bytes=api.max_response_header_bytes,
        )
        for t in api.upstreams
    ]
    return Upstream(api.name, pools, timeout=api.timeout, max_body_bytes=api.max_body_bytes,
                    error_detail=plan.config.gateway.error_detail)
