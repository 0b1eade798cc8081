# -*- test-case-name: tests.test_store -*-
"""``DeferredStore``: the blocking Store API run in a thread pool, returning Deferreds (for the reactor thread)."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from txgate.store.base import Store

_METHODS = (
    "put", "get", "resolve", "list", "history", "rollback", "delete",
    "create_pending_key", "pending_csr", "pending_names", "complete_pending",
)


class DeferredStore:
    """Wraps a Store: each method of the Store API returns a Deferred firing with the same result or StoreError."""

    def __init__(self, store: Store, reactor: Any = None, threadpool: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.store = store
        self._reactor = reactor
        self._pool = threadpool if threadpool is not None else reactor.getThreadPool()

    def __repr__(self) -> str:
        return f"<DeferredStore {self.store!r}>"

    def __getattr__(self, name: str) -> Any:
        if name not in _METHODS:
            raise AttributeError(name)
        method = getattr(self.store, name)

        def run(*args: Any, **kw: Any) -> Deferred:
            return deferToThreadPool(self._reactor, self._pool, method, *args, **kw)

        run.__name__ = name
        run.__doc__ = method.__doc__
        return run

    def subscribe(self, callback: Any) -> Any:
        """Subscribe with changes delivered in the reactor thread (``reactor.callFromThread``)."""
        return self.store.subscribe(callback, call=self._reactor.callFromThread)
