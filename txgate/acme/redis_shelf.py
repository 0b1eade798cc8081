# -*- test-case-name: tests.test_acme_shelves,tests.test_acme_shared_e2e -*-
"""Pending ACME challenges in the store's Redis, so that every gateway of a fleet answers the CA.

Keys ``<store prefix>acme-challenge:<kind>:<key>`` hold the key authorization with a TTL (``TTL``, longer
than an order may take, so a crashed orderer leaves nothing behind for long). Every write and delete is
also published on ``<store prefix>acme-challenges`` as ``{"kind", "key", "value"}`` (value null = gone).

Readers answer from a local copy, never from Redis: a TLS-ALPN-01 certificate must be chosen inside the
handshake's ALPN callback, which cannot wait for the network, and one path for both challenges is
simpler. One thread per process keeps the copy: it applies published changes as they arrive (a few
milliseconds after the write) and re-reads every key (SCAN + MGET) on (re)subscription and every
``RESYNC`` seconds, which also drops expired keys. The orderer waits ``SETTLE`` after a write before
telling the CA to validate, so that the other gateways have the entry by then.
"""
from __future__ import annotations

import json
import threading
import time

from twisted.logger import Logger

from txgate.store.base import Subscription

log = Logger(namespace="txgate.acme")

TTL = 900
RESYNC = 5.0
SETTLE = 0.5


class RedisShelf:
    """Challenges in Redis (writes, from the ACME thread) and in a local copy kept by a thread (reads)."""

    def __init__(self, r, prefix: str, label: str = "redis", *, reader: bool = True, settle: float = SETTLE,
                 resync: float = RESYNC, ttl: int = TTL) -> None:
        self._r = r
        self._prefix = prefix + "acme-challenge:"
        self.channel = prefix + "acme-challenges"
        self._label = label
        self._settle = settle
        self._ttl = ttl
        self._local: dict[tuple[str, str], str] = {}
        self.follower = _Follower(self, resync) if reader else None

    @classmethod
    def for_store(cls, store, *, reader: bool = True, **kw) -> RedisShelf:
        """The shelf of a RedisStore; its follower thread stops when the store closes."""
        shelf = cls(store._r, store._k(""), store._label, reader=reader, **kw)
        if shelf.follower is not None:
            store._subscriptions.append(shelf.follower)
            shelf.follower.start()
        return shelf

    # -- writes (the ACME thread) ---------------------------------------------------------------------
    def put(self, kind: str, key: str, value: str) -> None:
        self._local[kind, key] = value
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._prefix + f"{kind}:{key}", value, ex=self._ttl)
        pipe.publish(self.channel, json.dumps({"kind": kind, "key": key, "value": value}))
        pipe.execute()
        time.sleep(self._settle)  # the other gateways apply the message before the CA comes

    def delete(self, kind: str, key: str) -> None:
        self._local.pop((kind, key), None)
        try:
            pipe = self._r.pipeline(transaction=True)
            pipe.delete(self._prefix + f"{kind}:{key}")
            pipe.publish(self.channel, json.dumps({"kind": kind, "key": key, "value": None}))
            pipe.execute()
        except Exception as e:  # the TTL removes it anyway
            log.warn("acme: could not remove challenge {kind} {key} from {redis}: {error}", kind=kind, key=key,
                     redis=self._label, error=str(e))

    # -- reads (the reactor; local only) ----------------------------------------------------------
    def get(self, kind: str, key: str) -> str | None:
        return self._local.get((kind, key))

    def count(self) -> int:
        return len(self._local)

    # -- the follower's work ------------------------------------------------------------------------
    def apply(self, message: str) -> None:
        """One published change into the local copy."""
        from txgate.acme.shelves import valid_key

        try:
            m = json.loads(message)
            kind, key, value = m["kind"], m["key"], m["value"]
        except (ValueError, KeyError, TypeError):
            return
        if not isinstance(key, str) or not valid_key(kind, key):
            return
        if isinstance(value, str):
            self._local[kind, key] = value
        else:
            self._local.pop((kind, key), None)

    def resync(self) -> None:
        """Replace the local copy with what Redis holds now."""
        from txgate.acme.shelves import valid_key

        keys = list(self._r.scan_iter(match=self._prefix + "*", count=100))
        values = self._r.mget(keys) if keys else []
        fresh = {}
        for k, v in zip(keys, values):
            kind, _, key = k[len(self._prefix):].partition(":")
            if v is not None and valid_key(kind, key):
                fresh[kind, key] = v
        self._local = fresh


class _Follower(Subscription):
    """The thread that keeps a RedisShelf's local copy: published changes, plus a full re-read now and then."""

    def __init__(self, shelf: RedisShelf, resync: float) -> None:
        self.shelf = shelf
        self.resync_every = resync
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="txgate-acme-challenges", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from txgate.store.redis_backend import follow_channel

        last = [0.0]

        def resync():
            self.shelf.resync()  # after (re)subscribing: nothing published meanwhile is missed
            last[0] = time.monotonic()
            self.synced.set()

        def idle():
            if self.synced.is_set() and time.monotonic() - last[0] >= self.resync_every:
                resync()

        follow_channel(self.shelf._r, self.shelf.channel, self._stop, resync, self.shelf.apply,
                       lambda error, delay: log.warn("acme: challenges from {redis} not followed ({error}); retrying "
                                                     "in {delay}s", redis=self.shelf._label, error=error, delay=delay),
                       idle)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
