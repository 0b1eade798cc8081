"""``txgate acme status`` and ``GET /acme`` against a real pebble: while the gateway runs, after pebble stops
(the current certificate keeps serving, the retry backs off and shows), and after the gateway stops."""
# -*- test-case-name: tests.test_acme_status_e2e -*-
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from acme_pebble import pebble_available
from conftest import free_port, poll, txgate_cli
from test_acme_e2e import NAME, _config, _served_by_pebble, acme_env  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(not pebble_available(), reason="pebble is not installed (apt-get install pebble)")

TOKEN = "acme-status-token-0123456789"


def _get_acme(port: int, token: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/acme",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _status(gw) -> str:
    r = txgate_cli("acme", "status", "--config", str(gw.config_path), cwd=gw.workdir)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith(NAME))
    return line


def _field(line: str, name: str) -> str:
    return re.search(rf"{name}=(\S+)", line).group(1)


@pytest.mark.timeout(180)
def test_status_while_running_when_pebble_stops_and_after_the_gateway_stops(acme_env, tmp_path):
    start_pebble, start_gateway = acme_env
    http_port, tls_port = free_port(), free_port()
    pebble = start_pebble(http_port, tls_port, validity=90)
    token = tmp_path / "admin-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    text = _config(pebble, http_port, tls_port, "tls-alpn-01", "renew_ratio = 0.75").replace(
        "[admin]\nbind = off", f"[admin]\nbind = 127.0.0.1:0\ntoken_file = {token}")
    gw = start_gateway(text)
    gw.wait_log(r"acme: certificate for www.acme-test.example issued", timeout=60)
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())

    # Running: the CLI (status file) and the admin API say the same.
    line = _status(gw)
    assert "Pebble" in line and "(ratio)" in line and "failures=0  last_error=-" in line, line
    port = gw.admin_port
    assert _get_acme(port, None)[0] == 401
    status, doc = _get_acme(port, TOKEN)
    assert status == 200
    [entry] = doc["certificates"]
    assert entry["names"] == [NAME] and entry["renewal_reason"] == "ratio" and entry["orders"] == 1
    assert entry["not_after"] == _field(line, "expires") and entry["next_renewal"] in line

    # pebble stops before the renewal time (75% of the lifetime left: ~22 s in): the renewal fails,
    # the retry backs off (60 s base), the current certificate keeps serving.
    pebble.stop()
    gw.wait_log(r"acme: order for www.acme-test.example failed .*retrying in \d+s; the current certificate "
                r"keeps serving", timeout=60)
    failed_at = datetime.now(timezone.utc)
    line = poll(lambda: (x := _status(gw)) and "failures=1" in x and x, 10, 0.2, "the failure in acme status")
    assert _field(line, "last_error") != "-", line
    next_attempt = datetime.strptime(_field(line, "next_attempt"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert next_attempt >= failed_at + timedelta(seconds=40), line  # backoff, not the 1 s re-look of a due renewal
    status, doc = _get_acme(port, TOKEN)
    assert doc["certificates"][0]["failures"] == 1 and doc["certificates"][0]["last_error"]
    assert _served_by_pebble(gw, tls_port, str(root))
    assert gw.output().count("acme: ordering") == 2  # the first order and the failed renewal: no retry storm

    # Gateway stopped: the CLI still reads the last state.
    gw.stop()
    line = _status(gw)
    assert "failures=1" in line and _field(line, "last_error") != "-", line
