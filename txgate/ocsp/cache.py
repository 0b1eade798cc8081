# -*- test-case-name: tests.test_ocsp_unit -*-
"""OCSP responses kept in ``state_dir/ocsp/KEY.der`` so that a restart staples at once.

Small blocking file I/O: the plan reads (off the reactor at reload), the runtime writes through its
``run_blocking`` (a thread). A cached response is verified again before it is used.
"""
from __future__ import annotations

import os

from txgate.fileio import make_private_dir, write_public_file

SUBDIR = "ocsp"


def cache_path(state_dir: str, key: str) -> str:
    """Where the response for ``key`` (``check.cert_key``) lives."""
    return os.path.join(state_dir, SUBDIR, key + ".der")


def load(state_dir: str, key: str) -> bytes | None:
    """The cached DER response for ``key``, or None (missing or unreadable)."""
    try:
        with open(cache_path(state_dir, key), "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def save(state_dir: str, key: str, der: bytes) -> None:
    """Keep ``der`` as the response for ``key`` (atomic replace)."""
    make_private_dir(os.path.join(state_dir, SUBDIR))
    write_public_file(cache_path(state_dir, key), der)
