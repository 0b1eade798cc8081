"""The Redis store against a real redis-server: the directory backend's tests, plus fleet change messages."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import poll
from test_store import *  # noqa: F401,F403  (the same behaviour tests, run with the Redis backend below)
from test_store import SECRET, StoreError, assert_code, leaf, open_store, pem_chain, pem_key

# Backend-independent or directory-only tests are not repeated here.
del test_load_secret_from_file_or_environment, test_split_pem_bundle_separates_the_key  # noqa: F821
del test_bad_refs_are_rejected, test_directory_layout_modes  # noqa: F821
del test_without_a_secret_chains_are_stored_but_keys_refused  # noqa: F821

DB = 3


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RedisServer:
    """A throwaway redis-server on a free loopback port (no persistence)."""

    def __init__(self, workdir) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> RedisServer:
        import redis

        exe = shutil.which("redis-server")
        for _attempt in range(3):
            self.port = _free_port()
            log = open(os.path.join(self.workdir, f"redis-{self.port}.log"), "wb")
            self.proc = subprocess.Popen(
                [exe, "--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(self.workdir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)

            def up():
                if self.proc.poll() is not None:
                    return "exited"
                try:
                    return client.ping() and "up"
                except redis.RedisError:
                    return None

            if poll(up, 10, what="redis-server PING") == "up":
                client.close()
                return self
        raise AssertionError("redis-server did not start (port collisions?)")

    def url(self, db: int = DB) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, **kw):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=DB, **kw)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("redis")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


class RedisBackend:
    name = "redis"

    def __init__(self, server: RedisServer, tmp_path) -> None:
        self.server = server
        self.state_dir = str(tmp_path / "state")
        self.opened: list = []
        server.client().flushdb()

    def make(self, secret=SECRET, clock=None):
        store = open_store(self.server.url(), self.state_dir, secret, clock=clock)
        self.opened.append(store)
        return store

    def raw(self) -> bytes:
        r = self.server.client()
        out = []
        for key in r.keys("*"):
            out.append(key)
            kind = r.type(key)
            if kind == b"hash":
                for k, v in r.hgetall(key).items():
                    out += [k, v]
            elif kind == b"set":
                out += list(r.smembers(key))
            elif kind == b"string":
                out.append(r.get(key))
        assert out, "nothing stored in Redis?"
        return b"\n".join(out)

    def close(self) -> None:
        for s in self.opened:
            s.close()


@pytest.fixture
def backend(redis_server, tmp_path):
    b = RedisBackend(redis_server, tmp_path)
    yield b
    b.close()


def test_records_live_in_redis_hashes(backend, ca):
    ck = leaf(ca)
    e = backend.make().put("h", pem_chain(ck), pem_key(ck))
    r = backend.server.client(decode_responses=True)
    assert r.type(f"txgate:store:entry:{e.id}") == "hash"
    assert r.hget(f"txgate:store:entry:{e.id}", "chain_pem") == pem_chain(ck).decode()
    assert r.type("txgate:store:name:h") == "hash"
    assert r.smembers("txgate:store:names") == {"h"}
    assert r.smembers("txgate:store:entries") == {e.id}


def test_a_redis_store_refuses_to_start_without_a_secret(redis_server, tmp_path):
    with pytest.raises(StoreError) as exc:
        open_store(redis_server.url(), str(tmp_path), None)
    assert_code(exc, "no_secret", "a Redis store needs a store secret (set store_secret_file or TXGATE_STORE_SECRET)")


def test_an_unreachable_redis_is_one_clear_error(tmp_path):
    port = _free_port()
    with pytest.raises(StoreError) as exc:
        open_store(f"redis://:hunter2hunter2@127.0.0.1:{port}/0", str(tmp_path), SECRET)
    assert exc.value.code == "backend_error"
    assert exc.value.reason.startswith(f"Redis at redis://127.0.0.1:{port}/0: ConnectionError: ")
    assert "hunter2" not in exc.value.reason and "\n" not in exc.value.reason


def test_a_put_through_one_store_reaches_the_other_within_2_seconds(backend, ca):
    writer, reader = backend.make(), backend.make()
    seen: list = []
    threads: set = set()

    def call(f, *args):  # stands in for reactor.callFromThread
        threads.add(threading.current_thread().name)
        f(*args)

    sub = reader.subscribe(seen.append, call=call)
    ck = leaf(ca, "fleet.example")
    started = time.monotonic()
    entry = writer.put("fleet", pem_chain(ck), pem_key(ck))
    poll(lambda: "fleet" in seen, 2.0, what="the change callback of the other store")
    assert time.monotonic() - started < 2.0
    assert reader.get("fleet").id == entry.id and reader.get("fleet").has_key
    assert threads == {"txgate-store-redis-sub"}
    writer.delete("fleet")
    poll(lambda: seen.count("fleet") >= 2, 2.0, what="the delete message")
    sub.close()  # joins the listener thread: nothing can be delivered after it returns
    n = len(seen)
    writer.put("after", pem_chain(ck))
    assert len(seen) == n


def test_a_lost_subscription_reconnects_and_reports_a_resync(backend, ca):
    store = backend.make()
    seen: list = []
    store.subscribe(seen.append)
    backend.server.client().client_kill_filter(_type="pubsub")
    poll(lambda: None in seen, 5.0, what="the resync callback after reconnecting")
    ck = leaf(ca)
    backend.make().put("again", pem_chain(ck))
    poll(lambda: "again" in seen, 2.0, what="changes after reconnecting")
