"""The admin API's status page: the pure renderer (escaping, bars, states), then a real gateway whose page is
loaded in headless Chromium (what a person sees: listener names, days left, a failed handshake's row) and over
plain HTTP (auth, headers)."""
from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import poll
from test_metrics_traffic import CTX
from test_metrics_traffic import GW as TRAFFIC_GW
from txgate.admin.facade import HeldCertificate, TargetState, target_state
from txgate.admin.status import days_left, expiry_class, render_status

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
CHROMIUM = shutil.which("chromium")


def held(name: str, days: float, role: str = "listener") -> HeldCertificate:
    return HeldCertificate(name=name, role=role, fingerprint="ab" * 32, not_after=NOW + timedelta(days=days),
                           subject="CN=example")


def test_days_left_and_bar_colours():
    assert days_left(NOW + timedelta(days=40, hours=3), NOW) == 40
    assert days_left(NOW - timedelta(hours=1), NOW) == -1
    assert [expiry_class(d, 30) for d in (-1, 6, 7, 29, 30, 365)] == ["bad", "bad", "warn", "warn", "ok", "ok"]


def test_target_state_is_the_latest_outcome():
    assert target_state(None, None) == ("unused", "")
    assert target_state(10.0, None) == ("up", "")
    assert target_state(10.0, ("upstream_unavailable", 11.0)) == ("failing", "upstream_unavailable")
    assert target_state(12.0, ("upstream_unavailable", 11.0)) == ("up", "")


def test_page_escapes_everything_it_shows():
    page = render_status(
        version="0.1.0", listeners=[("main<script>", "127.0.0.1:8443", True)],
        held=[held("listener:main<script>", 45), held("listener:main<script> sni:a.example", 3, "sni"),
              held("local CA", 3000, "ca")],
        targets=[TargetState("api&", "/x", "https://u<b>:443", 2, "failing", "upstream_timeout")],
        failures=[(NOW.timestamp(), "main", "10.0.0.1\"><img>", "unknown_ca")], now=NOW,
    ).decode()
    assert "<script>" not in page and "<img>" not in page and "<b>" not in page
    assert "main&lt;script&gt;" in page and "api&amp;" in page
    assert "45 days left" in page and "3 days left" in page and "sni:a.example" in page
    assert 'class="bad" style="width:3%"' in page and 'class="ok" style="width:50%"' in page
    assert "failing: upstream_timeout" in page and "unknown_ca" in page and "local CA" in page


# -- a real gateway ----------------------------------------------------------------------------------------

# The traffic test's gateway (echo, a proxied API, loopback admin), plus a plain HTTP listener.
GW = TRAFFIC_GW + "{admin}\n\n[listener:plain]\nbind = 127.0.0.1:0\ntls = off\n"


def fetch(port: int, path: str = "/", headers: dict | None = None) -> tuple[int, dict, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()


def failed_handshake(port: int) -> None:
    """A client that does not trust the gateway's certificate (the local CA): the handshake fails."""
    ctx = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(s, server_hostname="localhost")


def proxied(port: int) -> int:
    c = http.client.HTTPSConnection("localhost", port, context=CTX, timeout=20)
    c.request("GET", "/back/x")
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args],
            capture_output=True, timeout=120, text=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def running(gateway_factory, backend):
    gw = gateway_factory(GW.format(backend=backend.url(), admin=""))
    assert proxied(gw.ports["main"]) == 200
    failed_handshake(gw.ports["main"])
    admin = gw.admin_port
    poll(lambda: 'class="failure"' in fetch(admin)[2], 10, what="a failure row on the status page")
    return gw, admin, backend


def test_status_page_over_http_shows_listeners_targets_and_the_failure(running):
    gw, admin, backend = running
    status, headers, page = fetch(admin)
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["content-security-policy"]
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert headers["x-frame-options"] == "DENY"
    assert f"https://127.0.0.1:{gw.ports['main']}" in page and f"http://127.0.0.1:{gw.ports['plain']}" in page
    assert re.search(r"\d+ days left", page)
    assert re.search(rf"{re.escape(backend.url())}</td><td>\d+</td><td class=\"state-up\">up</td>", page), page
    assert "builtin:echo" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_status_page_in_headless_chromium(running, tmp_path):
    gw, admin, backend = running
    url = f"http://127.0.0.1:{admin}/"
    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # What a person reads: the listener names, the days left, one failure row with the client and the reason.
    cells = re.findall(r'<td class="listener">([^<]*)</td>', html)
    assert cells == ["main", "plain"]
    assert re.search(r"\d+ days left", html)
    rows = re.findall(r'<tr class="failure">(.*?)</tr>', html)
    assert len(rows) == 1 and "<td>main</td>" in rows[0] and "127.0.0.1" in rows[0] and "failed" in rows[0]
    assert "state-up" in html
    shot = tmp_path / "status.png"
    done = chromium("--window-size=1100,760", f"--screenshot={shot}", url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10000
    if os.environ.get("TXGATE_STATUS_SCREENSHOT"):  # regenerating docs/status-page.png
        shutil.copy(shot, os.environ["TXGATE_STATUS_SCREENSHOT"])


def test_status_page_needs_the_token_like_every_endpoint(gateway_factory, backend, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-for-the-status-page\n")
    token.chmod(0o600)
    gw = gateway_factory(GW.format(backend=backend.url(), admin=f"token_file = {token}"))
    admin = gw.admin_port
    status, headers, _ = fetch(admin)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, _, page = fetch(admin, headers={"Authorization": "Bearer s3cret-token-for-the-status-page"})
    assert status == 200 and "txgate status" in page
    # A page of another site cannot read it either (the Origin rule of the whole API).
    status, _, _ = fetch(admin, headers={"Authorization": "Bearer s3cret-token-for-the-status-page",
                                         "Origin": "http://evil.example"})
    assert status == 403


def test_supervisor_merges_the_failures_of_every_worker(tmp_path, monkeypatch):
    from txgate.metrics_multiprocess import SupervisorMetrics, _write_failures

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    _write_failures([(100.0, "main", "10.0.0.1", "unknown_ca")])  # as a worker's flush does
    (tmp_path / "failures_999999.json").write_text('[[300.0, "main", "10.0.0.3", "timeout"]]')
    (tmp_path / "failures_999998.json").write_text("[[")  # a worker replacing its file: skipped
    sup = SupervisorMetrics(str(tmp_path))
    sup.handshake_failure(200.0, "admin", "10.0.0.2", "no_certificate")
    assert [r[2] for r in sup.recent_handshake_failures()] == ["10.0.0.3", "10.0.0.2", "10.0.0.1"]
