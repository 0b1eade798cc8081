# -*- test-case-name: tests.test_routing -*-
"""Per-listener request dispatch: route, check, rewrite headers; a handler (echo, proxy) or a refusal."""
from __future__ import annotations

from twisted.logger import Logger

from txgate.config import ApiConfig
from txgate.errors import ClientCertificateNotAllowed, ClientCertificateRequired, GatewayError, NoRoute, RequestTooLarge
from txgate.http.echo import EchoHandler
from txgate.http.headers import VIA_H1, VIA_H2, header_lines, upstream_request_headers
from txgate.http.paths import routing_path
from txgate.http.requestid import ensure_request_id
from txgate.http.requests import Refusal
from txgate.http.router import Router, strip_prefix
from txgate.ocsp.client import OCSP_REFUSAL
from txgate.tls.clientauth import ALLOWED, NOT_ALLOWED, PEER, REQUIRED
from txgate.upstream.proxy import ProxyHandler, Upstream

log = Logger(namespace="txgate.dispatch")
XFCC = b"x-forwarded-client-cert"


class ApiRuntime:
    """What one API needs per request, built once per config."""

    __slots__ = ("config", "name", "upstream", "prefix", "allowlist", "xfcc")

    def __init__(self, config: ApiConfig, upstream: Upstream | None, allowlist=None) -> None:
        self.config = config
        self.name = config.name
        self.upstream = upstream
        self.prefix = config.path
        # clientauth.Allowlist when `mtls = require`, else None.
        self.allowlist = allowlist
        if config.mtls and allowlist is None:
            raise ValueError(f"api {config.name}: mtls = require needs its allowlist")
        self.xfcc = config.forward_client_cert == "xfcc"


class ListenerDispatcher:
    """The `Dispatcher` of one listener."""

    def __init__(self, listener: str, apis: list[ApiRuntime], clock, access_log, metrics=None, *,
                 challenges=None, redirect_https: bool = False, error_detail: bool = False) -> None:
        self.listener = listener
        # tls = off listeners: pending ACME HTTP-01 tokens (txgate.acme.challenges.ChallengeBoard), and
        # whether every other request is redirected to https.
        self.challenges = challenges
        self.redirect_https = redirect_https
        # `[gateway] error_detail`: error bodies carry the details (read by whoever answers an error).
        self.error_detail = error_detail
        self.router: Router[ApiRuntime] = Router((a.config.hosts, a.prefix, a) for a in apis)
        self.clock = clock
        self.access_log = access_log
        # The access log's writer, or None when it is off (no call per request then).
        self._record = access_log.record if getattr(access_log, "enabled", True) else None
        self.metrics = metrics

    def dispatch(self, stream, head):
        """Route one request and return its handler, or a `Refusal` the protocol answers."""
        try:
            path = routing_path(head.path)
        except GatewayError as err:
            return Refusal(err)
        if self.challenges is not None or self.redirect_https:
            special = self._plain_http(stream, head, path)
            if special is not None:
                return special
        found = self.router.match(head.host, path)
        if found is None:
            return Refusal(NoRoute(f"no API for host '{head.host}' and path '{path}'"))
        prefix, api = found
        cfg = api.config
        if api.allowlist is not None:
            revoked = stream.info.extra.get(OCSP_REFUSAL)  # client_ocsp: decided once per connection
            if revoked is not None:
                return Refusal(revoked, api.name)
            decision = stream.info.extra.get(api.name)
            if decision is None:
                decision = self._decide(stream.info, api)
            if decision != ALLOWED:
                err = ClientCertificateRequired() if decision == REQUIRED else ClientCertificateNotAllowed()
                return Refusal(err, api.name)
        if cfg.max_body_bytes and head.content_length is not None and head.content_length > cfg.max_body_bytes:
            return Refusal(RequestTooLarge(f"request body exceeds {cfg.max_body_bytes} bytes"), api.name)
        if cfg.strip_path:
            path = strip_prefix(prefix, path)
        info = stream.info
        original_host = head.authority
        headers = upstream_request_headers(  # (positional: a call with keywords costs more)
            head.headers, info.client_host, info.scheme, original_host,
            VIA_H2 if head.version == b"2" else VIA_H1, head.request_id or ensure_request_id(head),
        )
        if api.xfcc:
            peer = info.extra.get(PEER)
            if peer is not None:
                headers.append((XFCC, peer.xfcc()))
        if api.upstream is None:
            # Answered at body_finished, which both protocols call (also for bodyless requests).
            return EchoHandler(stream, head, path.encode("latin-1"), [(b"host", original_host)] + headers, api.name)
        query = head.query
        # The target's base path is added per pool (round robin may pick any target).
        target = path.encode("latin-1") + (b"?" + query if query or head.target[-1:] == b"?" else b"")
        if head.content_length is not None:
            end = b"content-length: %d\r\n\r\n" % head.content_length
        else:
            end = b"transfer-encoding: chunked\r\n\r\n" if head.has_body else b"\r\n"
        handler = ProxyHandler(
            api.upstream, stream, head, target, header_lines(headers) + end,
            original_host if cfg.preserve_host and original_host else None, self.clock,
        )
        handler.start()
        return handler

    def _plain_http(self, stream, head, path: str):
        """An ACME HTTP-01 answer, a redirect to https (redirect_https), or None (route as usual)."""
        from txgate.http.static import StaticHandler, https_location

        if self.challenges is not None and head.method in (b"GET", b"HEAD"):
            answer = self.challenges.http_answer(path)
            if answer is not None:
                return StaticHandler(stream, 200, [(b"content-type", b"text/plain")], answer.encode("ascii"),
                                     "acme:http-01")
        if self.redirect_https:
            return StaticHandler(stream, 308, [(b"location", https_location(head.authority, head.target))], b"",
                                 "redirect:https")
        return None

    def _decide(self, info, api: ApiRuntime) -> str:
        """The allowlist decision for this connection and API: computed once, cached in ``info.extra``."""
        peer = info.extra.get(PEER)
        try:
            decision = api.allowlist.decide(peer)
        except Exception:
            log.failure("client certificate decision for api {api} failed", api=api.name)
            decision = NOT_ALLOWED
        info.extra[api.name] = decision
        if decision != ALLOWED:
            # metrics hook: an allowlist refusal, once per connection and API (the decision is cached).
            if self.metrics is not None:
                self.metrics.handshake(self.listener, info.tls_version, "no_certificate" if decision == REQUIRED
                                       else "not_allowed")
            # One line per connection and API (the decision is cached), never per request.
            if peer is None:
                log.info("client {client} on {listener}: api {api}: {code}", client=info.client_host,
                         listener=self.listener, api=api.name, code=decision)
            else:
                log.info("client {client} on {listener}: api {api}: {code}: subject '{subject}' "
                         "sha256 {fp} chain {chain}", client=info.client_host, listener=self.listener,
                         api=api.name, code=decision, subject=_safe_subject(peer), fp=peer.fingerprint.hex(),
                         chain="verified" if peer.verified else "not verified")
        return decision

    def log_request(self, info, head, status, bytes_in, bytes_out, handler, started, ended) -> None:
        """Access log and metrics for one finished request."""
        if self._record is not None:
            self._record(info, head, status, bytes_in, bytes_out, handler, started, ended)
        if self.metrics is not None:
            self.metrics.request_done(handler, status, self.listener, ended - started, bytes_in, bytes_out)


def _safe_subject(peer) -> str:
    try:
        return peer.subject
    except Exception:
        return "?"
