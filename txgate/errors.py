# -*- test-case-name: tests.test_requests -*-
"""Errors users see: each class is one (status, code, default message, public message) of the error responses.

The code is the contract: JSON bodies, log lines and metrics labels use it. Every error
response txgate writes (h1, h2, dispatch, the proxy) comes from one of these. Clients get the
code, the class's ``public_message`` and a request ID; ``message`` (the details: upstream URLs,
TLS reasons, pins) goes to the log with the same ID, and into the body only with
``[gateway] error_detail = on``.
"""
from __future__ import annotations


class GatewayError(Exception):
    """A request-level failure with a stable code, an HTTP status and a message."""

    code = "internal_error"
    status = 500
    # The message when none is given ("" means the code).
    default_message = ""
    # What clients are told (no detail about the inside).
    public_message = "internal error"

    def __init__(self, message: str = "", code: str | None = None, status: int | None = None) -> None:
        message = message or self.default_message or self.code
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __init_subclass__(cls, code: str | None = None, status: int | None = None, message: str = "",
                          public: str = "", **kw) -> None:
        super().__init_subclass__(**kw)
        if public:
            cls.public_message = public
        if code is not None:
            cls.code = code
        if status is not None:
            cls.status = status
        if message:
            cls.default_message = message


class InternalError(GatewayError, message="internal error"):
    """Something failed inside txgate (the log has the traceback)."""


class BadRequest(GatewayError, code="bad_request", status=400, public="malformed request"):
    """A malformed or ambiguous request."""


class TransferCodingNotSupported(GatewayError, code="transfer_coding_not_supported", status=501,
                                 public="transfer coding not supported"):
    """A request body in a transfer coding other than chunked (RFC 9112 6.1)."""


class NoRoute(GatewayError, code="no_route", status=404, public="no API for this host and path"):
    """No API for the request's host and path."""


class RequestTooLarge(GatewayError, code="request_too_large", status=413, public="request body too large"):
    """A request body over the API's max_body_bytes."""


class HeadersTooLarge(GatewayError, code="headers_too_large", status=431,
                      message="request headers are too large", public="request headers are too large"):
    """A request head over the listener's max_header_bytes."""


class VersionNotSupported(GatewayError, code="http_version_not_supported", status=505,
                          public="HTTP version not supported"):
    """An HTTP version other than 1.0, 1.1 and 2."""


class ClientCertificateRequired(GatewayError, code="client_certificate_required", status=403,
                                message="this API requires a client certificate",
                                public="this API requires a client certificate"):
    """An mTLS API reached without a client certificate."""


class ClientCertificateNotAllowed(GatewayError, code="client_certificate_not_allowed", status=403,
                                  message="this client certificate is not allowed for this API",
                                  public="this client certificate is not allowed for this API"):
    """An mTLS API reached with a certificate its allowlist does not name."""


class UpstreamUnavailable(GatewayError, code="upstream_unavailable", status=502,
                          public="the upstream service is unavailable"):
    """No upstream target could be reached."""


class UpstreamTLSError(GatewayError, code="upstream_tls_error", status=502,
                       public="TLS with the upstream service failed"):
    """The TLS handshake with the upstream failed."""


class UpstreamPinMismatch(UpstreamTLSError, code="upstream_pin_mismatch"):
    """The upstream's certificate chain matched none of the API's pins."""


class UpstreamTimeout(GatewayError, code="upstream_timeout", status=504,
                      public="the upstream service did not answer in time"):
    """The upstream did not answer in time."""


class UpstreamBusy(GatewayError, code="upstream_busy", status=503, public="the upstream service is busy"):
    """Every connection to the upstream is in use and the queue is full."""


class UpstreamProtocolError(GatewayError, code="upstream_protocol_error", status=502,
                            public="the upstream service sent an invalid response"):
    """The upstream's response was not valid HTTP/1.1."""


class UpstreamHeadersTooLarge(UpstreamProtocolError, code="upstream_headers_too_large"):
    """The upstream's response head grew past the API's max_response_header_bytes."""


class UpstreamTruncated(GatewayError, code="upstream_truncated", status=502,
                        public="the upstream service's response was cut short"):
    """The upstream's response ended before its framing said it would (logged; the client sees the cut)."""


class ClientCertificateRevoked(GatewayError, code="client_certificate_revoked", status=403,
                               message="this client certificate is revoked"):
    """An mTLS API reached with a certificate its issuer's OCSP responder says is revoked."""


class ClientCertificateStatusUnknown(GatewayError, code="client_certificate_status_unknown", status=403,
                                     message="the status of this client certificate cannot be established"):
    """`client_ocsp = hard` and the responder was unreachable, too slow, or did not know the certificate."""
