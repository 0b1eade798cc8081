# -*- test-case-name: tests.test_acme_unit,tests.test_acme_shared_e2e -*-
"""Where pending ACME challenges are kept, so that the process that answers sees what the one that orders wrote.

A shelf keeps ``(kind, key) -> key authorization`` strings (kind ``http``: key = the HTTP-01 token;
kind ``alpn``: key = the lower-case DNS name of a TLS-ALPN-01 challenge). Three kinds:

- ``MemoryShelf``: a dict; one process orders and answers (``workers = 1``, directory store).
- ``DirectoryShelf``: one file per challenge in ``state_dir/run/acme-challenges/`` (0700, files 0600,
  written atomically); the supervisor writes, its worker processes read on demand.
- ``RedisShelf`` (``txgate.acme.redis_shelf``): keys with a TTL in the store's Redis, so that every
  gateway of a fleet answers.

Keys are validated (``valid_key``) before any shelf sees them: they become file names and Redis keys.
"""
from __future__ import annotations

import os
import re
import threading

from twisted.logger import Logger

log = Logger(namespace="txgate.acme")

KINDS = ("http", "alpn")
# RFC 8555 section 8.3: a token is base64url without padding; CAs use 22-86 characters. Bounded here.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}\Z")
# A lower-case DNS name of LDH labels (IDNs arrive as punycode); no dots at either end.
_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\Z")
CHALLENGE_DIR = os.path.join("run", "acme-challenges")


def valid_key(kind: str, key: str) -> bool:
    """Whether ``key`` may name a challenge of ``kind``: a base64url token (http) or a DNS name (alpn)."""
    if kind == "http":
        return bool(_TOKEN.match(key))
    return kind == "alpn" and bool(_NAME.match(key))


def shelf_kind(role: str, redis_store: bool) -> str:
    """Which shelf a gateway process uses: ``redis`` with a Redis store (any gateway of the fleet may be
    asked), ``directory`` when a supervisor orders and its workers answer, else ``memory``."""
    if redis_store:
        return "redis"
    return "memory" if role == "single" else "directory"


class MemoryShelf:
    """Challenges in this process only."""

    def __init__(self) -> None:
        self._d: dict[tuple[str, str], str] = {}

    def put(self, kind: str, key: str, value: str) -> None:
        self._d[kind, key] = value

    def delete(self, kind: str, key: str) -> None:
        self._d.pop((kind, key), None)

    def get(self, kind: str, key: str) -> str | None:
        return self._d.get((kind, key))

    def count(self) -> int:
        return len(self._d)


class DirectoryShelf:
    """One file per challenge (``http-TOKEN``, ``alpn-NAME``) holding the key authorization.

    Writes happen in the ACME thread (atomic: a reader sees a whole file or none); reads happen in the
    reactor of another process and cost one small ``open``/``read`` (only for requests under
    ``/.well-known/acme-challenge/`` and handshakes offering ``acme-tls/1``).
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def _file(self, kind: str, key: str) -> str:
        return os.path.join(self.path, f"{kind}-{key}")

    def put(self, kind: str, key: str, value: str) -> None:
        from txgate.fileio import make_private_dir, write_private_file

        make_private_dir(self.path)
        write_private_file(self._file(kind, key), value.encode("ascii"))

    def delete(self, kind: str, key: str) -> None:
        try:
            os.unlink(self._file(kind, key))
        except FileNotFoundError:
            pass

    def get(self, kind: str, key: str) -> str | None:
        try:
            with open(self._file(kind, key), "rb") as f:
                return f.read(4096).decode("ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warn("acme: cannot read challenge {kind} {key}: {error}", kind=kind, key=key, error=str(e))
            return None

    def count(self) -> int:
        try:
            return sum(1 for n in os.listdir(self.path) if n.split("-", 1)[0] in KINDS)
        except FileNotFoundError:
            return 0

    def clear(self) -> None:
        """Forget every challenge (a supervisor starting: its previous run's orders are over)."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return
        for n in names:
            if n.split("-", 1)[0] in KINDS or n.startswith("."):
                try:
                    os.unlink(os.path.join(self.path, n))
                except OSError:
                    pass


class PairCache:
    """RFC 8737 certificates rebuilt from key authorizations, keyed by (name, key authorization); bounded."""

    LIMIT = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: dict[tuple[str, str], tuple] = {}

    def get(self, name: str, key_authorization: str) -> tuple:
        from txgate.acme.challenges import tls_alpn_certificate

        k = (name, key_authorization)
        with self._lock:
            pair = self._pairs.get(k)
        if pair is None:
            pair = tls_alpn_certificate(name, key_authorization)
            with self._lock:
                while len(self._pairs) >= self.LIMIT:
                    self._pairs.pop(next(iter(self._pairs)))
                pair = self._pairs.setdefault(k, pair)
        return pair

    def drop(self, name: str) -> None:
        with self._lock:
            for k in [k for k in self._pairs if k[0] == name]:
                del self._pairs[k]


def open_shelf(role: str, state_dir: str, store=None):
    """The shelf of a gateway process in ``role`` (``single``, ``supervisor``, ``worker``): see ``shelf_kind``.
    A supervisor empties the directory first (what an earlier run left is no pending order of ours)."""
    kind = shelf_kind(role, getattr(store, "_r", None) is not None)
    if kind == "redis":
        from txgate.acme.redis_shelf import RedisShelf

        return RedisShelf.for_store(store, reader=role != "supervisor")
    if kind == "directory":
        shelf = DirectoryShelf(os.path.join(state_dir, CHALLENGE_DIR))
        if role == "supervisor":
            shelf.clear()
        return shelf
    return MemoryShelf()
