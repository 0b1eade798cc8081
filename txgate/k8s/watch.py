# -*- test-case-name: tests.test_k8s_unit,tests.test_k8s_e2e -*-
"""Following one named API object: list it, then watch it from the list's resourceVersion, for as long as asked.

The one list + watch loop of the Kubernetes source (Secrets and CSRs both go through it): the list
and the watch select the object with ``fieldSelector=metadata.name=NAME``; the watch asks for
bookmarks and resumes from the last resourceVersion seen; a 410 Gone (an ``ERROR`` event or an HTTP
410) means a fresh list; any other break reconnects with exponential backoff. The object's versions
are handed to ``on_object`` in order (one at a time, even when it returns a Deferred).
"""
from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import Logger

from txgate.k8s.client import ApiError

log = Logger(namespace="txgate.k8s")


class Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def _nothing(*_args) -> None:
    return None


class ObjectWatch:
    """Hands every version of the object ``name`` under the collection ``path`` to ``on_object``.

    ``on_deleted(obj)`` is called when the watch reports its deletion, ``on_missing()`` when a list
    does not have it; ``listed`` fires once the first list was handled.
    """

    BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
    WATCH_SECONDS = 300

    def __init__(self, client, path: str, name: str, label: str, reactor, *, on_object,
                 on_deleted=_nothing, on_missing=_nothing) -> None:
        self.client, self.path, self.name, self.label, self.reactor = client, path, name, label, reactor
        self.on_object, self.on_deleted, self.on_missing = on_object, on_deleted, on_missing
        self.rv: str | None = None
        self.listed: defer.Deferred = defer.Deferred()
        self.running = False
        self._queue: defer.Deferred = defer.succeed(None)  # hands versions over in order
        self._gone = False
        self._backoff = self.BACKOFF_MIN
        self._stream = None  # the open watch stream, dropped by stop()

    def start(self) -> None:
        """Start following (runs until ``stop``)."""
        self.running = True
        self._run()

    def stop(self) -> None:
        """Stop following and drop the open watch stream."""
        self.running = False
        if self._stream is not None:
            self._stream.stop()
            self._stream = None

    def _selector(self) -> str:
        return f"metadata.name={self.name}"

    @defer.inlineCallbacks
    def _run(self):
        while self.running:
            try:
                if self.rv is None:
                    yield self._list()
                    if not self.running:
                        break
                self._gone = False
                started = self.reactor.seconds()
                yield self.client.watch(self.path, {
                    "fieldSelector": self._selector(), "resourceVersion": self.rv,
                    "allowWatchBookmarks": "true", "timeoutSeconds": str(self.WATCH_SECONDS)}, self._event,
                    on_stream=self._opened)
                self._stream = None
                yield self._queue
                if self._gone:
                    raise Gone()
                if self.reactor.seconds() - started >= self.BACKOFF_MIN:
                    self._backoff = self.BACKOFF_MIN
                    continue  # a watch that ended normally resumes at once
                why = "the watch ended at once"  # a server that closes every watch: back off, do not spin
            except Gone:
                log.info("{label}: resourceVersion {rv} is gone; listing again", label=self.label, rv=self.rv)
                self.rv = None
                continue
            except ApiError as e:
                if e.status == 410:
                    log.info("{label}: resourceVersion {rv} is gone; listing again", label=self.label, rv=self.rv)
                    self.rv = None
                    continue
                why = str(e)
            except Exception as e:
                why = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
            self._stream = None
            if not self.running:
                break
            log.warn("{label}: watch failed ({error}); retrying in {delay:.1f}s", label=self.label, error=why,
                     delay=self._backoff)
            yield task.deferLater(self.reactor, self._backoff, lambda: None)
            self._backoff = min(self._backoff * 2, self.BACKOFF_MAX)

    def _opened(self, stream) -> None:
        if self.running:
            self._stream = stream
        else:
            stream.stop()

    @defer.inlineCallbacks
    def _list(self):
        got = yield self.client.request("GET", self.path, query={"fieldSelector": self._selector()})
        items = [i for i in got.get("items") or () if (i.get("metadata") or {}).get("name") == self.name]
        if not items:
            self._enqueue(self.on_missing)
        for item in items:
            self._enqueue(self.on_object, item)
        yield self._queue
        self.rv = str((got.get("metadata") or {}).get("resourceVersion") or "") or None
        if not self.listed.called:
            self.listed.callback(None)

    def _event(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                self._gone = True
            else:
                log.warn("{label}: watch error: {message}", label=self.label, message=obj.get("message"))
            return
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED") and (obj.get("metadata") or {}).get("name") == self.name:
            self._enqueue(self.on_object, obj)
        elif kind == "DELETED":
            self._enqueue(self.on_deleted, obj)
        if rv:
            self.rv = str(rv)

    def _enqueue(self, fn, *args) -> None:
        """Call ``fn(*args)`` after the versions before it were handled (not once stopped)."""
        self._queue.addCallback(lambda _: fn(*args) if self.running else None)
        self._queue.addErrback(lambda f: log.failure("{label}: handling a version failed", f, label=self.label))
