# -*- test-case-name: tests.test_requests -*-
"""JSON error responses: ``{"error": CODE, "message": "..."}`` for a `GatewayError`."""
from __future__ import annotations

import json

from txgate.errors import GatewayError

JSON_HEADERS = [(b"content-type", b"application/json")]


def error_body(err: GatewayError) -> bytes:
    """The JSON body of the error response for ``err``."""
    return json.dumps({"error": err.code, "message": err.message}).encode() + b"\n"


def send_gateway_error(stream, err: GatewayError) -> None:
    """Answer a stream with the complete JSON response for a `GatewayError`."""
    body = error_body(err)
    stream.start_response(err.status, list(JSON_HEADERS), len(body))
    stream.write(body)
    stream.finish()
