"""JSON error responses: ``{"error": CODE, "message": "..."}``."""
from __future__ import annotations

import json

from txgate.errors import GatewayError

JSON_HEADERS = [(b"content-type", b"application/json")]


def error_body(code: str, message: str) -> bytes:
    """The JSON body of an error response."""
    return json.dumps({"error": code, "message": message}).encode() + b"\n"


def send_error(stream, status: int, code: str, message: str) -> None:
    """Answer a stream with a complete JSON error response."""
    body = error_body(code, message)
    stream.start_response(status, list(JSON_HEADERS), len(body))
    stream.write(body)
    stream.finish()


def send_gateway_error(stream, err: GatewayError) -> None:
    """Answer a stream with the JSON response for a `GatewayError`."""
    send_error(stream, err.status, err.code, err.message)
