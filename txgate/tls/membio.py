# -*- test-case-name: tests.test_serverconn,tests.test_records13 -*-
"""Reading a pyOpenSSL connection's memory BIO in full, without an exception at its end.

``read_bio(bio)`` drains one of a ``SSL.Connection``'s memory BIOs (``_from_ssl``: what OpenSSL wrote;
``_into_ssl``: input it has not read yet) through pyOpenSSL's own raw bindings (``BIO_read`` into one
scratch buffer); ``available`` is False on a pyOpenSSL build without them.
"""
from __future__ import annotations

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib

    _BIO_read = _lib.BIO_read
    _unpack = _ffi.buffer
    _BUF_SIZE = 1 << 15
    _BUF = _ffi.new("char[]", _BUF_SIZE)  # one scratch buffer: the reactor runs one call at a time
    available = True
except Exception:  # pragma: no cover - other pyOpenSSL builds
    available = False


def read_bio(bio) -> bytes:
    """Everything in ``bio`` now (b"" when it is empty)."""
    n = _BIO_read(bio, _BUF, _BUF_SIZE)
    if n <= 0:
        return b""
    first = _unpack(_BUF, n)[:]
    if n < _BUF_SIZE:
        return first
    parts = [first]
    while True:
        n = _BIO_read(bio, _BUF, _BUF_SIZE)
        if n <= 0:
            return b"".join(parts)
        parts.append(_unpack(_BUF, n)[:])


__all__ = ["available", "read_bio"]
