# -*- test-case-name: tests.test_listener_e2e -*-
"""The access log: one line per request, text or JSON, written without the logging machinery."""
from __future__ import annotations

import json
import os
import sys
import time

from twisted.logger import Logger

log = Logger()

PIPE_BUF = 4096  # POSIX: writes up to this size on a pipe are atomic


class AccessLog:
    """Buffered line writer; flush() runs on a timer and at shutdown."""

    def __init__(self, target: str, fmt: str = "text") -> None:
        self.fmt = fmt
        self.enabled = target != "off"
        self.lines: list[str] = []
        self.target = target
        self._sec = -1
        self._stamp = ""
        self.file = self._open() if self.enabled else None

    def _open(self):
        if self.target == "-":
            # fd 1 directly: twistd replaces sys.stdout with a log redirector.
            return open(os.dup(sys.__stdout__.fileno() if sys.__stdout__ else 1), "a", encoding="utf-8")
        fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return open(fd, "a", encoding="utf-8")

    def reopen(self) -> None:
        """Flush, then open the file again by its path (after logrotate moved it); stdout stays."""
        if self.file is None or self.target == "-":
            return
        self.flush()
        try:
            new = self._open()
        except OSError as e:
            log.error("access log {path}: cannot reopen ({error}); still writing to the old file",
                      path=self.target, error=e.strerror or str(e))
            return
        old, self.file = self.file, new
        old.close()

    def _time(self, t: float) -> str:
        sec = int(t)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return "%s.%03dZ" % (self._stamp, int((t - sec) * 1000))

    def record(self, info, head, status, bytes_in, bytes_out, handler, started, ended) -> None:
        """Queue one request's line."""
        if not self.enabled:
            return
        api = getattr(handler, "api", None) if handler is not None else None
        upstream = getattr(handler, "upstream_label", None) if handler is not None else None
        if head is not None:
            method = head.method.decode("latin-1")
            authority = head.authority.decode("latin-1")
            path = head.target.decode("latin-1")
            proto = "HTTP/" + head.version.decode()
            rid = head.request_id.decode("ascii") or "-"
        else:
            method = authority = path = proto = rid = "-"
        if self.fmt == "json":
            line = json.dumps(
                {
                    "time": self._time(ended),
                    "listener": info.listener,
                    "client": f"{info.client_host}:{info.client_port}",
                    "sni": info.sni,
                    "tls_version": info.tls_version,
                    "cipher": info.cipher,
                    "alpn": info.alpn,
                    "method": method,
                    "authority": authority,
                    "path": path,
                    "protocol": proto,
                    "status": status,
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "api": api,
                    "upstream": upstream,
                    "duration_ms": round((ended - started) * 1000, 3),
                    "request_id": rid,
                },
                separators=(",", ":"),
            )
        else:
            line = '%s %s %s:%s sni=%s tls=%s cipher=%s alpn=%s "%s %s %s %s" %d in=%d out=%d api=%s upstream=%s %.3fms id=%s' % (
                self._time(ended), info.listener, info.client_host, info.client_port,
                info.sni or "-", info.tls_version or "-", info.cipher or "-", info.alpn or "-",
                method, authority or "-", path, proto, status, bytes_in, bytes_out,
                api or "-", upstream or "-", (ended - started) * 1000, rid,
            )
        self.lines.append(line)
        if len(self.lines) >= 256:
            self.flush()

    def flush(self) -> None:
        """Write queued lines: whole lines per write(2), so processes sharing the file never interleave mid-line."""
        if self.lines and self.file is not None:
            lines, self.lines = self.lines, []
            fd = self.file.fileno()
            try:
                for chunk in whole_line_chunks(lines):
                    while chunk:
                        chunk = chunk[os.write(fd, chunk):]
            except OSError as e:
                log.error("access log write failed: {error}", error=str(e))

    def close(self) -> None:
        self.flush()
        if self.file is not None:
            self.file.close()
            self.file = None


def whole_line_chunks(lines: list[str], limit: int = PIPE_BUF) -> list[bytes]:
    """Lines joined into chunks of whole lines of at most ``limit`` bytes (a longer line is a chunk alone).

    One write(2) each: O_APPEND files take any write whole; pipes (stdout under a supervisor) only
    up to PIPE_BUF bytes, hence the limit."""
    chunks: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for line in lines:
        b = line.encode("utf-8", "replace") + b"\n"
        if cur and size + len(b) > limit:
            chunks.append(b"".join(cur))
            cur, size = [], 0
        cur.append(b)
        size += len(b)
    if cur:
        chunks.append(b"".join(cur))
    return chunks
