"""The operator's CLI against a real gateway: check before reload, every mistake at once, txgate reload,
txgate store put (through the admin API, and offline), --version and the help of every command."""
from __future__ import annotations

import re
import subprocess

import pytest

from certs_helpers import make_leaf, pem_chain, pem_key
from conftest import free_port, txgate_cli

TOKEN = "cli-admin-token-0123456789"
SECRET = "cli store secret, long enough for the key box 0123456789"


def _config(tmp_path, listener_port: int, admin_port: int, extra: str = "") -> str:
    secret = tmp_path / "store.secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    token = tmp_path / "admin-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return (f"[gateway]\nstate_dir = ./txgate-state\nstore_secret_file = {secret}\n"
            f"[admin]\nbind = 127.0.0.1:{admin_port}\ntoken_file = {token}\n"
            f"[listener:main]\nbind = 127.0.0.1:{listener_port}\n"
            f"[api:echo]\npath = /echo\nupstream = builtin:echo\n{extra}")


@pytest.fixture
def running(tmp_path, gateway_factory):
    gw = gateway_factory(_config(tmp_path, free_port(), free_port()), name="gw")
    gw.wait_log(r"admin API on http://127\.0\.0\.1:\d+ \(auth: token\)")
    return gw


def test_check_passes_on_the_config_of_the_running_gateway_then_reload(running):
    cfg = str(running.config_path)
    proc = txgate_cli("check", "--config", cfg, cwd=running.workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{cfg}: OK (1 listeners, 1 APIs)\n"
    proc = txgate_cli("reload", "--config", cfg, cwd=running.workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("reloaded: 1 listeners, 1 APIs")
    running.wait_log(r"reloaded \(admin API\)")
    # A broken file: check lists the mistake, reload refuses it and the running config stays.
    running.config_path.write_text(running.config_path.read_text().replace("path = /echo", "path = echo"))
    proc = txgate_cli("check", "--config", cfg, cwd=running.workdir)
    assert proc.returncode == 1
    assert proc.stderr == f"txgate: configuration error: {cfg}: [api:echo] path: must start with '/', got 'echo'\n"
    proc = txgate_cli("reload", "--config", cfg, cwd=running.workdir)
    assert proc.returncode == 1
    assert proc.stderr == f"txgate reload: configuration error: {cfg}: [api:echo] path: must start with '/', got 'echo'\n"
    assert running.proc.poll() is None


def test_check_passes_on_the_config_of_a_running_gateway_with_two_workers(tmp_path, gateway_factory):
    from txgate.plan.running import read_running

    gw = gateway_factory(_config(tmp_path, free_port(), free_port()), name="workers", workers="2")
    gw.wait_log(r"2 workers serving")
    cfg = str(gw.config_path)
    state = str(gw.workdir / "txgate-state")
    # The supervisor holds the sockets and records them; the workers leave running.json to it.
    assert read_running(state)[0] == gw.proc.pid
    proc = txgate_cli("check", "--config", cfg, cwd=gw.workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{cfg}: OK (1 listeners, 1 APIs)\n"
    proc = txgate_cli("reload", "--config", cfg, cwd=gw.workdir)
    assert proc.returncode == 0, proc.stderr
    proc = txgate_cli("check", "--config", cfg, cwd=gw.workdir)
    assert proc.returncode == 0, proc.stderr
    assert gw.stop() == 0
    assert read_running(state, alive=lambda pid: True) == (None, set())


def test_check_still_finds_a_port_held_by_another_process(tmp_path):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        cfg = tmp_path / "gw.ini"
        cfg.write_text(f"[listener:main]\nbind = 127.0.0.1:{port}\n[api:e]\nupstream = builtin:echo\n")
        proc = txgate_cli("check", "--config", str(cfg), cwd=tmp_path)
        assert proc.returncode == 1 and f"127.0.0.1:{port}: address already in use" in proc.stderr
        proc = txgate_cli("check", "--no-probe-ports", "--config", str(cfg), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    finally:
        busy.close()


def test_reload_without_a_running_gateway_exits_3(tmp_path):
    cfg = tmp_path / "gw.ini"
    cfg.write_text(_config(tmp_path, free_port(), free_port()))
    proc = txgate_cli("reload", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 3
    assert "no admin API on 127.0.0.1:" in proc.stderr and "is the gateway running?" in proc.stderr


def test_check_reports_every_mistake_one_line_each(tmp_path, certs):
    cert, key = certs.leaf("check-many", ["localhost"])
    cfg = tmp_path / "gw.ini"
    cfg.write_text(
        "[gateway]\nlog_format = yaml\nshutdown_timeout = soon\n"
        "[listener:main]\nbind = 127.0.0.1:0\nmin_tls = 1.5\nidle_timeout = -1\n"
        f"[listener:other]\nbind = 127.0.0.1:0\ncertificate = {tmp_path}/nope.pem {key}\n"
        "[api:a]\npath = a\nupstream = ftp://x\ntimeuot = 3\n"
    )
    proc = txgate_cli("check", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    prefix = f"txgate: configuration error: {cfg}: "
    assert all(line.startswith(prefix) for line in lines), lines
    where = [re.match(r"(\[[^]]+\] \S+):", line[len(prefix):]).group(1) for line in lines]
    assert where == ["[gateway] log_format", "[gateway] shutdown_timeout", "[listener:main] min_tls",
                     "[listener:main] idle_timeout", "[api:a] timeuot", "[api:a] upstream"], lines
    # The syntax is right: now the files are checked, every one.
    cfg.write_text(f"[listener:main]\nbind = 127.0.0.1:0\ncertificate = {tmp_path}/nope.pem {tmp_path}/nokey.pem\n"
                   f"client_ca = {tmp_path}/noca.pem\n")
    proc = txgate_cli("check", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"{prefix}[listener:main] certificate: {tmp_path}/nope.pem: file not found",
        f"{prefix}[listener:main] certificate: {tmp_path}/nokey.pem: file not found",
        f"{prefix}[listener:main] client_ca: {tmp_path}/noca.pem: file not found",
    ]


def test_check_warns_about_a_world_readable_private_key(tmp_path, certs):
    cert, key = certs.leaf("check-open-key", ["localhost"])
    open_key = tmp_path / "open-key.pem"
    open_key.write_bytes(open(key, "rb").read())
    open_key.chmod(0o644)
    cfg = tmp_path / "gw.ini"
    cfg.write_text(f"[listener:main]\nbind = 127.0.0.1:0\ncertificate = {cert} {open_key}\n")
    proc = txgate_cli("check", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (f"txgate: warning: {cfg}: [listener:main] certificate: private key {open_key} is readable "
                           "by others (mode 0644); chmod 600 it (or 640 with a group the gateway runs in)\n")
    open_key.chmod(0o600)
    assert txgate_cli("check", "--config", str(cfg), cwd=tmp_path).stderr == ""


def test_store_put_through_the_admin_api_and_offline(tmp_path, gateway_factory, certs):
    web = make_leaf(certs.intermediate, ["localhost"])
    (tmp_path / "web.pem").write_bytes(pem_chain(web))
    (tmp_path / "web-key.pem").write_bytes(pem_key(web))
    (tmp_path / "web-key.pem").chmod(0o600)
    port, admin = free_port(), free_port()
    workdir = tmp_path / "gw"
    workdir.mkdir()
    cfg = workdir / "gw.ini"
    cfg.write_text(_config(tmp_path, port, admin))
    put = ("store", "put", "--config", str(cfg), "web", str(tmp_path / "web.pem"), str(tmp_path / "web-key.pem"))
    # Offline first: no gateway runs; the store is created.
    proc = txgate_cli(*put, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("web: version 1 is current (id ")
    assert "reload the running gateway" in proc.stdout
    gw = gateway_factory(cfg.read_text(), name="gw")
    gw.wait_log(r"admin API on http://127\.0\.0\.1:\d+")
    web2 = make_leaf(certs.intermediate, ["localhost"])
    (tmp_path / "web.pem").write_bytes(pem_chain(web2))
    (tmp_path / "web-key.pem").write_bytes(pem_key(web2))
    proc = txgate_cli(*put, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"web: version 2 is current \(id [0-9a-f]{64}\), stored through the running gateway's admin API\n",
                    proc.stdout), proc.stdout
    gw.wait_log(r"admin API: stored web \(id [0-9a-f]+, version 2, key yes\)")
    proc = txgate_cli("store", "list", "--config", str(cfg), cwd=workdir)
    assert proc.returncode == 0 and "web@2" in proc.stdout and "versions=1,2" in proc.stdout
    # A refusal through the API is one line and exit 1: the key of another certificate.
    (tmp_path / "other-key.pem").write_bytes(pem_key(web))
    proc = txgate_cli("store", "put", "--config", str(cfg), "web", str(tmp_path / "web.pem"),
                      str(tmp_path / "other-key.pem"), cwd=workdir)
    assert proc.returncode == 1 and proc.stderr.startswith("txgate store put: key_mismatch: "), proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag(flag):
    proc = txgate_cli(flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == txgate_cli("version").stdout and proc.stdout.startswith("txgate ")


def _commands():
    import argparse

    from txgate.cli import build_parser

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, prefix + (name,))
                return
        yield prefix

    return list(walk(build_parser(), ()))


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_a_description_exit_statuses_and_an_example(command):
    proc = subprocess.run(["python3", "-m", "txgate.cli", *command, "--help"], capture_output=True, text=True,
                          env=__import__("conftest").gateway_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    head, _, rest = proc.stdout.partition("\n\n")
    assert rest.split("\n\n")[0].strip(), "no description"
    assert "exit status:\n  0  " in proc.stdout and "\n  2  usage error" in proc.stdout
    assert re.search(r"\nexamples?:\n  txgate ", proc.stdout)


def test_twistd_help_mentions_foreground_pidfile_and_signals():
    proc = subprocess.run(["python3", "-c", __import__("conftest").TWISTD, "txgate", "--help"], capture_output=True,
                          text=True, env=__import__("conftest").gateway_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    for words in ("-n", "--pidfile", "SIGHUP", "SIGUSR1", "SIGTERM", "txgate reload"):
        assert words in proc.stdout, words
