# -*- test-case-name: tests.test_headers -*-
"""Bounded memo tables for per-request lookups whose keys repeat (header names, authorities)."""
from __future__ import annotations

from typing import Callable

# Keys longer than this are computed each time, never kept (a hostile peer's long, ever-new values).
MAX_KEY = 256


class Memo(dict):
    """``memo[key]``: ``fn(key)``, kept for the next time (a hit is one lookup in C, no Python call).

    At most ``limit`` keys of at most ``max_key`` bytes are kept (a full table starts over; a longer
    key is computed each time): hostile input that never repeats a key costs a call per key, and
    the table's memory stays bounded. ``size`` tells a key's bytes (a tuple key: its peer-chosen part)."""

    __slots__ = ("fn", "limit", "max_key", "size")

    def __init__(self, fn: Callable, limit: int, max_key: int = MAX_KEY, size: Callable = len) -> None:
        super().__init__()
        self.fn = fn
        self.limit = limit
        self.max_key = max_key
        self.size = size

    def __missing__(self, key):
        value = self.fn(key)
        if self.size(key) <= self.max_key:
            if len(self) >= self.limit:
                self.clear()
            self[key] = value
        return value
