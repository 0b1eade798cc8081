"""A fixed response (ACME HTTP-01 answers, redirects to https): status, headers and body known up front."""
# -*- test-case-name: tests.test_acme_unit -*-
from __future__ import annotations

from txgate.http.exchange import NullHandler


class StaticHandler(NullHandler):
    """Ignores the request body and answers with one fixed response once the request is complete."""

    __slots__ = ("stream", "status", "headers", "body", "done")

    def __init__(self, stream, status: int, headers: list[tuple[bytes, bytes]], body: bytes, label: str) -> None:
        super().__init__(None)
        self.upstream_label = label
        self.stream = stream
        self.status = status
        self.headers = headers
        self.body = body
        self.done = False

    def body_finished(self) -> None:
        if self.done:
            return
        self.done = True
        self.stream.start_response(self.status, self.headers, len(self.body))
        self.stream.write(self.body)
        self.stream.finish()

    def stream_lost(self, reason) -> None:
        self.done = True


def https_location(authority: bytes, target: bytes) -> bytes:
    """The https URL of a request: its host without the port (https listens on 443), the same target."""
    host = authority
    if host.startswith(b"["):
        host = host[: host.find(b"]") + 1]
    elif host.count(b":") == 1:
        host = host.partition(b":")[0]
    return b"https://" + host + (target if target.startswith(b"/") else b"/")
