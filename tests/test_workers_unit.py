"""Worker processes without processes: the worker count, restart backoff, the steering program, socket groups,
whole-line access log writes, and /metrics summed over workers' multiprocess files."""
from __future__ import annotations

import ipaddress
import os
import select
import socket
import subprocess
import sys
import textwrap

import pytest

from txgate.accesslog import whole_line_chunks
from txgate.config import ConfigError, parse_text
from txgate.runtime import sockets, steering
from txgate.runtime.workers import RestartPolicy, check_single_process, resolve_workers

from conftest import gateway_env

BASE = "[listener:main]\nbind = 127.0.0.1:0\n[api:echo]\nupstream = builtin:echo\n"


# -- the worker count and the embedding refusal ------------------------------------------------------

def test_auto_is_the_cpus_this_process_may_run_on():
    assert resolve_workers(None, cpus={0, 3, 5}) == 3
    assert resolve_workers(None) == len(os.sched_getaffinity(0))
    assert resolve_workers(4, cpus={0}) == 4


@pytest.mark.parametrize("text, workers, affinity", [
    ("", None, "client_address"),
    ("workers = auto\n", None, "client_address"),
    ("workers = 3\nworker_affinity = none\n", 3, "none"),
])
def test_gateway_workers_keys(text, workers, affinity):
    cfg = parse_text("[gateway]\n" + text + BASE, "gw.ini")
    assert (cfg.gateway.workers, cfg.gateway.worker_affinity) == (workers, affinity)


@pytest.mark.parametrize("text, message", [
    ("workers = 0", "gw.ini: [gateway] workers: must be at least 1, got 0"),
    ("workers = many", "gw.ini: [gateway] workers: expected an integer, got 'many'"),
    ("worker_affinity = sticky", "gw.ini: [gateway] worker_affinity: expected one of client_address, none, got 'sticky'"),
])
def test_bad_workers_keys_name_the_key(text, message):
    with pytest.raises(ConfigError) as e:
        parse_text("[gateway]\n" + text + "\n" + BASE, "gw.ini")
    assert str(e.value).startswith(message)


def test_make_service_refuses_more_than_one_worker():
    import txgate

    cfg = parse_text("[gateway]\nworkers = 4\n" + BASE, "gw.ini")
    with pytest.raises(ConfigError) as e:
        txgate.makeService(cfg)
    assert str(e.value) == ("gw.ini: [gateway] workers: 4: txgate.makeService() runs the gateway inside your "
                            "process, one worker only; set workers = 1 (or auto), or run `twistd txgate` for "
                            "worker processes")
    check_single_process(parse_text("[gateway]\nworkers = auto\n" + BASE, "gw.ini"))  # auto embeds as one
    check_single_process(parse_text("[gateway]\nworkers = 1\n" + BASE, "gw.ini"))


# -- restart backoff --------------------------------------------------------------------------------

def test_a_dead_worker_is_replaced_at_once_until_five_deaths_in_a_minute():
    p = RestartPolicy()
    assert [p.died(t) for t in (0, 1, 2, 3)] == [(0.0, False)] * 4
    assert p.died(4) == (1.0, True)      # the fifth: backoff starts (one error line)
    assert p.died(6) == (2.0, False)
    assert p.died(9) == (4.0, False)
    assert p.died(14) == (8.0, False)
    assert p.died(23) == (16.0, False)
    assert p.died(40) == (30.0, False)   # capped


def test_deaths_older_than_the_window_are_forgotten():
    p = RestartPolicy()
    for t in (0, 1, 2, 3):
        p.died(t)
    assert p.died(61.5) == (0.0, False)  # 0 and 1 left the window: 2, 3 and this one within 60 s
    assert p.died(61.8) == (0.0, False)  # 2, 3, 61.5, 61.8
    assert p.died(62.1) == (0.0, False)  # 2 left: 3, 61.5, 61.8, 62.1
    assert p.died(62.4) == (1.0, True)   # five within 60 s


# -- the steering program -------------------------------------------------------------------------

def _ipv4_header(src: str) -> bytes:
    return bytes([0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0]) + ipaddress.ip_address(src).packed + bytes([127, 0, 0, 1])


def _ipv6_header(src: str) -> bytes:
    return bytes([0x60, 0, 0, 0, 0, 40, 6, 64]) + ipaddress.ip_address(src).packed + ipaddress.ip_address("::1").packed


@pytest.mark.parametrize("workers", [2, 3, 4, 16])
def test_program_picks_the_worker_of_the_source_address(workers):
    prog = steering.build_program(workers)
    for i in range(256):
        v4 = f"10.1.{i}.{(i * 7) % 256}"
        assert steering.emulate(prog, _ipv4_header(v4)) == steering.worker_for(v4, workers)
        v6 = f"2001:db8:{i:x}::{i * 13:x}"
        assert steering.emulate(prog, _ipv6_header(v6)) == steering.worker_for(v6, workers)
    assert steering.worker_for("::ffff:10.1.2.3", workers) == steering.worker_for("10.1.2.3", workers)


def test_program_spreads_addresses_and_keeps_one_address_on_one_worker():
    counts = [0, 0]
    for i in range(1000):
        counts[steering.worker_for(f"192.0.{i // 256}.{i % 256}", 2)] += 1
    assert min(counts) > 400, counts
    counts = [0] * 4
    for i in range(1000):
        counts[steering.worker_for(f"2001:db8::{i:x}", 4)] += 1
    assert min(counts) > 200, counts
    prog = steering.build_program(2)
    assert len({steering.emulate(prog, _ipv4_header("203.0.113.9")) for _ in range(10)}) == 1


def test_one_worker_program_returns_zero():
    assert steering.build_program(1) == [(steering.RET | steering.K, 0, 0, 0)]
    assert steering.worker_for("10.0.0.1", 1) == 0
    with pytest.raises(ValueError):
        steering.build_program(0)


def test_program_packs_as_sock_filters():
    prog = steering.build_program(3)
    raw = steering.pack(prog)
    assert len(raw) == 8 * len(prog)
    assert raw[:8] == bytes([0x30, 0, 0, 0]) + ((steering.SKF_NET_OFF) & 0xFFFFFFFF).to_bytes(4, sys.byteorder)


@pytest.mark.parametrize("host", ["127.0.0.1", "::"])
def test_attached_program_steers_real_connections(host):
    """The kernel runs the program: each loopback source address lands on the socket worker_for names."""
    group = sockets.open_group("main", host, 0, 3)
    try:
        steering.attach(group.sockets[0], 3)
        for i in range(1, 31):
            src = f"127.0.0.{i}"
            with socket.create_connection(("127.0.0.1", group.port), timeout=5, source_address=(src, 0)):
                ready, _, _ = select.select(group.sockets, [], [], 5)
                assert len(ready) == 1
                conn, _ = ready[0].accept()
                conn.close()
            assert group.sockets.index(ready[0]) == steering.worker_for(src, 3), src
    finally:
        group.close()


# -- socket groups ------------------------------------------------------------------------------------

def test_reuseport_group_shares_one_port_and_shared_mode_has_one_socket():
    group = sockets.open_group("main", "127.0.0.1", 0, 3)
    try:
        assert len(group.sockets) == 3 and group.port and group.requested == 0
        assert {s.getsockname()[1] for s in group.sockets} == {group.port}
        assert all(not s.getblocking() for s in group.sockets)
        assert [group.fd_for(i) for i in range(3)] == [s.fileno() for s in group.sockets]
    finally:
        group.close()
    shared = sockets.open_group("main", "127.0.0.1", 0, 3, mode="shared")
    try:
        assert len(shared.sockets) == 1 and shared.fd_for(2) == shared.sockets[0].fileno()
    finally:
        shared.close()


def test_a_busy_address_is_an_oserror():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(OSError):
            sockets.open_group("main", "127.0.0.1", busy.getsockname()[1], 2)
    finally:
        busy.close()


# -- the access log ------------------------------------------------------------------------------------

def test_access_log_chunks_hold_whole_lines_up_to_pipe_buf():
    lines = [f"line {i} " + "x" * 90 for i in range(200)]
    chunks = whole_line_chunks(lines)
    assert b"".join(chunks) == "".join(line + "\n" for line in lines).encode()
    assert all(len(c) <= 4096 and c.endswith(b"\n") for c in chunks)
    assert len(chunks) < 10
    long = ["y" * 5000, "short"]
    assert whole_line_chunks(long) == [b"y" * 5000 + b"\n", b"short\n"]


# -- /metrics over several workers ---------------------------------------------------------------------

WORKER_COUNTS = textwrap.dedent("""
    import sys
    from txgate.metrics_multiprocess import WorkerMetrics

    class H:
        api = "echo"

    m = WorkerMetrics()
    for _ in range(int(sys.argv[1])):
        m.request_done(H(), 200)
    m.handshake("main", "TLSv1.3", "ok")
    m.ocsp_fetch_failed("timeout")
    m.ocsp_source = lambda: [("listener:main", 10.0 * int(sys.argv[1]), False)]
    m.flush()
    m.flush()  # a second flush adds nothing
""")


def test_supervisor_metrics_sum_the_workers_files(tmp_path):
    from txgate.metrics_multiprocess import SupervisorMetrics

    env = dict(gateway_env(), PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", WORKER_COUNTS, str(n)], env=env, check=True, timeout=60)
    m = SupervisorMetrics(str(tmp_path))
    m.handshake("admin", "TLSv1.3", "ok")

    class Sup:
        slots = []
        restarts = 2

    m.supervisor = Sup()
    text = m.exposition()[0].decode()
    assert 'txgate_requests_total{api="echo",status="200"} 7.0' in text
    assert 'txgate_tls_handshakes_total{listener="main",result="ok",version="TLSv1.3"} 2.0' in text
    assert 'txgate_tls_handshakes_total{listener="admin",result="ok",version="TLSv1.3"} 1.0' in text
    assert "txgate_workers 0.0" in text
    assert "txgate_worker_restarts_total 2.0" in text
    assert text.count("# TYPE txgate_tls_handshakes_total counter") == 1
    assert 'txgate_ocsp_fetch_failures_total{reason="timeout"} 2.0' in text
    assert text.count("# TYPE txgate_ocsp_fetch_failures_total counter") == 1
    assert 'txgate_ocsp_staple_age_seconds{certificate="listener:main"} 40.0' in text  # the oldest
