"""`[gateway] state_dir` that cannot be a directory: `txgate check` and startup say so in one line, exit 1.

A regular file in its place used to pass `txgate check` and then stop startup with a bare
`File exists`.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import TWISTD, gateway_env, txgate_cli
from txgate.config import ConfigError, parse_text
from txgate.plan.files import check_state_dir

BASE = """
[gateway]
state_dir = {state_dir}

[listener:main]
bind = 127.0.0.1:0
{certificate}

[api:echo]
path = /echo
upstream = builtin:echo

[admin]
bind = off
"""


def _startup(cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txgate", "--config", "gw.ini"],
                          cwd=cwd, env=gateway_env(), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def _assert_one_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.stderr == f"txgate: configuration error: {expected}\n", proc.stderr


@pytest.mark.parametrize("state_dir, certificate, message", [
    ("./afile", "", "./afile: exists and is not a directory"),
    # A store: reference takes another path through startup (the store is looked up first).
    ("./afile", "certificate = store:web", "./afile: exists and is not a directory"),
    ("./afile/state", "", "./afile/state: ./afile exists and is not a directory"),
])
def test_check_and_startup_refuse_a_state_dir_that_is_a_file(tmp_path, state_dir, certificate, message):
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "gw.ini").write_text(BASE.format(state_dir=state_dir, certificate=certificate))
    expected = f"gw.ini: [gateway] state_dir: {message}"
    check = txgate_cli("check", "--config", "gw.ini", cwd=tmp_path)
    _assert_one_line(check, expected)
    assert check.stdout == ""
    _assert_one_line(_startup(tmp_path), expected)
    assert (tmp_path / "afile").read_text() == "not a directory\n"
    assert sorted(os.listdir(tmp_path)) == ["afile", "gw.ini"]


def test_check_state_dir_accepts_a_directory_a_symlink_to_one_and_one_to_be_created(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for state_dir in (tmp_path / "real", tmp_path / "link", tmp_path / "new" / "deeper", "relative-not-there"):
        check_state_dir(parse_text(BASE.format(state_dir=state_dir, certificate=""), "gw.ini"))
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_check_state_dir_refuses_a_dangling_symlink(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cfg = parse_text(BASE.format(state_dir=tmp_path / "dangling", certificate=""), "gw.ini")
    with pytest.raises(ConfigError) as exc:
        check_state_dir(cfg)
    assert str(exc.value) == f"gw.ini: [gateway] state_dir: {tmp_path / 'dangling'}: exists and is not a directory"
