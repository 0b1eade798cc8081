# -*- test-case-name: tests.test_requests,tests.test_request_ids -*-
"""JSON error responses: ``{"error": CODE, "message": "...", "request_id": ID}`` for a `GatewayError`.

Clients get the code, a generic message and the request ID; the details go to the log (warning
for 5xx, info for 4xx) with the same ID. ``[gateway] error_detail = on`` puts the details in the
body too (for development).
"""
from __future__ import annotations

import json

from twisted.logger import Logger

from txgate.errors import GatewayError
from txgate.http.requestid import ensure_request_id, placeholder_head

JSON_HEADERS = [(b"content-type", b"application/json")]

log = Logger(namespace="txgate.errors")


def error_body(err: GatewayError, request_id: bytes = b"", detail: bool = False) -> bytes:
    """The JSON body of the error response for ``err`` (the details only with ``detail``)."""
    doc = {"error": err.code, "message": err.message if detail else err.public_message}
    if request_id:
        doc["request_id"] = request_id.decode("ascii")
    return json.dumps(doc).encode() + b"\n"


def stream_request_id(stream, version: bytes = b"2") -> bytes:
    """The ID of the stream's request (a placeholder head is made for a request too broken for one)."""
    head = getattr(stream, "head", None)
    if head is None:
        head = stream.head = placeholder_head(version)
    return ensure_request_id(head)


def log_error(err: GatewayError, request_id: bytes, listener: str, api: str | None = None,
              target: str | None = None) -> None:
    """One line with the error's details and the request ID: warning for 5xx, info for 4xx."""
    emit = log.warn if err.status >= 500 else log.info
    rid = request_id.decode("ascii")
    if target is not None:
        emit("api {api} upstream {upstream} {code}: {why} (request {request_id} on {listener})", api=api,
             upstream=target, code=err.code, why=err.message, request_id=rid, listener=listener)
    else:
        emit("request {request_id} on {listener}: {code}: {why}{where}", request_id=rid, listener=listener,
             code=err.code, why=err.message, api=api, where=f" (api {api})" if api else "")


def send_gateway_error(stream, err: GatewayError, *, detail: bool = False, api: str | None = None,
                       logged: bool = False) -> None:
    """Answer a stream with the complete JSON response for a `GatewayError` (and log its details unless ``logged``)."""
    rid = stream_request_id(stream)
    if not logged:
        log_error(err, rid, stream.info.listener, api)
    body = error_body(err, rid, detail)
    stream.start_response(err.status, list(JSON_HEADERS), len(body))
    stream.write(body)
    stream.finish()
