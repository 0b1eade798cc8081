"""The README's embedding example runs as shown: examples/embed.py serves the echo API."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

from conftest import ADMIN_EPHEMERAL, LISTEN_RE, STOP_TIMEOUT, REPO, curl, gateway_env, poll


def test_examples_embed_serves_and_stops_cleanly(tmp_path):
    cfg = tmp_path / "gw.ini"
    cfg.write_text(ADMIN_EPHEMERAL + "[gateway]\nstate_dir = ./state\n[listener:main]\nbind = 127.0.0.1:0\n[api:echo]\npath = /echo\nupstream = builtin:echo\n")
    out = tmp_path / "out.log"
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "embed.py"), str(cfg)], cwd=tmp_path,
                            env=gateway_env(), stdout=open(out, "wb"), stderr=subprocess.STDOUT)
    try:
        m = poll(lambda: LISTEN_RE.search(out.read_text()), 20, what="embedded gateway listening")
        r = curl("--cacert", str(tmp_path / "state" / "ca.pem"), f"https://localhost:{m.group(4)}/echo/embedded")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["path"] == "/echo/embedded"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"examples/embed.py did not stop on SIGINT (killed):\n{out.read_text()}") from None
    assert code == 0
    assert "txgate stopped" in out.read_text()
