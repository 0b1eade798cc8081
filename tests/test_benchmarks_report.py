"""The benchmark harness's output: the table fits 100 columns (every column with --verbose), goals in the user's
terms, the --plot chart, and the nginx TLS-terminating proxy peer (a real nginx, one real request through it)."""
from __future__ import annotations

import http.client
import ssl
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import procs, report, runner  # noqa: E402
from benchmarks.backend import nginx_path  # noqa: E402


def row(scenario: str, server: str, rate: float, cpu_us: float, note: str = "") -> dict:
    args = runner.parse_args(["--scenario", "1,2,3", "--tls-client", "python"])
    res = {"lat_us": [1500, 2500, 9000], "succeeded": 1000, "failed": 0, "errored": 0, "timeout": 0,
           "non_2xx": 0, "cmd": "h2load ...", "rps": rate, "elapsed": 10.0}
    return runner._row(scenario, res, cpu_us * 1000 / 1e6, 1.2, args, note=note, server=server)


ROWS = [
    row("1", "txgate", 14339, 69, note="workers=2, profiled"),
    row("2", "txgate", 8928, 112),
    row("3", "txgate", 1006, 700),
    row("1", "nginx proxy", 61234, 16),
    row("2", "nginx proxy", 64321, 15),
    row("3", "nginx proxy", 1900, 480),
    row("baseline", "nginx direct", 102483, 8),
]
META = ("backend nginx; gateway pinned to CPU 0, load and backend on CPU 1; 10s per run after 2s warm-up; "
        "connections: 1 = 20, 2 = 10 x 10 streams, 3 = 8 openssl s_time processes; access_log off")


def test_table_fits_100_columns_and_states_goals_in_the_users_terms():
    text = report.render(ROWS, META, ["(3) with openssl s_time -new: a full handshake per connection " * 3])
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert "issue" not in text.lower()
    words = " ".join(text.split())  # footnotes are wrapped at 100 columns
    assert "12,000 requests/s over keep-alive HTTPS" in words and "one CPU core" in words
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "scenario" and "goal" in lines[0]
    assert any("txgate*" in l and "12,000 pass" in l for l in lines)
    assert any("nginx proxy" in l and "61,234" in l and l.rstrip("| ").endswith("-") for l in lines)
    assert "* (1) HTTPS h1 keep-alive, txgate: workers=2, profiled" in text


def test_verbose_table_has_every_column():
    text = report.render_verbose(ROWS, META)
    head = text.splitlines()[0]
    for col in ("srv CPU s", "core %", "at 100%", "load CPU s", "errors", "result"):
        assert col in head
    assert "issue" not in text.lower()


def test_goals_are_txgates_only():
    assert ROWS[0]["result"] == "pass" and ROWS[2]["result"] == "pass"
    assert ROWS[3]["target"] is None and ROWS[3]["result"] == ""


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench.png"
    report.plot(ROWS, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10000


def test_new_options_parse():
    a = runner.parse_args(["--verbose", "--peers", "none", "--scenario", "1"])
    assert a.verbose and a.peers == "none" and a.plot is None
    with pytest.raises(SystemExit):
        runner.parse_args(["--peers", "haproxy"])


@pytest.mark.skipif(nginx_path() is None, reason="nginx is not installed")
def test_nginx_peer_terminates_tls_and_proxies(tmp_path, backend):
    from benchmarks.peers import start_nginx_proxy

    pm = procs.Procs()
    try:
        peer = start_nginx_proxy(pm, str(tmp_path), backend.port, None)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "nginx-proxy" / "cert.pem"))
        ctx.set_alpn_protocols(["http/1.1"])
        conn = http.client.HTTPSConnection("127.0.0.1", peer.port, context=ctx, timeout=10)
        conn.request("GET", "/through/nginx")
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
        conn.close()
        assert peer.alive() and peer.cpu() >= 0
        assert any("/through/nginx" in str(r) for r in backend.requests)
    finally:
        pm.stop_all()


@pytest.mark.skipif(nginx_path() is None, reason="nginx is not installed")
def test_burst_scenario_opens_n_connections_at_once_and_counts_each_answer_once(tmp_path, backend):
    """Scenario 3b: h2load --h1 -c N -n N through a real TLS proxy; a 5xx is one error, not two."""
    from benchmarks import load
    from benchmarks.peers import start_nginx_proxy

    pm = procs.Procs()
    try:
        peer = start_nginx_proxy(pm, str(tmp_path), backend.port, None)
        before = len(backend.requests)
        res = load.bursts(pm, peer.port, clients=40, duration=0, cpu=None)
        assert (res["bursts"], res["done"], res["succeeded"], res["5xx"]) == (1, 40, 40, 0)
        assert "-c 40" in res["cmd"] and "-n 40" in res["cmd"] and "--h1" in res["cmd"]
        assert len(backend.requests) - before == 40
    finally:
        pm.stop_all()
    args = runner.parse_args(["--scenario", "3b", "--burst", "40"])
    row = runner._row("3b", dict(res, failed=3, **{"5xx": 3, "non_2xx": 4}), 0.1, 0.1, args)
    assert row["errors"] == 4 and row["unit"] == "conn/s" and "bursts of 40" in row["title"]


def test_engine_rows_fit_and_compare_txgate_only():
    def eng(scenario, engine, rate, cpu_us, note=""):
        args = runner.parse_args(["--scenario", "1,2,3", "--tls-client", "python"])
        res = {"lat_us": [1500], "succeeded": 1000, "failed": 0, "errored": 0, "timeout": 0, "non_2xx": 0,
               "cmd": "h2load ...", "rps": rate, "elapsed": 10.0}
        r = runner._row(scenario, res, cpu_us * 1000 / 1e6, 1.2, args, note=note, engine=engine)
        r["workers"] = 1
        return r

    rows = [eng(k, e, 13000, c, note="profiled") for e in ("native", "python") for k, c in (("1", 70), ("2", 80))]
    rows += [dict(r, workers=None) for r in ROWS[3:]]
    assert rows[0]["server"] == "txgate native" and rows[0]["engine"] == "native" and rows[0]["result"] == "pass"
    notes = runner.engine_comparison(rows)
    assert len(notes) == 3 and all("None" not in n for n in notes), notes
    text = report.render(rows, META, notes)
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert any("txgate python*" in l and "13,000" in l for l in text.splitlines())
    assert "native / python: 1.00x" in " ".join(text.split())
    assert runner.engine_comparison(ROWS) == []
