"""Signals and daemon mode with real processes: SIGUSR1 and reload reopen logs (worker processes too), SIGHUP
in an embedding program, twistd without -n (pid file, log file and access log under state_dir), JSON log lines."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import LISTEN_RE, REPO, TWISTD, curl, gateway_env, poll

ECHO = "[admin]\nbind = 127.0.0.1:0\n[listener:main]\nbind = 127.0.0.1:0\n[api:echo]\npath = /echo\nupstream = builtin:echo\n"


def _get(gw, path: str) -> None:
    r = curl("--cacert", gw.ca, gw.url(path))
    assert r.returncode == 0, r.stderr


def test_sigusr1_and_reload_reopen_a_moved_access_log(gateway_factory, tmp_path):
    log_path = tmp_path / "access.log"
    gw = gateway_factory(f"[gateway]\naccess_log = {log_path}\n" + ECHO)
    _get(gw, "/echo/one")
    poll(lambda: "/echo/one" in log_path.read_text(), what="first access log line")
    # SIGUSR1 reopens the file logrotate moved away; a reload does too.
    for n, (sig, said, path) in enumerate([(signal.SIGUSR1, r"log files reopened \(SIGUSR1\)", "/echo/two"),
                                           (signal.SIGHUP, r"reloaded \(SIGHUP\)", "/echo/three")], 1):
        os.rename(log_path, tmp_path / f"access.log.{n}")
        gw.signal(sig)
        gw.wait_log(said)
        _get(gw, path)
        poll(lambda: log_path.exists() and path in log_path.read_text(), what=f"{path} in the reopened file")
        assert path not in (tmp_path / f"access.log.{n}").read_text()
    assert gw.stop() == 0


def test_sigusr1_makes_every_worker_reopen_a_moved_access_log(gateway_factory, tmp_path):
    from test_workers_e2e import get, workers_of
    from txgate.runtime.steering import worker_for

    log_path = tmp_path / "access.log"
    gw = gateway_factory(f"[gateway]\naccess_log = {log_path}\n" + ECHO, workers="2")
    gw.wait_log(r"2 workers serving")
    # One client address steered to each worker (worker_affinity = client_address).
    sources = {slot: next(f"127.0.0.{i}" for i in range(1, 64) if worker_for(f"127.0.0.{i}", 2) == slot)
               for slot in (0, 1)}
    pids = workers_of(gw)
    for slot, src in sources.items():
        assert get(gw.port, f"/echo/before-{slot}", source=src)[0] == 200
    poll(lambda: all(f"/echo/before-{s}" in log_path.read_text() for s in sources), what="both workers' lines")
    os.rename(log_path, tmp_path / "access.log.1")
    gw.signal(signal.SIGUSR1)
    gw.wait_log(r"log files reopened \(SIGUSR1\)")
    for slot, src in sources.items():
        assert get(gw.port, f"/echo/after-{slot}", source=src)[0] == 200
    poll(lambda: log_path.exists() and all(f"/echo/after-{s}" in log_path.read_text() for s in sources),
         what="both workers' lines in the reopened file")
    assert "/echo/after-" not in (tmp_path / "access.log.1").read_text()
    assert workers_of(gw) == pids  # nobody restarted
    assert gw.stop() == 0


def test_embedded_gateway_reloads_on_sighup_and_keeps_running(tmp_path):
    cfg = tmp_path / "gw.ini"
    cfg.write_text("[gateway]\nstate_dir = ./state\n" + ECHO)
    out = tmp_path / "out.log"
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "embed.py"), str(cfg)], cwd=tmp_path,
                            env=gateway_env(), stdout=open(out, "wb"), stderr=subprocess.STDOUT)
    try:
        m = poll(lambda: LISTEN_RE.search(out.read_text()), 20, what="embedded gateway listening")
        port = m.group(4)
        ca = str(tmp_path / "state" / "ca.pem")
        cfg.write_text(cfg.read_text() + "[api:more]\npath = /more\nupstream = builtin:echo\n")
        proc.send_signal(signal.SIGHUP)
        poll(lambda: "reloaded (SIGHUP)" in out.read_text(), what="reload on SIGHUP")
        r = curl("--cacert", ca, f"https://localhost:{port}/more/x")
        assert r.returncode == 0 and json.loads(r.stdout)["path"] == "/more/x", r.stderr
        assert proc.poll() is None
        proc.send_signal(signal.SIGUSR1)
        poll(lambda: "log files reopened (SIGUSR1)" in out.read_text(), what="reopen on SIGUSR1")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert "txgate stopped" in out.read_text()


def test_daemon_mode_keeps_pid_log_and_access_log_in_state_dir(tmp_path):
    cfg = tmp_path / "gw.ini"
    cfg.write_text("[gateway]\nstate_dir = ./state\n" + ECHO)
    proc = subprocess.run([sys.executable, "-c", TWISTD, "txgate", "--config", str(cfg)], cwd=tmp_path,
                          env=gateway_env(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    state = tmp_path / "state"
    pidfile = state / "twistd.pid"
    pid = int(poll(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, what="pid file"))
    try:
        logfile = state / "txgate.log"
        m = poll(lambda: logfile.exists() and LISTEN_RE.search(logfile.read_text()), 20, what="listener in txgate.log")
        assert not (tmp_path / "twistd.pid").exists() and not (tmp_path / "twistd.log").exists()
        r = curl("--cacert", str(state / "ca.pem"), f"https://localhost:{m.group(4)}/echo/daemon")
        assert r.returncode == 0, r.stderr
        access = state / "access.log"
        poll(lambda: access.exists() and "/echo/daemon" in access.read_text(), what="access log line in state_dir")
    finally:
        os.kill(pid, signal.SIGTERM)
        poll(lambda: not pidfile.exists(), 20, what="daemon gone (pid file removed)")
    assert "txgate stopped" in (state / "txgate.log").read_text()


def test_json_log_format_makes_every_line_json(gateway_factory):
    gw = gateway_factory("[gateway]\nlog_format = json\n" + ECHO.replace("127.0.0.1:0", "127.0.0.1:0"), name="json")
    _get(gw, "/echo/j")
    poll(lambda: "/echo/j" in gw.output(), what="access log line")
    assert gw.stop() == 0
    lines = [line for line in gw.output().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line parses
    service = [d for d in docs if "level" in d]
    assert any(d["text"].startswith("listener main on https://127.0.0.1:") and d["namespace"] == "txgate.service"
               and d["name"] == "main" for d in service)
    assert any(d.get("path") == "/echo/j" and d.get("status") == 200 for d in docs)
    assert not any("Starting factory" in d.get("text", "") for d in service)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_factory_noise_and_one_pin_backend_line(gateway_factory, backend, fmt):
    gw = gateway_factory(f"[gateway]\nlog_format = {fmt}\n[admin]\nbind = 127.0.0.1:0\n[listener:main]\nbind = 127.0.0.1:0\n"
                         f"[api:up]\npath = /\nupstream = {backend.url()}\n"
                         "pinned_public_keys = sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
                         "upstream_verify = off\n", name=fmt)
    for _ in range(3):
        _get(gw, "/x")
    poll(lambda: gw.output().count("/x") >= 3, what="three access log lines")
    out = gw.output()
    assert "Starting factory" not in out and "Stopping factory" not in out
    assert out.count("SPKI pin backend") == 1
