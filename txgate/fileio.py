# -*- test-case-name: tests.test_store -*-
"""Safe file writing: private files (0600 from the first byte, atomic) and private directories (0700).

API: write_private_file(path, data, mode=0o600, *, exclusive=False), write_public_file(path, data),
make_private_dir(path).
"""
from __future__ import annotations

import os

__all__ = ["make_private_dir", "write_private_file", "write_public_file"]


def write_private_file(path: str, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Write ``data`` atomically to ``path`` with ``mode`` from the first byte on.

    With ``exclusive=True`` an existing ``path`` is never replaced (``FileExistsError``), atomically:
    the finished temporary file is hard-linked into place rather than renamed over it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    # O_EXCL + mode at creation: the file is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # umask may have removed bits we want (0644)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_public_file(path: str, data: bytes, *, exclusive: bool = False) -> None:
    """Write a non-secret file (certificates, CSRs) atomically with mode 0644."""
    write_private_file(path, data, 0o644, exclusive=exclusive)


def make_private_dir(path: str) -> None:
    """Create ``path`` (and parents) if missing; the leaf directory gets mode 0700."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
