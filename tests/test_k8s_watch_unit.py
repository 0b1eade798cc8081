"""txgate.k8s.watch.ObjectWatch with a scripted client and a fake clock: what it hands over, and stopping it."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from txgate.k8s.watch import ObjectWatch


class Stream:
    def __init__(self, done: defer.Deferred) -> None:
        self.done, self.stopped = done, False

    def stop(self) -> None:
        self.stopped = True
        if not self.done.called:
            self.done.errback(ConnectionError("dropped"))


class ScriptedClient:
    """Lists return ``items``; each watch gets the next list of events, then stays open until stopped."""

    def __init__(self, items, watches) -> None:
        self.items, self.watches, self.queries, self.streams = items, list(watches), [], []

    def request(self, method, path, body=None, query=None):
        self.queries.append(("list", path, dict(query or {})))
        return defer.succeed({"items": self.items, "metadata": {"resourceVersion": "7"}})

    def watch(self, path, query, on_event, on_stream=None):
        self.queries.append(("watch", path, dict(query)))
        done: defer.Deferred = defer.Deferred()
        stream = Stream(done)
        self.streams.append(stream)
        on_stream(stream)
        for event in (self.watches.pop(0) if self.watches else []):
            on_event(event)
        return done


def obj(name: str, rv: str, **extra) -> dict:
    return {"metadata": {"name": name, "resourceVersion": rv}, **extra}


def test_versions_in_order_then_deletion_and_stop_drops_the_stream():
    seen = []
    client = ScriptedClient([obj("a", "5", v=1)], [[
        {"type": "MODIFIED", "object": obj("a", "8", v=2)},
        {"type": "MODIFIED", "object": obj("other", "9", v=9)},  # not ours (a server ignoring the selector)
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "10"}}},
        {"type": "DELETED", "object": obj("a", "11")},
    ]])
    w = ObjectWatch(client, "/apis/g/v1/things", "a", "thing a", Clock(),
                    on_object=lambda o: seen.append(("object", o["v"])),
                    on_deleted=lambda o: seen.append(("deleted", o["metadata"]["name"])),
                    on_missing=lambda: seen.append(("missing",)))
    w.start()
    assert seen == [("object", 1), ("object", 2), ("deleted", "a")]
    assert client.queries[0] == ("list", "/apis/g/v1/things", {"fieldSelector": "metadata.name=a"})
    kind, path, query = client.queries[1]
    assert (kind, query["fieldSelector"], query["resourceVersion"], query["allowWatchBookmarks"]) == (
        "watch", "metadata.name=a", "7", "true")
    assert w.rv == "11" and w.listed.called
    w.stop()
    assert client.streams[0].stopped
    assert len(client.queries) == 2  # stopped: no reconnect


def test_an_empty_list_is_reported_missing():
    seen = []
    client = ScriptedClient([], [])
    w = ObjectWatch(client, "/p", "a", "a", Clock(), on_object=seen.append, on_missing=lambda: seen.append("missing"))
    w.start()
    assert seen == ["missing"]
    w.stop()


def test_a_failing_handler_does_not_stop_later_versions():
    seen = []

    def handler(o):
        if o["v"] == 1:
            raise ValueError("bad version")
        seen.append(o["v"])

    client = ScriptedClient([obj("a", "5", v=1)], [[{"type": "MODIFIED", "object": obj("a", "8", v=2)}]])
    w = ObjectWatch(client, "/p", "a", "a", Clock(), on_object=handler)
    w.start()
    assert seen == [2]
    w.stop()
