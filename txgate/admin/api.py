# -*- test-case-name: tests.test_admin -*-
"""The admin API as a `twisted.web` resource: certificate store operations, reload, health, metrics, status page.

Every answer is JSON (``/metrics`` excepted: Prometheus text; ``/``: the HTML status page); every error is
``{"error": CODE, "message": TEXT}`` with a stable CODE (the store's ``StoreError`` codes, plus
``unauthorized``, ``forbidden_origin``, ``not_found``, ``method_not_allowed``, ``invalid_request``,
``unsupported_media_type``, ``request_too_large``, ``no_store``, ``reload_failed``,
``internal_error``). No request body is ever logged or echoed, and no response carries key
material: certificate metadata comes from ``CertInfo`` (which has none).

Browsers (CSRF, DNS rebinding): the default admin API is plain HTTP on loopback without
authentication, so every request is checked before anything else. Its ``Host`` must name this API
(the bind address, ``localhost``, ``127.0.0.1``, ``[::1]`` or a name in ``[admin] allowed_hosts``,
case-insensitive, with or without the bound port; with a wildcard bind also the local address the
connection came in on): a DNS-rebound page sends its own name. A request carrying ``Origin``
(browsers send it on every cross-origin request and on every POST; curl, scripts and Prometheus do
not) must come from this API's own origin (its scheme, one of those names, its port). Both refusals
are ``403 forbidden_origin``. Request bodies must be typed ``application/json`` (``POST /csr``) or
``application/x-pem-file`` / ``application/octet-stream`` (PEM uploads), types a browser cannot send
cross-origin without a CORS preflight (which this API never grants): ``415 unsupported_media_type``.

A store write through the API does not call ``facade.reload`` itself: the gateway reloads on the
store's own change notification (which also reaches every gateway of a fleet sharing a Redis store).
``POST /reload`` reloads explicitly.
"""
from __future__ import annotations

import hmac
import json
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txgate.store import StoreError, parse_ref, split_pem_bundle

log = Logger()

MAX_BODY = 1 << 20  # PEM chains and CSR requests are a few KB
JSON_TYPE = b"application/json"
# Request body types: none is a CORS "simple request" type, so a browser preflights them (and fails).
JSON_BODY_TYPES = ("application/json",)
PEM_BODY_TYPES = ("application/x-pem-file", "application/octet-stream")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = ("", "0.0.0.0", "::")


class ApiError(Exception):
    """An error answer: HTTP status, stable code, one-line message (never secret)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body of the error."""
        return {"error": self.code, "message": self.message, **self.extra}


class Raw:
    """A non-JSON answer (the metrics text, the status page), with its extra headers."""

    def __init__(self, status: int, body: bytes, content_type: str, headers: tuple = ()) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


def _strip_store_prefix(ref: str) -> str:
    return ref[6:] if ref.startswith("store:") else ref


def used_by(usage: dict[str, list[str]], name: str | None, version: int | None, entry_id: str,
            current: bool) -> list[str]:
    """Who uses one stored certificate, from ``facade.certificate_usage()`` (refs NAME, NAME@V, ID)."""
    users: list[str] = []
    entry_id = entry_id.lower()
    refs = {entry_id}
    if name is not None:
        if version is not None:
            refs.add(f"{name}@{version}")
        if current:
            refs.add(name)
    for ref, who in usage.items():
        r = _strip_store_prefix(ref)
        if r in refs or r.lower() == entry_id:  # IDs in any case; names are case-sensitive
            users.extend(w for w in who if w not in users)
    return users


def _users_of_name(usage: dict[str, list[str]], name: str, ids: set[str]) -> list[str]:
    """Who uses any version of ``name`` (NAME, NAME@V, or one of its IDs)."""
    users: list[str] = []
    for ref, who in usage.items():
        r = _strip_store_prefix(ref)
        if r == name or r.startswith(name + "@") or r.lower() in ids:
            users.extend(w for w in who if w not in users)
    return users


def _host_name(host: str) -> str:
    """A host as compared here: lower case, IPv6 without brackets."""
    return host.strip().strip("[]").lower()


def _split_host_port(value: str) -> tuple[str, str | None] | None:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` -> (host, port or None); None if malformed."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        return host.lower(), (rest[1:] if rest else None)
    host, sep, port = value.partition(":")
    if ":" in port:
        return None  # an unbracketed IPv6 address is not a valid Host
    return host.lower(), (port if sep else None)


def _host_is_ours(value: str, names: frozenset[str], port: int) -> bool:
    parts = _split_host_port(value)
    if parts is None:
        return False
    host, given_port = parts
    if host not in names:
        return False
    return given_port is None or (given_port.isdigit() and int(given_port) == port)


def _origin_is_ours(origin: str, scheme: str, names: frozenset[str], port: int) -> bool:
    """Whether ``Origin`` is this API itself (``null`` and every other site are not)."""
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme.lower() != scheme or parts.username is not None or parts.path not in ("", "/"):
        return False
    if parts.query or parts.fragment or parts.hostname is None or _host_name(parts.hostname) not in names:
        return False
    return (origin_port if origin_port is not None else (443 if scheme == "https" else 80)) == port


class AdminResource(Resource):
    """The whole admin API (a leaf resource: it routes on method and path itself)."""

    isLeaf = True

    def __init__(self, facade: Any, *, metrics: Any = None, token: bytes | None = None,
                 bind_host: str = "127.0.0.1", tls: bool = False, allowed_hosts: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.facade = facade
        self.metrics = metrics
        self._token = token
        self._scheme = "https" if tls else "http"
        host = _host_name(bind_host)
        self._wildcard = host in _WILDCARDS
        # allowed_hosts: names validated by the config (no port, no wildcard); compared lower case.
        extra = {_host_name(h) for h in allowed_hosts}
        self._names = LOOPBACK_NAMES | extra if self._wildcard else LOOPBACK_NAMES | extra | {host}
        # (method, pattern, handler, needs_auth); "*" in a pattern is one path segment.
        self._routes: list[tuple[bytes, tuple[str, ...], Callable[..., Any], bool]] = [
            (b"GET", (), self.status_page, True),
            (b"GET", ("health",), self.health, False),
            (b"GET", ("metrics",), self.get_metrics, True),
            (b"GET", ("certs",), self.list_certs, True),
            (b"POST", ("certs",), self.upload, True),
            (b"GET", ("certs", "*"), self.show, True),
            (b"PUT", ("certs", "*"), self.complete, True),
            (b"DELETE", ("certs", "*"), self.delete, True),
            (b"POST", ("certs", "*", "rollback"), self.rollback, True),
            (b"POST", ("csr",), self.create_csr, True),
            (b"GET", ("csr", "*"), self.show_csr, True),
            (b"POST", ("reload",), self.reload, True),
            (b"GET", ("acme",), self.acme_status, True),
        ]

    # -- plumbing ----------------------------------------------------------------------------
    def render(self, request: Any) -> Any:
        d = defer.maybeDeferred(self._handle, request)
        d.addErrback(self._error, request)
        d.addCallback(self._write, request)
        d.addErrback(lambda f: log.failure("admin API: writing the response failed", failure=f))
        return NOT_DONE_YET

    def _route(self, request: Any) -> tuple[Callable[..., Any], list[str], bool]:
        path = request.path.split(b"?", 1)[0].decode("latin-1")
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        method = request.method
        if method == b"HEAD":
            method = b"GET"
        allowed = []
        for m, pattern, handler, auth in self._routes:
            if len(pattern) != len(segments):
                continue
            if all(p == "*" or p == s for p, s in zip(pattern, segments)):
                if m == method:
                    args = [s for p, s in zip(pattern, segments) if p == "*"]
                    return handler, args, auth
                allowed.append(m.decode())
        if allowed:
            request.setHeader(b"allow", ", ".join(sorted(set(allowed))).encode())
            raise ApiError(405, "method_not_allowed", f"{request.method.decode('latin-1')} is not allowed here "
                           f"(allowed: {', '.join(sorted(set(allowed)))})")
        raise ApiError(404, "not_found", f"no admin endpoint {path}")

    def _handle(self, request: Any) -> Any:
        self._check_origin(request)
        handler, args, needs_auth = self._route(request)
        if needs_auth:
            self._authorize(request)
        return handler(request, *args)

    def _own_names(self, request: Any) -> frozenset[str]:
        """The host names this API answers to (with a wildcard bind, also the connection's local address)."""
        if not self._wildcard:
            return self._names
        local = _host_name(str(getattr(request.getHost(), "host", "")))
        return self._names | {local} if local else self._names

    def _check_origin(self, request: Any) -> None:
        """Refuse what a browser sends for another site: a foreign Host (DNS rebinding) or Origin (CSRF)."""
        names = self._own_names(request)
        port = request.getHost().port
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) > 1 or (hosts and not _host_is_ours(hosts[0].decode("latin-1"), names, port)):
            raise ApiError(403, "forbidden_origin",
                           "the Host header does not name this admin API (use localhost, 127.0.0.1, [::1], "
                           "its bind address or a name in [admin] allowed_hosts)")
        for origin in request.requestHeaders.getRawHeaders(b"origin") or []:
            if not _origin_is_ours(origin.decode("latin-1"), self._scheme, names, port):
                raise ApiError(403, "forbidden_origin",
                               "cross-origin requests are refused (requests from a web browser: use curl or "
                               "another non-browser client)")

    def _authorize(self, request: Any) -> None:
        """Bearer token check (constant time); client certificates were checked by the TLS handshake."""
        if self._token is None:
            return
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            request.setHeader(b"www-authenticate", b'Bearer realm="txgate-admin"')
            raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")

    def _error(self, failure: Any, request: Any) -> ApiError:
        exc = failure.value
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, StoreError):
            return ApiError(exc.http_status, exc.code, exc.reason)
        log.failure("admin API: {method} {path} failed", failure=failure,
                    method=request.method.decode("latin-1"), path=request.path.decode("latin-1"))
        return ApiError(500, "internal_error", "internal error (see the gateway log)")

    def _write(self, result: Any, request: Any) -> None:
        if getattr(request, "_disconnected", False) or request.finished:
            return
        if isinstance(result, Raw):
            status, body, ctype = result.status, result.body, result.content_type.encode()
            for name, value in result.headers:
                request.setHeader(name, value)
        else:
            if isinstance(result, ApiError):
                status, obj = result.status, result.body()
            else:
                status, obj = result
            body = json.dumps(obj, indent=2, sort_keys=False).encode() + b"\n"
            ctype = JSON_TYPE
        request.setResponseCode(status)
        request.setHeader(b"content-type", ctype)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", str(len(body)).encode())
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _require_type(self, request: Any, allowed: tuple[str, ...]) -> None:
        """415 unless the body's Content-Type (parameters aside) is one of ``allowed``."""
        given = (request.getHeader(b"content-type") or b"").decode("latin-1")
        media = given.split(";", 1)[0].strip().lower()
        if media not in allowed:
            raise ApiError(415, "unsupported_media_type",
                           f"send the body with Content-Type: {' or '.join(allowed)}"
                           + (f" (got {media!r})" if media else " (none given)"))

    def _pem_body(self, request: Any) -> bytes:
        self._require_type(request, PEM_BODY_TYPES)
        return self._body(request)

    def _body(self, request: Any) -> bytes:
        content = request.content
        content.seek(0)
        data = content.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise ApiError(413, "request_too_large", f"request body above {MAX_BODY} bytes")
        return data

    def _json_body(self, request: Any) -> dict[str, Any]:
        self._require_type(request, JSON_BODY_TYPES)
        raw = self._body(request)
        try:
            obj = json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(400, "invalid_request", "the body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "invalid_request", "the body must be a JSON object")
        return obj

    def _store(self) -> Any:
        store = self.facade.store
        if store is None:
            raise ApiError(503, "no_store", "no certificate store is configured")
        return store

    def _usage(self) -> dict[str, list[str]]:
        return self.facade.certificate_usage() or {}

    # -- endpoints ---------------------------------------------------------------------------
    def health(self, request: Any) -> tuple[int, dict]:
        """GET /health."""
        return 200, {"status": "ok"}

    def status_page(self, request: Any) -> Raw:
        """GET /: the HTML status page (txgate.admin.status)."""
        from datetime import datetime, timezone

        from txgate import __version__
        from txgate.admin.status import CSP, render_status

        facade = self.facade
        metrics = self.metrics
        body = render_status(
            version=__version__, listeners=facade.listeners(), held=facade.held_certificates(),
            targets=facade.upstream_targets(),
            failures=metrics.recent_handshake_failures() if metrics is not None else [],
            now=datetime.now(timezone.utc), warning_days=getattr(facade, "expiry_warning_days", 30),
        )
        return Raw(200, body, "text/html; charset=utf-8",
                   ((b"content-security-policy", CSP), (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")))

    def acme_status(self, request: Any) -> tuple[int, dict]:
        """GET /acme: per ACME certificate, issuer, expiry, next renewal (and why), last error."""
        status = getattr(self.facade, "acme_status", None)
        return 200, {"certificates": (status() if status is not None else None) or []}

    def get_metrics(self, request: Any) -> Raw:
        """GET /metrics: Prometheus text format."""
        if self.metrics is None:
            raise ApiError(404, "not_found", "metrics are not enabled")
        body, ctype = self.metrics.exposition()
        return Raw(200, body, ctype)

    @defer.inlineCallbacks
    def list_certs(self, request: Any):
        """GET /certs: the current version of every name, then unnamed entries, with who uses them."""
        store = self._store()
        infos = yield store.list()
        pending = yield store.pending_names()
        usage = self._usage()
        certs = [self._describe(i, usage) for i in infos]
        return 200, {"certificates": certs, "pending": list(pending)}

    @defer.inlineCallbacks
    def show(self, request: Any, ref: str):
        """GET /certs/{ID | NAME | NAME@VERSION}: one entry's metadata (and a name's history)."""
        store = self._store()
        kind, value, version = parse_ref(ref)
        usage = self._usage()
        if kind == "name":
            history = yield store.history(value)
            wanted = version if version is not None else next((i.version for i in history if i.current), None)
            info = next((i for i in history if i.version == wanted), None)
            if info is None:
                raise ApiError(404, "not_found", f"store entry {value!r} has no version {wanted}")
            out = self._describe(info, usage)
            out["history"] = [self._describe(i, usage) for i in history]
            return 200, out
        infos = yield store.list()
        info = next((i for i in infos if i.id == value), None)
        if info is None:
            # A past version of some name: get() knows it (the key it decrypts is dropped at once).
            stored = yield store.get(value)
            info = stored.info
            del stored
        return 200, self._describe(info, usage)

    def _describe(self, info: Any, usage: dict[str, list[str]]) -> dict[str, Any]:
        d = info.as_dict()
        d["used_by"] = used_by(usage, info.name, info.version, info.id, info.current)
        return d

    @defer.inlineCallbacks
    def upload(self, request: Any):
        """POST /certs[?name=NAME]: a PEM chain and optional key -> 201 {id, name, version}."""
        store = self._store()
        names = request.args.get(b"name") or [None]
        name = names[0].decode("utf-8", "replace") if names[0] is not None else None
        if name == "":
            name = None
        chain, key = split_pem_bundle(self._pem_body(request))
        entry = yield store.put(name, chain, key)
        log.info("admin API: stored {ref} (id {id}, version {version}, key {has_key})",
                 ref=entry.name or entry.id, id=entry.id, version=entry.version,
                 has_key="yes" if key is not None else "no")
        return 201, {"id": entry.id, "name": entry.name, "version": entry.version}

    @defer.inlineCallbacks
    def complete(self, request: Any, name: str):
        """PUT /certs/{name}: the signed chain for the pending key of ``name`` -> 200 {id, name, version}."""
        store = self._store()
        chain, key = split_pem_bundle(self._pem_body(request))
        if key is not None:
            raise ApiError(400, "invalid_request",
                           "PUT /certs/{name} pairs the chain with the pending key made by POST /csr: send no key")
        entry = yield store.complete_pending(name, chain)
        log.info("admin API: completed the pending key of {name} (id {id}, version {version})",
                 name=entry.name, id=entry.id, version=entry.version)
        return 200, {"id": entry.id, "name": entry.name, "version": entry.version}

    @defer.inlineCallbacks
    def delete(self, request: Any, ref: str):
        """DELETE /certs/{ID | NAME}: 409 while the gateway uses it."""
        store = self._store()
        kind, value, version = parse_ref(ref)
        if version is not None:
            raise ApiError(400, "invalid_ref", f"cannot delete one version ({ref!r}): delete the name, or roll it back")
        usage = self._usage()
        if kind == "name":
            history = yield store.history(value)
            users = _users_of_name(usage, value, {i.id for i in history})
        else:
            yield store.resolve(value)  # 404 first for an unknown ID
            users = used_by(usage, None, None, value, True)
        if users:
            raise ApiError(409, "in_use", f"{ref} is in use by {', '.join(users)}", used_by=users)
        yield store.delete(value)
        log.info("admin API: deleted {ref}", ref=value)
        return 200, {"deleted": value}

    @defer.inlineCallbacks
    def rollback(self, request: Any, name: str):
        """POST /certs/{name}/rollback: the previous version becomes current -> 200 {id, name, version}."""
        store = self._store()
        entry = yield store.rollback(name)
        log.info("admin API: rolled {name} back to version {version}", name=entry.name, version=entry.version)
        return 200, {"id": entry.id, "name": entry.name, "version": entry.version}

    @defer.inlineCallbacks
    def create_csr(self, request: Any):
        """POST /csr {name, dns, ips, key_type?, common_name?}: a key made and kept here -> 201 {name, csr}."""
        store = self._store()
        body = self._json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "invalid_request", "'name' (a store name) is required")
        lists = {}
        for field in ("dns", "ips"):
            value = body.get(field, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ApiError(400, "invalid_request", f"'{field}' must be a list of strings")
            lists[field] = value
        if not lists["dns"] and not lists["ips"]:
            raise ApiError(400, "invalid_request", "give at least one name in 'dns' or address in 'ips'")
        key_type = body.get("key_type", "ec")
        if key_type not in ("ec", "rsa"):
            raise ApiError(400, "invalid_request", "'key_type' must be 'ec' or 'rsa'")
        common_name = body.get("common_name")
        if common_name is not None and not isinstance(common_name, str):
            raise ApiError(400, "invalid_request", "'common_name' must be a string")
        unknown = sorted(set(body) - {"name", "dns", "ips", "key_type", "common_name"})
        if unknown:
            raise ApiError(400, "invalid_request", f"unknown field(s): {', '.join(unknown)}")
        csr = yield store.create_pending_key(name, lists["dns"], lists["ips"], key_type=key_type,
                                             common_name=common_name)
        log.info("admin API: created a pending key and CSR for {name}", name=name)
        return 201, {"name": name, "csr": csr.decode("ascii")}

    @defer.inlineCallbacks
    def show_csr(self, request: Any, name: str):
        """GET /csr/{name}: the CSR of a pending key (again)."""
        store = self._store()
        csr = yield store.pending_csr(name)
        return 200, {"name": name, "csr": csr.decode("ascii")}

    @defer.inlineCallbacks
    def reload(self, request: Any):
        """POST /reload: rebuild from the config file and the store; 422 keeps the running config."""
        result = yield defer.maybeDeferred(self.facade.reload, "admin API")
        if result.ok:
            return 200, {"ok": True, "message": result.message}
        raise ApiError(422, "reload_failed", result.message, ok=False)
