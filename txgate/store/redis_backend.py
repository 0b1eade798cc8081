# -*- test-case-name: tests.test_store_redis -*-
"""The Redis backend: the same records in Redis hashes, and pub/sub change messages for fleets.

Keys (prefix ``txgate:store:``): ``entry:<ID>``, ``name:<NAME>``, ``pending:<NAME>`` (hashes with a
``record`` JSON field, ``chain_pem`` kept readable for operators), sets ``entries``, ``names``,
``pending``, and a lock ``lock``. Every write publishes ``{"name", "op", "origin"}`` (JSON) on
``txgate:store:changed``.

Client: redis-py (sync) — well kept, and the Twisted-native txredisapi is unmaintained. Store calls
block, so the gateway runs them in threads (``DeferredStore``); ``subscribe`` runs one listener
thread per subscription and hands each change to ``call`` (e.g. ``reactor.callFromThread``).
"""
from __future__ import annotations

import contextlib
import json
import threading
import uuid
from datetime import datetime
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from txgate.store.base import Call, Callback, RecordStore, Subscription, _safe, log
from txgate.store.model import StoreError

CHANNEL = "txgate:store:changed"
PREFIX = "txgate:store:"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{parts.scheme}://{host}:{port}{parts.path or '/0'}"


class RedisStore(RecordStore):
    """A store in Redis (``redis://HOST:PORT/DB``); refuses to exist without a secret."""

    def __init__(
        self,
        url: str,
        secret: bytes | str | None,
        *,
        clock: Callable[[], datetime] | None = None,
        prefix: str = PREFIX,
        channel: str = CHANNEL,
        socket_timeout: float = 5.0,
    ) -> None:
        if not secret:
            raise StoreError(
                "no_secret", "a Redis store needs a store secret (set store_secret_file or TXGATE_STORE_SECRET)"
            )
        super().__init__(secret, clock=clock)
        import redis

        self._redis_mod = redis
        self._label = _redact(url)
        self._prefix = prefix
        self.channel = channel
        self._origin = uuid.uuid4().hex
        self._subscriptions: list[_RedisSubscription] = []
        try:
            self._r = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, decode_responses=True
            )
        except ValueError as e:
            raise StoreError("invalid_url", f"invalid Redis URL {self._label}: {e}") from None
        self._call(self._r.ping)

    def __repr__(self) -> str:
        return f"<RedisStore {self._label} prefix={self._prefix!r}>"

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except self._redis_mod.RedisError as e:
            raise StoreError("backend_error", f"Redis at {self._label}: {e.__class__.__name__}: {e}") from None

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    # --- primitives ---------------------------------------------------------------------------

    def _get(self, kind: str, key: str) -> dict[str, Any] | None:
        raw = self._call(self._r.hget, self._k(kind, key), "record")
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            raise StoreError("backend_error", f"Redis key {self._k(kind, key)}: corrupted store record") from None
        return record if isinstance(record, dict) else None

    def _put(self, kind: str, key: str, record: dict[str, Any], index: str) -> None:
        fields = {"record": json.dumps(record, sort_keys=True)}
        if "chain_pem" in record:
            fields["chain_pem"] = record["chain_pem"]
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k(kind, key))
        pipe.hset(self._k(kind, key), mapping=fields)
        pipe.sadd(self._k(index), key)
        self._call(pipe.execute)

    def _del(self, kind: str, key: str, index: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k(kind, key))
        pipe.srem(self._k(index), key)
        self._call(pipe.execute)

    def _members(self, index: str) -> list[str]:
        return list(self._call(self._r.smembers, self._k(index)))

    def _r_get_entry(self, entry_id: str) -> dict[str, Any] | None:
        return self._get("entry", entry_id)

    def _r_put_entry(self, entry_id: str, record: dict[str, Any]) -> None:
        self._put("entry", entry_id, record, "entries")

    def _r_delete_entry(self, entry_id: str) -> None:
        self._del("entry", entry_id, "entries")

    def _r_entry_ids(self) -> list[str]:
        return self._members("entries")

    def _r_get_name(self, name: str) -> dict[str, Any] | None:
        return self._get("name", name)

    def _r_put_name(self, name: str, record: dict[str, Any]) -> None:
        self._put("name", name, record, "names")

    def _r_delete_name(self, name: str) -> None:
        self._del("name", name, "names")

    def _r_names(self) -> list[str]:
        return self._members("names")

    def _r_get_pending(self, name: str) -> dict[str, Any] | None:
        return self._get("pending", name)

    def _r_put_pending(self, name: str, record: dict[str, Any]) -> None:
        self._put("pending", name, record, "pending")

    def _r_delete_pending(self, name: str) -> None:
        self._del("pending", name, "pending")

    def _r_pending_names(self) -> list[str]:
        return self._members("pending")

    @contextlib.contextmanager
    def _backend_lock(self) -> Iterator[None]:
        lock = self._r.lock(self._k("lock"), timeout=30, blocking_timeout=10)
        if not self._call(lock.acquire):
            raise StoreError("backend_error", f"Redis at {self._label}: timed out waiting for the store lock")
        try:
            yield
        finally:
            try:
                lock.release()
            except self._redis_mod.RedisError:
                pass  # expired: the writes above already happened or failed on their own

    def _notify(self, name: str, op: str) -> None:
        message = json.dumps({"name": name, "op": op, "origin": self._origin})
        try:
            self._r.publish(self.channel, message)
        except self._redis_mod.RedisError as e:
            # The write itself succeeded; other gateways will catch up on their next full reload.
            log.warn("store: could not publish the change of {name} on Redis {redis}: {error}",
                     name=name, redis=self._label, error=str(e))

    def subscribe(self, callback: Callback, *, call: Call | None = None, ready_timeout: float = 5.0) -> Subscription:
        sub = _RedisSubscription(self, callback, call)
        self._subscriptions.append(sub)
        sub.start(ready_timeout)
        return sub

    def close(self) -> None:
        for sub in list(self._subscriptions):
            sub.close()
        self._subscriptions.clear()
        with contextlib.suppress(Exception):
            self._r.close()


class _RedisSubscription(Subscription):
    """A listener thread on the change channel; reconnects with backoff, then reports ``None`` (resync)."""

    def __init__(self, store: RedisStore, callback: Callback, call: Call | None) -> None:
        self._store = store
        self._callback = callback
        self._call = call
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="txgate-store-redis-sub", daemon=True)

    def start(self, ready_timeout: float) -> None:
        self._thread.start()
        if not self._ready.wait(ready_timeout):
            log.warn("store: Redis {redis} subscription not confirmed yet; still trying", redis=self._store._label)

    def _deliver(self, name: str | None) -> None:
        if self._call is None:
            _safe(self._callback, name)
        else:
            self._call(_safe, self._callback, name)

    def _run(self) -> None:
        subscribed_before = []

        def subscribed():
            self._ready.set()
            if subscribed_before:
                self._deliver(None)  # changes may have been missed while disconnected
            subscribed_before.append(True)

        def message(data):
            try:
                name = json.loads(data)["name"]
            except (ValueError, KeyError, TypeError):
                return
            self._deliver(name)

        follow_channel(self._store._r, self._store.channel, self._stop, subscribed, message,
                       lambda error, delay: log.warn("store: Redis {redis} subscription lost ({error}); retrying in "
                                                     "{delay}s", redis=self._store._label, error=error, delay=delay))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        with contextlib.suppress(ValueError):
            self._store._subscriptions.remove(self)


def follow_channel(r, channel: str, stop: threading.Event, subscribed: Callable[[], None],
                   message: Callable[[str], None], lost: Callable[[str, float], None],
                   idle: Callable[[], None] | None = None) -> None:
    """Until ``stop``: subscribe to ``channel``, call ``subscribed()`` on each (re)subscription, ``message(data)``
    per message and ``idle()`` at least every 0.2 s; reconnect with backoff (0.1 s doubling to 5 s),
    reporting each loss through ``lost(error, delay)``. Runs in its own thread."""
    backoff = 0.1
    while not stop.is_set():
        pubsub = r.pubsub()
        try:
            pubsub.subscribe(channel)
            while not stop.is_set():
                msg = pubsub.get_message(timeout=0.2)
                if msg is not None and msg["type"] == "subscribe":
                    backoff = 0.1
                    subscribed()
                elif msg is not None and msg["type"] == "message":
                    message(msg["data"])
                if idle is not None:
                    idle()
        except Exception as e:
            if stop.is_set():
                break
            lost(str(e), backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()
