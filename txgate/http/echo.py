# -*- test-case-name: tests.test_routing -*-
"""builtin:echo: an embedded backend that describes the request it received, as JSON."""
from __future__ import annotations

import json


class EchoHandler:
    """Counts the body (never stores it) and answers with what it saw."""

    __slots__ = ("stream", "head", "path", "headers", "body_bytes", "api", "upstream_label", "done")

    def __init__(self, stream, head, path: bytes, headers: list[tuple[bytes, bytes]], api: str) -> None:
        # `headers` are what an upstream would receive (after txgate's header rules).
        self.stream = stream
        self.head = head
        self.path = path
        self.headers = headers
        self.body_bytes = 0
        self.api = api
        self.upstream_label = "builtin:echo"
        self.done = False

    def body_received(self, data: bytes) -> None:
        self.body_bytes += len(data)

    def body_finished(self) -> None:
        if self.done:
            return
        self.done = True
        head = self.head
        headers: dict[str, str | list[str]] = {}
        for k, v in self.headers:
            name = k.decode("latin-1")
            value = v.decode("latin-1")
            if name in headers:
                prev = headers[name]
                headers[name] = (prev if isinstance(prev, list) else [prev]) + [value]
            else:
                headers[name] = value
        body = json.dumps(
            {
                "method": head.method.decode("latin-1"),
                "path": self.path.decode("latin-1"),
                "query": head.query.decode("latin-1"),
                "headers": headers,
                "body_bytes": self.body_bytes,
            },
            indent=None,
        ).encode() + b"\n"
        self.stream.start_response(200, [(b"content-type", b"application/json")], len(body))
        self.stream.write(body)
        self.stream.finish()

    def stream_lost(self, reason) -> None:
        self.done = True

    def pause_producing(self) -> None:
        pass

    def resume_producing(self) -> None:
        pass
