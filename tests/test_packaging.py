"""The wheel `pip install .` installs: the twistd plugin (without shadowing Twisted's own `twisted` and
`twisted.plugins` packages), the native SPKI module, the CLI and its console script.

Built offline (`pip wheel --no-deps --no-build-isolation --no-index`) from a copy of the tracked files, so
the build neither needs the network nor leaves build/ or *.egg-info in the working tree; the build tools
come from the environment (tests/build-requirements.txt, installed by tests/run.sh).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout (the wheel is built from the tracked files)")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _build_wheel(tmp_path_factory, env=None) -> Path:
    import os

    base = tmp_path_factory.mktemp("wheel")
    src, out = base / "src", base / "out"
    for rel in _tracked_files():
        if (REPO / rel).is_file():  # tracked but deleted in the working tree: not shipped
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), "."],
        cwd=src, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr + "\n(built without isolation: this environment "
                                  "needs tests/build-requirements.txt, which tests/run.sh installs)")
    [whl] = out.glob("txgate-*.whl")
    return whl


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    with zipfile.ZipFile(_build_wheel(tmp_path_factory)) as zf:
        yield zf


def test_without_a_c_compiler_the_wheel_still_builds_without_the_native_module(tmp_path_factory):
    """A machine without a compiler or OpenSSL headers still installs txgate (pure-Python pins)."""
    whl = _build_wheel(tmp_path_factory, env={"CC": "false", "LDSHARED": "false"})
    with zipfile.ZipFile(whl) as zf:
        names = set(zf.namelist())
    assert not [n for n in names if n.startswith("txgate/_spki")]
    assert "txgate/pins.py" in names and "twisted/plugins/txgate_plugin.py" in names


def test_wheel_ships_the_plugin_without_shadowing_twisted(wheel):
    names = set(wheel.namelist())
    assert "twisted/plugins/txgate_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.startswith("twisted/") and n != "twisted/plugins/txgate_plugin.py"]


def test_wheel_ships_the_native_module_and_the_cli(wheel):
    names = set(wheel.namelist())
    assert [n for n in names if n.startswith("txgate/_spki") and n.endswith(".so")], sorted(names)
    assert "txgate/cli.py" in names
    assert "txgate/__init__.py" in names


def test_wheel_declares_the_txgate_console_script(wheel):
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    section = text.split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    scripts = {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in section.splitlines()) if _}
    assert scripts.get("txgate") == "txgate.cli:main", text
