"""The README quick start, for real: examples/quickstart.ini (only its port changed) and the README's
own curl commands over h1 and h2, `txgate check` on the example, and the same over a minimal config."""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path


from conftest import ADMIN_EPHEMERAL, curl, txgate_cli

QUICKSTART = ADMIN_EPHEMERAL + """
[gateway]
state_dir = ./txgate-state

[listener:main]
bind = 127.0.0.1:0

[api:echo]
path = /echo
upstream = builtin:echo
"""


def test_local_ca_echo_over_http1_and_http2(h2_engine, gateway_factory):
    gw = gateway_factory(QUICKSTART)
    for flag, version in (("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2")):
        r = curl(flag, "--cacert", gw.ca, gw.url("/echo/hello?x=1"), "-w", "\n%{http_version}")
        assert r.returncode == 0, r.stderr
        body, _, got_version = r.stdout.decode().rpartition("\n")
        assert got_version == {"HTTP/1.1": "1.1", "HTTP/2": "2"}[version]
        echo = json.loads(body)
        assert echo["method"] == "GET"
        assert echo["path"] == "/echo/hello"
        assert echo["query"] == "x=1"
        assert echo["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert echo["body_bytes"] == 0
    key = os.stat(os.path.join(gw.workdir, "txgate-state", "ca-key.pem"))
    assert stat.S_IMODE(key.st_mode) == 0o600
    gw.wait_log(r"local CA certificate: \S*ca\.pem")
    gw.wait_log(r'"GET localhost:\d+ /echo/hello\?x=1 HTTP/2" 200')
    assert gw.stop() == 0


# -- the shipped example and the README's own commands ------------------------------------------

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "quickstart.ini"


def _readme_curls() -> list[str]:
    """The curl commands of the README's quick start (comments stripped)."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Quick start")
    section = text[start:text.index("\n## ", start + 1)]
    return [line.split("#", 1)[0].strip() for line in section.splitlines() if line.startswith("curl ")]


def test_examples_quickstart_ini_serves_the_readme_curls(gateway_factory):
    text = EXAMPLE.read_text()
    assert text.count("127.0.0.1:8443") == 1, "the quick start binds 127.0.0.1:8443 exactly once"
    # Only the ports change: the listener's and the admin API's (default 127.0.0.1:9901) become port 0.
    gw = gateway_factory(ADMIN_EPHEMERAL + text.replace("127.0.0.1:8443", "127.0.0.1:0"))
    commands = _readme_curls()
    assert len(commands) == 2 and all("https://localhost:8443/echo/hello" in c for c in commands), commands
    assert "--http2" in commands[1]
    versions = []
    for command in commands:
        argv = shlex.split(command.replace("localhost:8443", f"localhost:{gw.port}"))
        # Run as written, from the gateway's directory (the README's relative txgate-state/ca.pem).
        r = subprocess.run(argv + ["-sS", "-w", "\n%{http_version}"], cwd=gw.workdir, capture_output=True,
                           timeout=30)
        assert r.returncode == 0, (command, r.stderr)
        body, _, version = r.stdout.decode().rpartition("\n")
        echo = json.loads(body)
        assert (echo["method"], echo["path"]) == ("GET", "/echo/hello")
        versions.append(version)
    assert versions[0] in ("1.1", "2") and versions[1] == "2"
    # The first command's "HTTP/1.1" for real, whatever curl's default.
    argv = shlex.split(commands[0].replace("localhost:8443", f"localhost:{gw.port}"))
    r = subprocess.run(argv + ["--http1.1", "-sS", "-w", "\n%{http_version}"], cwd=gw.workdir, capture_output=True,
                       timeout=30)
    assert r.returncode == 0 and r.stdout.decode().rpartition("\n")[2] == "1.1", r.stderr
    gw.wait_log(r'"GET localhost:\d+ /echo/hello HTTP/2" 200')  # quickstart.ini: access_log = -
    gw.wait_log(r'"GET localhost:\d+ /echo/hello HTTP/1.1" 200')
    assert gw.stop() == 0


def test_txgate_check_accepts_examples_quickstart_ini(tmp_path):
    # txgate check probes the listener's port: the example with only its port changed to 0, so the
    # outcome does not depend on whether something else on the host holds 8443.
    text = EXAMPLE.read_text()
    assert text.count("127.0.0.1:8443") == 1, "the quick start binds 127.0.0.1:8443 exactly once"
    config = tmp_path / "quickstart.ini"
    config.write_text(text.replace("127.0.0.1:8443", "127.0.0.1:0"))
    proc = txgate_cli("check", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{config}: OK (1 listeners, 1 APIs)\n"
    assert list(tmp_path.iterdir()) == [config]  # check writes nothing (no txgate-state)
