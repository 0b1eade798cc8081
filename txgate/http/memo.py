# -*- test-case-name: tests.test_headers -*-
"""Bounded memo tables for per-request lookups whose keys repeat (header names, authorities)."""
from __future__ import annotations

from typing import Callable


class Memo(dict):
    """``memo[key]``: ``fn(key)``, kept for the next time (a hit is one lookup in C, no Python call).

    At most ``limit`` keys are kept: a full table starts over, so hostile input that never repeats a
    key costs a call per key, never memory."""

    __slots__ = ("fn", "limit")

    def __init__(self, fn: Callable, limit: int) -> None:
        super().__init__()
        self.fn = fn
        self.limit = limit

    def __missing__(self, key):
        value = self.fn(key)
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
