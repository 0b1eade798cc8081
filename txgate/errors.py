"""Errors users see: each has a stable code used in JSON bodies, log lines and metrics."""
from __future__ import annotations


class GatewayError(Exception):
    """A request-level failure with a stable code and an HTTP status."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str = "", code: str | None = None, status: int | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class NoRoute(GatewayError):
    code, status = "no_route", 404


class BadRequest(GatewayError):
    code, status = "bad_request", 400


class RequestTooLarge(GatewayError):
    code, status = "request_too_large", 413


class HeadersTooLarge(GatewayError):
    code, status = "headers_too_large", 431


class ClientCertificateRequired(GatewayError):
    code, status = "client_certificate_required", 403

    def __init__(self, message: str = "this API requires a client certificate", **kw) -> None:
        super().__init__(message, **kw)


class ClientCertificateNotAllowed(GatewayError):
    code, status = "client_certificate_not_allowed", 403

    def __init__(self, message: str = "this client certificate is not allowed for this API", **kw) -> None:
        super().__init__(message, **kw)


class UpstreamUnavailable(GatewayError):
    code, status = "upstream_unavailable", 502


class UpstreamTLSError(GatewayError):
    code, status = "upstream_tls_error", 502


class UpstreamTimeout(GatewayError):
    code, status = "upstream_timeout", 504


class UpstreamBusy(GatewayError):
    code, status = "upstream_busy", 503


class UpstreamProtocolError(GatewayError):
    code, status = "upstream_protocol_error", 502


class UpstreamPinMismatch(UpstreamTLSError):
    code, status = "upstream_pin_mismatch", 502
