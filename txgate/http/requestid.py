# -*- test-case-name: tests.test_request_ids -*-
"""Request IDs: the client's ``X-Request-Id`` when it is a sane token, else one made here.

The ID goes upstream and back to the client in ``X-Request-Id``, into the access log, into error
bodies and into the log line that tells an error's details. Made IDs are a random per-process prefix
and a counter (no system call per request); a forked worker draws a new prefix.
"""
from __future__ import annotations

import itertools
import os

from txgate.http.exchange import RequestHead

HEADER = b"x-request-id"
MAX_LENGTH = 128
# Characters a client's ID may use: no spaces, quotes or controls (it goes into log lines).
_ALLOWED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:/+=@"



def _reseed() -> None:
    global _next_id
    # prefix and counter formatted in C: one builtin call per ID, no Python frame
    prefix = os.urandom(6).hex().encode()
    _next_id = map(b"%s%06x".__mod__, zip(itertools.repeat(prefix), itertools.count(1))).__next__


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> bytes:
    """A fresh ID: 12 hex digits of this process, then a counter in hex."""
    return _next_id()


def valid_request_id(value: bytes) -> bool:
    """Whether a client's ID may be kept: 1-128 of letters, digits and ``-_.:/+=@``."""
    return 0 < len(value) <= MAX_LENGTH and not value.translate(None, _ALLOWED)


def request_id_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's X-Request-Id if it is valid, else a new ID."""
    for k, v in headers:
        if k == HEADER:
            return v if valid_request_id(v) else _next_id()
    return _next_id()


def ensure_request_id(head: RequestHead) -> bytes:
    """The request's ID, decided once (on the head) from its headers."""
    rid = head.request_id
    if not rid:
        rid = head.request_id = request_id_of(head.headers)
    return rid


def placeholder_head(version: bytes) -> RequestHead:
    """A head for a request too broken to have one, so its error still carries an ID."""
    return RequestHead(b"-", b"-", b"", [], None, False, version)
