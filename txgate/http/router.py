# -*- test-case-name: tests.test_routing -*-
"""Routing: host (exact, then wildcard, then any), then the longest path prefix."""
from __future__ import annotations

from typing import Generic, Iterable, TypeVar

from txgate.config.hostnames import wildcard_parent

T = TypeVar("T")


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-aware prefix match: '/api' matches '/api' and '/api/x', not '/apix'."""
    if prefix == "/":
        return True
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or path[len(prefix)] in "/?"


def strip_prefix(prefix: str, path: str) -> str:
    """Remove a matched prefix, keeping an absolute path ('/api' on '/api' -> '/')."""
    if prefix == "/":
        return path
    rest = path[len(prefix):]
    return rest if rest.startswith("/") else "/" + rest


class Router(Generic[T]):
    """Maps (host, path) to a route value; built once per config, lookups are dict + short scans."""

    def __init__(self, routes: Iterable[tuple[tuple[str, ...], str, T]]) -> None:
        # routes: (hosts, path prefix, value); empty hosts means any host.
        self._exact: dict[str, list[tuple[str, T]]] = {}
        self._wild: dict[str, list[tuple[str, T]]] = {}
        self._any: list[tuple[str, T]] = []
        for hosts, prefix, value in routes:
            if not hosts:
                self._any.append((prefix, value))
            for h in hosts:
                if h.startswith("*."):
                    self._wild.setdefault(h[2:], []).append((prefix, value))
                else:
                    self._exact.setdefault(h, []).append((prefix, value))
        for table in (self._exact, self._wild):
            for entries in table.values():
                entries.sort(key=lambda e: len(e[0]), reverse=True)
        self._any.sort(key=lambda e: len(e[0]), reverse=True)

    @staticmethod
    def _scan(entries: list[tuple[str, T]], path: str) -> tuple[str, T] | None:
        for prefix, value in entries:
            if prefix_matches(prefix, path):
                return prefix, value
        return None

    def match(self, host: str, path: str) -> tuple[str, T] | None:
        """The (prefix, value) of the best route, or None: exact host, then wildcard, then any."""
        entries = self._exact.get(host)
        if entries:
            found = self._scan(entries, path)
            if found:
                return found
        parent = wildcard_parent(host) if self._wild else None
        if parent is not None:
            entries = self._wild.get(parent)
            if entries:
                found = self._scan(entries, path)
                if found:
                    return found
        return self._scan(self._any, path)
