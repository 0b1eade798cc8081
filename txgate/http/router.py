# -*- test-case-name: tests.test_routing -*-
"""Routing: host (exact, then wildcard, then any), then the longest path prefix."""
from __future__ import annotations

from typing import Generic, Iterable, TypeVar

from txgate.config.hostnames import wildcard_parent

T = TypeVar("T")


def _starts(prefix: str) -> tuple[str, ...]:
    """What a path under ``prefix`` starts with, besides being ``prefix`` itself ('/': anything)."""
    return ("",) if prefix == "/" else (prefix + "/", prefix + "?")


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-aware prefix match: '/api' matches '/api' and '/api/x', not '/apix'."""
    return path == prefix or path.startswith(_starts(prefix))


def strip_prefix(prefix: str, path: str) -> str:
    """Remove a matched prefix, keeping an absolute path ('/api' on '/api' -> '/')."""
    if prefix == "/":
        return path
    rest = path[len(prefix):]
    return rest if rest.startswith("/") else "/" + rest


class Router(Generic[T]):
    """Maps (host, path) to a route value; built once per config, lookups are dict + short scans."""

    def __init__(self, routes: Iterable[tuple[tuple[str, ...], str, T]]) -> None:
        # routes: (hosts, path prefix, value); empty hosts means any host. Entries: (prefix, its
        # _starts, (prefix, value)), the match's answer made once.
        self._exact: dict[str, list[tuple[str, tuple[str, ...], tuple[str, T]]]] = {}
        self._wild: dict[str, list[tuple[str, tuple[str, ...], tuple[str, T]]]] = {}
        self._any: list[tuple[str, tuple[str, ...], tuple[str, T]]] = []
        for hosts, prefix, value in routes:
            entry = (prefix, _starts(prefix), (prefix, value))
            if not hosts:
                self._any.append(entry)
            for h in hosts:
                if h.startswith("*."):
                    self._wild.setdefault(h[2:], []).append(entry)
                else:
                    self._exact.setdefault(h, []).append(entry)
        for table in (self._exact, self._wild):
            for entries in table.values():
                entries.sort(key=lambda e: len(e[0]), reverse=True)
        self._any.sort(key=lambda e: len(e[0]), reverse=True)

    @staticmethod
    def _scan(entries: list, path: str) -> tuple[str, T] | None:
        for prefix, starts, found in entries:
            if path == prefix or path.startswith(starts):  # prefix_matches, its _starts made once
                return found
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
