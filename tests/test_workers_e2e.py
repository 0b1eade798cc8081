"""Worker processes for real: `twistd txgate` with workers = 2 (a supervisor and two workers), real clients from
several loopback addresses, real signals (kill -9, SIGHUP, SIGTERM), /metrics, TLS resumption, the quick start."""
from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ADMIN_EPHEMERAL, LISTEN_RE, poll
from txgate.runtime.steering import worker_for

ECHO = """
[gateway]
state_dir = ./txgate-state
{gateway}

[listener:main]
bind = 127.0.0.1:0
{listener}

[api:echo]
path = /echo
upstream = builtin:echo
{api}
"""

LOAD_THREADS = 4


def config(gateway: str = "", listener: str = "", api: str = "", admin: bool = False) -> str:
    text = ECHO.format(gateway=gateway, listener=listener, api=api)
    return text + ("\n[admin]\nbind = 127.0.0.1:0\n" if admin else "\n[admin]\nbind = off\n")


def _context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


CTX = _context()


def get(port: int, path: str = "/echo/x", source: str = "127.0.0.1", timeout: float = 20) -> tuple[int, bytes, bytes]:
    """One request on a fresh TLS connection from ``source``: (status, body, the server's leaf DER)."""
    conn = http.client.HTTPSConnection("localhost", port, context=CTX, timeout=timeout, source_address=(source, 0))
    try:
        conn.connect()
        leaf = conn.sock.getpeercert(binary_form=True)
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), leaf
    finally:
        conn.close()


def workers_of(gw) -> dict[int, int]:
    """slot -> pid of the supervisor's live worker processes."""
    out = {}
    for tid in os.listdir(f"/proc/{gw.proc.pid}/task"):
        try:
            children = Path(f"/proc/{gw.proc.pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for pid in map(int, children):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if b"txgate.runtime.worker_main" in argv and stat[0] != "Z":
                out[int(argv[argv.index(b"--slot") + 1])] = pid
    return out


def served_by(gw) -> dict[int, int]:
    """pid -> requests counted in that worker's multiprocess metrics file (flushed every 0.5 s)."""
    from prometheus_client.mmap_dict import MmapedDict

    out = {}
    d = gw.workdir / "txgate-state" / "metrics"
    for f in d.glob("counter_*.db"):
        pid = int(f.stem.split("_")[1])
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(f)):
            if json.loads(key)[1] == "txgate_requests_total":
                out[pid] = out.get(pid, 0) + int(value)
    return out


class Load:
    """Threads sending requests on fresh connections until stopped; every outcome recorded."""

    def __init__(self, port: int, threads: int = LOAD_THREADS, sources=("127.0.0.1",)) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.results: list[tuple[float, float, object]] = []  # (started, ended, status or exception)
        self.threads = [threading.Thread(target=self._run, args=(sources[i % len(sources)],), daemon=True)
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, source: str) -> None:
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                outcome: object = get(self.port, source=source)[0]
            except Exception as e:  # recorded, judged by the test
                outcome = e
            self.results.append((t0, time.monotonic(), outcome))

    def ok(self) -> int:
        return sum(1 for r in self.results if r[2] == 200)

    def failures(self) -> list:
        return [r for r in self.results if r[2] != 200]

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(60)


@pytest.fixture
def two_workers(gateway_factory):
    def start(text: str, **kw):
        gw = gateway_factory(text, workers="2", **kw)
        poll(lambda: len(workers_of(gw)) == 2, 10, what="two worker processes")
        return gw

    return start


def test_two_workers_share_fresh_connections(two_workers):
    gw = two_workers(config(gateway="worker_affinity = none"))
    pids = set(workers_of(gw).values())
    for _ in range(200):
        assert get(gw.port)[0] == 200
    counts = poll(lambda: (c := served_by(gw)) and sum(c.values()) == 200 and c, 10, what="200 requests counted")
    assert set(counts) == pids
    assert min(counts.values()) >= 40, counts  # each worker >= 20%


def test_client_address_affinity_keeps_each_source_on_its_worker(two_workers):
    gw = two_workers(config())
    slots = workers_of(gw)
    expected: dict[int, int] = {}
    for i in range(1, 41):
        src = f"127.0.0.{i}"
        for _ in range(3):
            assert get(gw.port, source=src)[0] == 200
        pid = slots[worker_for(src, 2)]
        expected[pid] = expected.get(pid, 0) + 3
    assert min(expected.values()) >= 30  # both workers have sources
    assert poll(lambda: served_by(gw) == expected and expected, 10, what=f"per-worker counts {expected}")


def test_kill_9_worker_is_replaced_within_a_second_under_load(two_workers):
    gw = two_workers(config(gateway="worker_affinity = none"))
    victim = workers_of(gw)[0]
    load = Load(gw.port)
    try:
        poll(lambda: load.ok() >= 20, 20, what="load running")
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replacement = poll(lambda: workers_of(gw).get(0) not in (None, victim) and workers_of(gw)[0], 5,
                           interval=0.005, what="a new worker 0")
        spawned_after = time.monotonic() - killed_at
        gw.wait_log(rf"worker 0 \(pid {victim}\) was killed by SIGKILL; replacing it")
        gw.wait_log(rf"worker 0 \(pid {replacement}\) ready", timeout=20)
        served = load.ok()
        poll(lambda: load.ok() >= served + 20, 20, what="load after the replacement")
    finally:
        load.stop()
    assert spawned_after < 1.0, spawned_after
    failures = load.failures()
    # Only requests in flight on the killed worker may fail: at most one per load thread, all started before
    # the kill.
    assert len(failures) <= LOAD_THREADS, failures
    assert all(started < killed_at for started, _ended, _e in failures), failures
    assert gw.proc.poll() is None


def _queued(port: int) -> list[int]:
    """Recv-Q (connections waiting for accept) of each listening socket on ``port``."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    return [int(line.split()[1]) for line in out.splitlines() if line.strip()]


def test_connections_queued_on_a_dead_workers_socket_are_served_by_its_replacement(two_workers):
    """The supervisor keeps every worker's socket: what waits in a dead worker's accept queue is not lost."""
    gw = two_workers(config())
    victim = workers_of(gw)[0]
    sources = [f"127.0.0.{i}" for i in range(1, 40) if worker_for(f"127.0.0.{i}", 2) == 0][:5]
    os.kill(victim, signal.SIGSTOP)  # accepts nothing from now on
    results: list = []

    def one(src):
        try:
            results.append(get(gw.port, source=src, timeout=30)[0])
        except Exception as e:
            results.append(e)

    threads = [threading.Thread(target=one, args=(s,)) for s in sources]
    try:
        for t in threads:
            t.start()
        poll(lambda: len(sources) in _queued(gw.port), 10, what="five connections queued on worker 0's socket")
    finally:
        os.kill(victim, signal.SIGKILL)
    gw.wait_log(r"worker 0 \(pid \d+\) ready", timeout=20)
    for t in threads:
        t.join(40)
    assert results == [200] * len(sources)


def test_sighup_new_certificate_reaches_every_worker_and_a_broken_config_changes_nothing(two_workers, certs):
    cert_a, key_a = certs.leaf("workers-a", ["localhost"])
    cert_b, key_b = certs.leaf("workers-b", ["localhost"])
    gw = two_workers(config(listener=f"certificate = {cert_a} {key_a}"))
    sources = [f"127.0.0.{i}" for i in range(1, 9)]
    assert {worker_for(s, 2) for s in sources} == {0, 1}

    def leaves() -> set[bytes]:
        return {get(gw.port, source=s)[2] for s in sources}

    (leaf_a,) = leaves()
    load = Load(gw.port, sources=sources)
    try:
        poll(lambda: load.ok() >= 20, 20, what="load running")
        gw.config_path.write_text(config(listener=f"certificate = {cert_b} {key_b}"))
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"\[txgate\.service#info\] reloaded \(SIGHUP\): 1 listeners, 1 APIs; 2 workers", timeout=30)
        assert len(re.findall(r"reloaded \(SIGHUP\): 1 listeners, 1 APIs\n", gw.output())) == 2  # each worker
        (leaf_b,) = leaves()
        assert leaf_b != leaf_a
        served = load.ok()
        poll(lambda: load.ok() >= served + 20, 20, what="load after the reload")
    finally:
        load.stop()
    assert load.failures() == []

    gw.config_path.write_text(config(listener="certificate = /nonexistent.pem /nonexistent-key.pem"))
    gw.signal(signal.SIGHUP)
    gw.wait_log(r"reload \(SIGHUP\) failed, keeping the running configuration: .*nonexistent", timeout=30)
    assert leaves() == {leaf_b}
    assert len(re.findall(r"reloaded \(SIGHUP\)", gw.output())) == 3  # nothing new: no worker reloaded


def test_sigterm_drains_in_flight_requests_on_every_worker(two_workers, backend):
    gw = two_workers(config(api=f"upstream = {backend.url()}\npath = /\n").replace("upstream = builtin:echo\n", "")
                     .replace("path = /echo\n", ""))
    pids = list(workers_of(gw).values())
    sources = [f"127.0.0.{i}" for i in range(1, 7)]
    assert {worker_for(s, 2) for s in sources} == {0, 1}
    results: list = []

    def one(src):
        try:
            results.append(get(gw.port, "/sleep/1.5", source=src)[0])
        except Exception as e:
            results.append(e)

    threads = [threading.Thread(target=one, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    poll(lambda: len(backend.requests) == len(sources), 20, what="every request at the backend")
    gw.signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert results == [200] * len(sources)
    assert gw.proc.wait(30) == 0
    poll(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10, what="no worker left")
    out = gw.output()
    assert out.count("exited with status 0") == 2, out


def test_metrics_count_the_requests_of_both_workers(two_workers):
    gw = two_workers(config(admin=True))
    admin = int(gw.wait_log(r"admin API on http://127\.0\.0\.1:(\d+) ").group(1))
    sources = [f"127.0.0.{i}" for i in range(1, 26)]
    for src in sources:
        for _ in range(2):
            assert get(gw.port, source=src)[0] == 200
    per_worker = {worker_for(s, 2) for s in sources}
    assert per_worker == {0, 1}

    def scrape() -> str:
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()

    # A worker's flush writes one family after another while the admin API reads the files: wait for both.
    hs = re.compile(r'txgate_tls_handshakes_total\{listener="main",result="ok",version="TLSv1.3"\} 50.0')
    text = poll(lambda: (t := scrape()) and 'txgate_requests_total{api="echo",status="200"} 50.0' in t
                and hs.search(t) and t, 30, what="50 requests and 50 handshakes in /metrics")
    assert "txgate_workers 2.0" in text
    assert "txgate_worker_restarts_total 0.0" in text
    assert re.search(r'txgate_tls_handshakes_total\{listener="main",result="ok",version="TLSv1.3"\} 50.0', text), text
    assert text.count("# TYPE txgate_requests_total counter") == 1


def _s_client(port: int, *args: str) -> str:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-ign_eof", *args],
        input=b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", capture_output=True,
        timeout=20,
    )
    return (out.stdout + out.stderr).decode(errors="replace")


def test_returning_clients_resume_their_tls_session_with_two_workers(two_workers, tmp_path):
    gw = two_workers(config())
    sess = str(tmp_path / "sess.pem")
    first = _s_client(gw.port, "-sess_out", sess)
    assert "New, " in first and "HTTP/1.1 200" in first, first
    reused = 0
    for _ in range(100):
        text = _s_client(gw.port, "-sess_in", sess)
        assert "HTTP/1.1 200" in text, text
        reused += "Reused, " in text
    assert reused >= 95, reused


def test_quick_start_unchanged_with_workers_auto(gateway_factory):
    from test_quickstart_e2e import EXAMPLE, _readme_curls
    from txgate.runtime.workers import resolve_workers

    gw = gateway_factory(ADMIN_EPHEMERAL + EXAMPLE.read_text().replace("127.0.0.1:8443", "127.0.0.1:0"), workers=None)
    assert "workers" not in gw.config_path.read_text()  # the default: auto
    expected = resolve_workers(None)
    if expected > 1:
        poll(lambda: len(workers_of(gw)) == expected, 10, what=f"{expected} workers")
        gw.wait_log(rf"{expected} workers serving")
    for command in _readme_curls():
        argv = shlex.split(command.replace("localhost:8443", f"localhost:{gw.port}"))
        r = subprocess.run(argv + ["-sS"], cwd=gw.workdir, capture_output=True, timeout=30)
        assert r.returncode == 0, (command, r.stderr)
        assert json.loads(r.stdout)["path"] == "/echo/hello"
    assert len(LISTEN_RE.findall(gw.output())) == 1
    assert gw.stop() == 0


def test_a_new_listener_on_reload_starts_new_workers_and_the_previous_ones_drain(two_workers):
    gw = two_workers(config())
    before = set(workers_of(gw).values())
    gw.config_path.write_text(config() + "\n[listener:second]\nbind = 127.0.0.1:0\n")
    gw.signal(signal.SIGHUP)
    gw.wait_log(r"\[txgate\.service#info\] reloaded \(SIGHUP\): 2 listeners, 1 APIs; 2 workers", timeout=30)
    second = int(gw.wait_log(r"listener second on https://127\.0\.0\.1:(\d+) ").group(1))
    poll(lambda: not before & set(workers_of(gw).values()) and len(workers_of(gw)) == 2, 30,
         what="the previous workers gone, two new ones")
    for port in (gw.port, second):
        for i in range(1, 9):
            assert get(port, source=f"127.0.0.{i}")[0] == 200
    poll(lambda: len(re.findall(r"worker \d \(pid \d+, previous generation\) exited with status 0", gw.output())) == 2,
         10, what="two previous-generation workers exited 0")


def test_workers_exit_when_the_supervisor_is_killed(two_workers):
    gw = two_workers(config())
    pids = list(workers_of(gw).values())
    gw.proc.kill()
    gw.proc.wait(10)
    poll(lambda: not any(os.path.exists(f"/proc/{p}") and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                         for p in pids), 20, what="workers gone after the supervisor")


def test_a_worker_dying_five_times_within_a_minute_is_replaced_with_backoff(two_workers):
    gw = two_workers(config())
    killed = []
    for _ in range(5):
        pid = poll(lambda: (p := workers_of(gw).get(0)) not in (None, *killed) and p, 10, interval=0.005,
                   what="a worker 0 to kill")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    gw.wait_log(r"worker 0 \(pid \d+\) was killed by SIGKILL: it died 5 times within 60 s; replacing it with backoff "
                r"\(next in 1 s, up to 30 s\)")
    t0 = time.monotonic()
    poll(lambda: workers_of(gw).get(0) not in (None, *killed), 10, interval=0.01, what="the delayed replacement")
    assert time.monotonic() - t0 > 0.5  # not at once
    gw.wait_log(r"worker 0 \(pid \d+\) ready", timeout=20)
    assert len(re.findall(r"died 5 times", gw.output())) == 1
    assert get(gw.port)[0] == 200


def test_admin_reload_answers_once_every_worker_has_swapped(two_workers):
    gw = two_workers(config(admin=True))
    admin = int(gw.wait_log(r"admin API on http://127\.0\.0\.1:(\d+) ").group(1))
    gw.config_path.write_text(config(admin=True).replace("path = /echo", "path = /moved"))
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
    c.request("POST", "/reload", headers={"Content-Length": "0"})
    r = c.getresponse()
    assert (r.status, json.loads(r.read())) == (200, {"ok": True, "message": "1 listeners, 1 APIs; 2 workers"})
    assert len(re.findall(r"reloaded \(admin API\): 1 listeners, 1 APIs\n", gw.output())) == 2  # both, before
    for i in range(1, 9):
        assert get(gw.port, "/moved/x", source=f"127.0.0.{i}")[0] == 200
        assert get(gw.port, "/echo/x", source=f"127.0.0.{i}")[0] == 404
