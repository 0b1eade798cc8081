"""Scenarios, the results table and the command line of ``python -m benchmarks``."""
from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import shutil
import signal
import ssl
import sys
import tempfile
import time
import urllib.request

from . import backend as _backend
from . import gateway as _gateway
from . import handshake as _handshake
from . import idle as _idle
from . import load as _load
from . import peers as _peers
from . import procs as _procs
from . import report as _report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TARGETS = _report.GOALS  # one txgate process on one core
UNITS = {"1": "req/s", "2": "req/s", "3": "conn/s", "3r": "conn/s", "3m": "conn/s", "3b": "conn/s", "baseline": "req/s"}
TITLES = {
    "1": "(1) HTTP/1.1 keep-alive over TLS",
    "2": "(2) HTTP/2 over TLS, {streams} streams/conn",
    "3": "(3) new TLS connection per request",
    "3r": "(3r) resumed TLS connection per request",
    "3m": "(3m) new mTLS connection per request",
    "3b": "(3b) bursts of {burst} new TLS connections, one request each",
    "baseline": "nginx direct (no gateway, no TLS), h1 plain",
}


def log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="txgate speed harness: backend (nginx or built-in) + gateway (twistd, pinned to one "
                    "core) + h2load on another core; the same load through an nginx TLS-terminating proxy as "
                    "a peer. Prints req/s, p50/p99 latency and CPU per request beside txgate's goals on one "
                    "core. A harness, not a test: it never fails on a miss.")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of warm-up load before each scenario, 0 to skip (default 2)")
    p.add_argument("--scenario", default="1,2,3",
                   help="comma-separated scenarios: 1 = HTTP/1.1 keep-alive over TLS, 2 = HTTP/2 over "
                        "TLS with --streams streams per connection, 3 = a new TLS connection per "
                        "request; 3r = the same with each openssl s_time process resuming its session "
                        "(-reuse), 3m = new connections presenting a client certificate to a listener "
                        "that requires one (3r and 3m need openssl); 3b = bursts of --burst new TLS "
                        "connections opened at once, one HTTP/1.1 request each (h2load --h1 -c N -n N), "
                        "back to back for the duration (default 1,2,3)")
    p.add_argument("--burst", type=int, default=1500,
                   help="new connections per burst in scenario 3b (default 1500, as issue 16's table)")
    p.add_argument("--connections", type=int, default=None,
                   help="concurrent connections for scenarios 1 and 2 and the baseline "
                        "(default 20 for 1 and the baseline, 10 for 2)")
    p.add_argument("--streams", type=int, default=10, help="concurrent streams per h2 connection in 2 (default 10)")
    p.add_argument("--tls-client", choices=("auto", "openssl", "python"), default="auto",
                   help="scenario 3's client: openssl = parallel 'openssl s_time -new' processes (C, cheaper "
                        "per connection, no latency percentiles), python = Python ssl client processes "
                        "(p50/p99, but ~1.2x the client CPU per connection); auto = openssl when on PATH (default auto)")
    p.add_argument("--tls-clients", type=int, default=None,
                   help="client processes for scenario 3, each doing connect + handshake + request + close "
                        "in a loop (default 8 with openssl s_time, 32 with python)")
    p.add_argument("--baseline", dest="baseline", action="store_true", default=True,
                   help="also measure the backend directly: scenario 1's load over plain HTTP, with "
                        "the backend moved to the gateway's core for that run (default on)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the baseline row")
    p.add_argument("--peers", default="auto",
                   help="peers measured with the same scenarios, on the gateway's CPU: nginx (a TLS-terminating "
                        "reverse proxy to the same backend), none, or auto = nginx when installed (default auto)")
    p.add_argument("--verbose", action="store_true",
                   help="print every column (server CPU seconds, core %%, load CPU, errors...; wider than 100 "
                        "columns)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw rates and CPU per request per scenario, peers side by side, into FILE.png "
                        "(needs matplotlib: pip install 'txgate[benchmarks]')")
    p.add_argument("--backend", choices=("auto", "nginx", "builtin"), default="auto",
                   help="auto = nginx when installed, else the built-in asyncio server (default auto)")
    p.add_argument("--access-log", action="store_true",
                   help="keep the gateway's access log on (a file in the temp dir); default access_log = off")
    p.add_argument("--profile", action="store_true",
                   help="run the gateway under cProfile (switched on only during each measured run) and "
                        "print its top functions by tottime per scenario; numbers are then slower")
    p.add_argument("--profile-top", type=int, default=25, help="functions to list per profile (default 25)")
    p.add_argument("--gateway-cpu", type=int, default=0, help="CPU the gateway is pinned to (default 0)")
    p.add_argument("--load-cpu", type=int, default=1,
                   help="CPU for h2load, the scenario-3 clients and the backend (default 1)")
    p.add_argument("--h2-engine", default="auto",
                   help="comma-separated [gateway] h2_engine values (auto, native, python): one gateway per "
                        "engine (and per --workers value), each measured on every scenario in turn, its rows' server "
                        "'txgate ENGINE'; the peers once; with two or more, notes compare scenario 2's CPU per "
                        "request and requests per CPU-second (default auto)")
    p.add_argument("--idle", type=int, default=0, metavar="N",
                   help="instead of the scenarios: open N idle TLS connections (h1: half used for one request; "
                        "h2: one finished stream each) to a fresh gateway per mode and report its RSS per "
                        "connection and the latency of requests made meanwhile (see docs/benchmarks.md)")
    p.add_argument("--idle-modes", default="h1,h2", help="with --idle: h1, h2 or both (default h1,h2)")
    p.add_argument("--repo", default=REPO,
                   help="the checkout whose txgate the gateway runs (PYTHONPATH), or a comma-separated list of "
                        "checkouts measured one after the other with one harness in one run, their rows' server "
                        "'txgate [DIR]' (the directory's name), with notes comparing each tree's CPU per request "
                        "to the first's (default: this one)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure the trees (and engines, worker counts) this many times in turn, A B A B ... "
                        "(default 1); the comparison notes sum CPU and requests over the rounds")
    p.add_argument("--handshake-samples", type=int, default=400,
                   help="in-process OpenSSL handshakes measured beside scenario 3 (0 to skip; default 400)")
    p.add_argument("--workers", default="1",
                   help="gateway worker processes, or a comma-separated list measured one after the other in one "
                        "run (e.g. 1,2); with more than one worker the gateway, the load and the backend are not "
                        "pinned, and the gateway uses worker_affinity = none (the load comes from one address) "
                        "(default 1)")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON on stdout (the table then goes to stderr)")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp dir (configs, logs, profiles)")
    a = p.parse_args(argv)
    a.scenarios = [s.strip() for s in a.scenario.split(",") if s.strip()]
    try:
        a.workers = [int(w) for w in a.workers.split(",") if w.strip()]
    except ValueError:
        p.error("--workers: expected integers, e.g. 1 or 1,2")
    if not a.workers or min(a.workers) < 1:
        p.error("--workers: expected integers >= 1")
    if a.profile and max(a.workers) > 1:
        p.error("--profile: with --workers 1 only (it profiles the process twistd started)")
    bad = [s for s in a.scenarios if s not in TITLES or s == "baseline"]
    if bad:
        p.error(f"--scenario: unknown {','.join(bad)} (choose from 1,2,3,3r,3m,3b)")
    a.h2_engines = [s.strip() for s in a.h2_engine.split(",") if s.strip()]
    bad = [s for s in a.h2_engines if s not in ("auto", "native", "python")]
    if bad or not a.h2_engines:
        p.error(f"--h2-engine: unknown {','.join(bad) or '(none)'} (choose from auto, native, python)")
    a.idle_modes = [m.strip() for m in a.idle_modes.split(",") if m.strip()]
    if any(m not in ("h1", "h2") for m in a.idle_modes) or not a.idle_modes:
        p.error("--idle-modes: h1, h2 or h1,h2")
    if a.idle < 0:
        p.error("--idle must be >= 0")
    a.repos = [os.path.abspath(r.strip()) for r in a.repo.split(",") if r.strip()]
    if not a.repos:
        p.error("--repo: expected one or more directories")
    a.repo = a.repos[0]
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    if a.duration <= 0:
        p.error("--duration must be > 0")
    if a.peers not in ("auto", "nginx", "none"):
        p.error("--peers: expected nginx, none or auto")
    if a.peers == "auto":
        from .backend import nginx_path

        a.peers = "nginx" if nginx_path() else "none"
    if a.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib: pip install 'txgate[benchmarks]'")
    if a.tls_client == "auto":
        a.tls_client = "openssl" if _load.openssl_path() else "python"
    elif a.tls_client == "openssl" and not _load.openssl_path():
        p.error("--tls-client openssl: openssl is not on PATH")
    if {"3r", "3m"} & set(a.scenarios) and not _load.openssl_path():
        p.error("--scenario 3r, 3m: openssl s_time is needed (openssl is not on PATH)")
    if a.tls_clients is None:
        a.tls_clients = 8 if a.tls_client == "openssl" else 32
    if a.tls_clients < 1:
        p.error("--tls-clients must be >= 1")
    return a


def engine_comparison(rows) -> list[str]:
    """Notes comparing the engines' rows of scenario 2 (and each against scenario 1 on the same gateway)."""
    rows = [r for r in rows if r.get("engine")]  # txgate's rows when engines are compared, not the peers'
    by = {(r.get("engine"), r.get("workers"), r["scenario"]): r for r in rows}
    gws = [g for g in dict.fromkeys((r.get("engine"), r.get("workers")) for r in rows) if g + ("2",) in by]
    if len({e for e, _ in gws}) < 2:
        return []
    notes = []
    per = {g: by[g + ("2",)]["server_cpu_us_per_req"] for g in gws}
    for g in gws:
        r2, r1 = by[g + ("2",)], by.get(g + ("1",))
        label = f"h2 engine {g[0]}" + (f", {g[1]} worker(s)" if g[1] not in (None, 1) else "")
        text = (f"{label}: scenario 2 {r2['rate']:,.0f} req/s, {per[g]:.0f} gateway CPU us/req "
                f"({1e6 / per[g]:,.0f} req per CPU-second)" if per[g] else f"{label}: no requests")
        if r1 and r1["server_cpu_us_per_req"] and per[g]:
            text += (f"; scenario 1 on the same gateway {r1['server_cpu_us_per_req']:.0f} us/req: h2/h1 per "
                     f"CPU-second {r1['server_cpu_us_per_req'] / per[g]:.2f}x")
        notes.append(text)
    for w in dict.fromkeys(g[1] for g in gws):
        same = [g for g in gws if g[1] == w]
        base = same[-1]
        for g in same[:-1]:
            if per[g] and per[base]:
                notes.append(f"scenario 2 requests per gateway CPU-second, {g[0]} / {base[0]}: {per[base] / per[g]:.2f}x")
    return notes


def tree_labels(repos) -> dict:
    """Row labels per tree: "txgate" alone, else "txgate [DIR]" (the directory's name, numbered if repeated)."""
    if len(repos) == 1:
        return {repos[0]: "txgate"}
    out = {}
    for i, r in enumerate(repos):
        name = os.path.basename(r.rstrip("/")) or r
        out[r] = f"txgate [{name}]" if name not in {v[8:-1] for v in out.values()} else f"txgate [{name}#{i + 1}]"
    return out


def _per_cpu_second(rows, server: str, key: str):
    """Requests per CPU-second of ``server`` in scenario ``key``, summed over its rows (rounds); None if none."""
    sel = [r for r in rows if r["server"] == server and r["scenario"] == key and r["requests"]]
    cpu = sum(r["server_cpu_s"] for r in sel)
    return sum(r["requests"] for r in sel) / cpu if sel and cpu else None


def tree_comparison(rows) -> list[str]:
    """With several trees (--repo A,B): each one's requests per CPU-second against the first's, per scenario."""
    trees = list(dict.fromkeys(r["server"] for r in rows if r["server"].startswith("txgate [")))
    if len(trees) < 2:
        return []
    notes = []
    for key in dict.fromkeys(r["scenario"] for r in rows):
        base = _per_cpu_second(rows, trees[0], key)
        parts = []
        for t in trees[1:]:
            v = _per_cpu_second(rows, t, key)
            if base and v:
                parts.append(f"{t} / {trees[0]} = {v / base:.2f}x ({1e6 / v:.0f} vs {1e6 / base:.0f} CPU us)")
        if parts:
            notes.append(f"({key}) requests per gateway CPU-second, summed over the rounds: " + "; ".join(parts))
    return notes


def cpu_split(rows) -> list[str]:
    """Per new-connection scenario: each server's CPU per connection split into user space and kernel."""
    out = []
    for key in ("3", "3r", "3m", "3b"):
        parts = [f"{r['server']} {r['server_user_us_per_req']:.0f} + {r['server_sys_us_per_req']:.0f}"
                 for r in rows if r["scenario"] == key and r.get("server_user_us_per_req") is not None]
        if parts:
            out.append(f"({key}) CPU us per connection, user + system: " + ", ".join(parts) + ".")
    return out


def peer_comparison(rows) -> list[str]:
    """Each txgate row set's requests per CPU-second against the nginx proxy's, per scenario."""
    mine = list(dict.fromkeys(r["server"] for r in rows if r["server"].startswith("txgate")))
    notes = []
    for key in dict.fromkeys(r["scenario"] for r in rows):
        peer = _per_cpu_second(rows, "nginx proxy", key)
        if not peer:
            continue
        parts = [f"{t} {v / peer:.2f}x" for t in mine if (v := _per_cpu_second(rows, t, key))]
        if parts:
            notes.append(f"({key}) requests per CPU-second against the nginx proxy ({1e6 / peer:.0f} CPU us): "
                         + ", ".join(parts))
    return notes


def _row(key, res, gw_cpu, load_cpu, args, note="", server="txgate", engine=None):
    lat = res["lat_us"]
    n = res["succeeded"]
    # (h2load's "failed" already holds the 5xx answers: counted once)
    errors = res["failed"] + res["errored"] + res["timeout"] + res["non_2xx"] - res.get("5xx", 0)
    row = {
        "scenario": key,
        "server": server + (f" {engine}" if engine else ""),  # e.g. "txgate native"
        "engine": engine,
        "title": TITLES[key].format(streams=args.streams, burst=args.burst),
        "command": res["cmd"],
        "alpn": res.get("alpn"),
        "rate": round(res["rps"], 1),
        "unit": UNITS[key],
        "requests": n,
        "errors": errors,
        "elapsed_s": round(res["elapsed"], 3),
        "p50_ms": None if not lat else round(_load.percentile(lat, 50) / 1000, 3),
        "p99_ms": None if not lat else round(_load.percentile(lat, 99) / 1000, 3),
        "server_cpu_s": round(gw_cpu, 2),
        "server_cpu_us_per_req": round(gw_cpu / n * 1e6, 1) if n else None,
        "server_core_pct": round(gw_cpu / res["elapsed"] * 100, 1) if res["elapsed"] else None,
        "load_cpu_s": round(load_cpu, 2),
        "target": TARGETS.get(key),
        "note": note,
    }
    if not server.startswith("txgate"):
        row["target"] = None  # the goals are txgate's
    if row["target"] is not None:
        row["result"] = "pass" if row["rate"] >= row["target"] else "MISS"
    else:
        row["result"] = ""
    return row


def _profile_text(path, top):
    s = io.StringIO()
    st = pstats.Stats(path, stream=s)
    st.strip_dirs().sort_stats("tottime").print_stats(top)
    text = s.getvalue()
    # Drop pstats' preamble up to the totals line.
    i = text.find("function calls")
    return text[text.rfind("\n", 0, i) + 1:] if i >= 0 else text


def _sanity(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=ctx, timeout=10) as r:
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"sanity request through the gateway: status {r.status}")
    return body


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Also when started with SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cpus = sorted(os.sched_getaffinity(0))
    gw_cpu, load_cpu = args.gateway_cpu, args.load_cpu
    if gw_cpu not in cpus or load_cpu not in cpus or gw_cpu == load_cpu:
        log(f"CPUs available {cpus}: cannot pin the gateway to {gw_cpu} and the load to {load_cpu}; "
            "running unpinned (numbers are not comparable)")
        gw_cpu = load_cpu = None
    if args.idle:
        return _idle.main(args, gw_cpu, load_cpu, log)
    _load.h2load_path()
    if "3b" in args.scenarios:  # the gateway, the peer and h2load inherit it: a burst holds 2 descriptors a client
        _procs.raise_nofile(2 * args.burst + 1024)
    tmp = tempfile.mkdtemp(prefix="txgate-bench-")
    pm = _procs.Procs()
    rows, profiles = [], []
    interrupted = failed = False
    be = None
    try:
        pinned = max(args.workers) == 1
        if not pinned:
            gw_cpu = load_cpu = None
        be = _backend.start(pm, tmp, args.backend, load_cpu)
        log(f"backend: {be.kind} on 127.0.0.1:{be.port} (pid {be.worker_pid})")
        gw = None
        handshake = None
        # Scenario 3m: a client CA and a certificate it issued (ca.pem, client.pem, client-key.pem).
        client_pki = _peers.write_client_pki(tmp) if "3m" in args.scenarios else None

        def measure(key, workers=1, server=None, engine=None, label="txgate"):
            server = server or gw
            peer = getattr(server, "name", None)  # None: txgate
            h1 = key in ("1", "baseline")
            conns = args.connections or (10 if key == "2" else 20)
            streams = args.streams if key == "2" else 1
            target_url = (f"http://127.0.0.1:{be.port}/" if key == "baseline"
                          else f"https://127.0.0.1:{server.port}/")
            engine = None if key == "baseline" or peer or args.h2_engines == ["auto"] else engine
            name = (TITLES[key].format(streams=args.streams, burst=args.burst) + (f" ({peer or label})" if peer or label != "txgate" else "")
                    + (f" [h2 {engine}]" if engine else ""))

            def run(duration, log_file=None):
                if key in ("3r", "3m") or (key == "3" and args.tls_client == "openssl"):
                    return _load.s_time_connections(
                        pm, server.mtls_port if key == "3m" else server.port, clients=args.tls_clients,
                        duration=duration, cpu=load_cpu, tmp=tmp, reuse=key == "3r",
                        cert=client_pki[1:] if key == "3m" else None)
                if key == "3b":
                    return _load.bursts(pm, server.port, clients=args.burst, duration=duration, cpu=load_cpu)
                if key == "3":
                    return _load.new_connections(pm, server.port, workers=args.tls_clients, duration=duration,
                                                 cpu=load_cpu)
                return _load.run_h2load(pm, target_url, h1=h1, clients=conns, streams=streams,
                                        duration=duration, cpu=load_cpu, log_file=log_file)

            if args.warmup > 0:
                log(f"{name}: warm-up {args.warmup:g}s")
                run(args.warmup)
            log(f"{name}: measuring {args.duration:g}s")
            server_cpu = (lambda: _procs.cpu_times(be.worker_pid)) if key == "baseline" else server.cpu_times
            if key != "baseline":
                server.profile_start()
            t0, l0 = server_cpu(), _load.children_cpu()
            who = peer or f"{workers}w-{engine or 'auto'}"
            res = run(args.duration, os.path.join(tmp, f"h2load-{key}-{who}.log".replace(" ", "-")))
            t1, l1 = server_cpu(), _load.children_cpu()
            c0, c1 = sum(t0), sum(t1)
            if key != "baseline":
                prof = server.profile_stop()
                if prof:
                    profiles.append((name, prof))
                if not server.alive():
                    raise RuntimeError(f"{peer or 'the gateway'} died:\n" + server.log_tail())
            note = "profiled" if args.profile and key != "baseline" and not peer else ""
            if key != "baseline" and args.workers != [1] and not peer:
                note = (note + ", " if note else "") + f"workers={workers}"
            if res.get("alpn") and key in ("1", "2") and res["alpn"] != ("http/1.1" if h1 else "h2"):
                note = (note + ", " if note else "") + f"ALPN {res['alpn']}"
            if "probe" in res:   # openssl s_time: what was negotiated, what the gateway answered
                pr = res["probe"]
                if pr["protocol"] != "TLSv1.3":
                    note = (note + ", " if note else "") + f"{pr['protocol']}"
                if key == "3r" and res["reused"] < res["succeeded"]:
                    note = (note + ", " if note else "") + f"{res['succeeded'] - res['reused']} not resumed"
                elif key != "3r" and res["reused"]:
                    note = (note + ", " if note else "") + f"{res['reused']} resumed"
                if not pr["status"].startswith("HTTP/1.1 2") or (
                        res["succeeded"] and abs(res["bytes_per_conn"] - pr["bytes"]) > 1):
                    note = (note + ", " if note else "") + (
                        f"{res['bytes_per_conn']:g} B/conn, probe {pr['status']!r} {pr['bytes']} B")
                for line in res["errors_text"]:
                    log(f"{name}: s_time: {line[0] if line else '?'}")
            row = _row(key, res, c1 - c0, l1 - l0, args, note,
                       server="nginx direct" if key == "baseline" else (peer or label), engine=engine)
            row["workers"] = workers if key != "baseline" and not peer else None
            if res["succeeded"]:  # where the CPU went: user space or the kernel
                row.update(server_user_us_per_req=round((t1[0] - t0[0]) / res["succeeded"] * 1e6, 1),
                           server_sys_us_per_req=round((t1[1] - t0[1]) / res["succeeded"] * 1e6, 1))
            if "probe" in res:
                row.update(tls=res["probe"], reused=res["reused"], bytes_per_conn=res["bytes_per_conn"])
            if key == "3" and handshake and row["server_cpu_us_per_req"]:  # the peer too: same formula
                row.update(openssl_handshake_us=handshake["median_us"],
                           overhead_us_per_conn=round(row["server_cpu_us_per_req"] - handshake["median_us"], 1))
            log(f"{name}: {row['rate']:,.0f} {row['unit']}, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                f"gateway CPU {row['server_cpu_s']} s, errors {row['errors']}")
            rows.append(row)

        labels = tree_labels(args.repos)
        for rnd, repo, workers, engine in ((r, t, w, e) for r in range(args.rounds) for t in args.repos
                                           for w in args.workers for e in args.h2_engines):
            label = labels[repo]
            gw = _gateway.start(pm, tmp, repo, be.port, gw_cpu, access_log=args.access_log,
                                profile=args.profile, workers=workers, h2_engine=engine,
                                client_ca=client_pki[0] if client_pki else None,
                                name=f"gateway-{workers}w-{engine}-{len(rows)}")
            log(f"gateway{' ' + label if label != 'txgate' else ''} (round {rnd + 1}, {repo}): pid {gw.pid} on "
                f"https://127.0.0.1:{gw.port}, {workers} worker(s), CPU "
                f"{gw_cpu if gw_cpu is not None else 'unpinned'}, h2_engine {engine}, access_log {'on' if args.access_log else 'off'}"
                f"{', cProfile' if args.profile else ''}")
            _sanity(gw.port)
            if handshake is None and "3" in args.scenarios and args.handshake_samples > 0:
                handshake = _handshake.server_handshake_us(_handshake.gateway_certificate(gw.state_dir),
                                                           args.handshake_samples)
                log(f"OpenSSL's own server handshake, in process: {handshake['median_us']} us (median of "
                    f"{handshake['handshakes']}, {handshake['version']}, {handshake['key']})")
            for key in args.scenarios:
                measure(key, workers, engine=engine, label=label)
            pm.stop(gw.proc, timeout=60)
        if args.peers == "nginx":
            # The peer on the gateway's core, the same load on the other one; measured once, not per engine.
            proxy = _peers.start_nginx_proxy(pm, tmp, be.port, gw_cpu,
                                             client_ca=client_pki[0] if client_pki else None)
            log(f"peer: nginx TLS-terminating proxy, pid {proxy.pid} on "
                f"https://127.0.0.1:{proxy.port}")
            _sanity(proxy.port)
            for key in args.scenarios:
                measure(key, server=proxy)
            pm.stop(proxy.proc, timeout=30)
        if args.baseline:
            # The backend alone on the gateway's core, the load on the other one, as for scenario 1.
            wpid = be.worker_pid
            if gw_cpu is not None:
                os.sched_setaffinity(wpid, {gw_cpu})
            try:
                measure("baseline")
            finally:
                if load_cpu is not None:
                    os.sched_setaffinity(wpid, {load_cpu})
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the gateway, the backend and the load")
    except Exception as e:  # a harness: say what broke, still print what was measured
        failed = True
        log(f"error: {type(e).__name__}: {e}")
    finally:
        pm.stop_all()
        if args.keep_temp:
            log(f"temp dir kept: {tmp}")
    if rows:
        meta = (f"backend {be.kind if be else '?'}; gateway pinned to CPU {gw_cpu}, load and backend on CPU {load_cpu}; "
                f"{args.duration:g}s per run after {args.warmup:g}s warm-up; "
                f"connections: 1 = {args.connections or 20}, 2 = {args.connections or 10} x {args.streams} "
                f"streams, 3 = {args.tls_clients} "
                f"{'openssl s_time' if args.tls_client == 'openssl' else 'Python ssl client'} processes"
                f"{f', 3b = bursts of {args.burst} (h2load --h1 -c {args.burst} -n {args.burst})' if '3b' in args.scenarios else ''}"
                f"; access_log "
                f"{'on' if args.access_log else 'off'}; {time.strftime('%Y-%m-%d %H:%M:%S')}")
        notes = engine_comparison(rows) + tree_comparison(rows) + peer_comparison(rows)
        st = [r for r in rows if r.get("tls") and r["scenario"] == "3"]
        if st:
            pr = st[0]["tls"]
            notes.append(
                f"(3) with openssl s_time -new: a full handshake per connection ({pr['protocol']}, {pr['cipher']}, "
                f"{pr['kex']}; {sum(r['reused'] for r in st)} sessions resumed), GET / HTTP/1.0, read to close; "
                f"{st[0]['bytes_per_conn']:g} bytes read per connection (the probe's response: {pr['status']}, "
                f"{pr['bytes']} bytes). s_time reports no per-connection times: p50/p99 are '-' "
                "(--tls-client python measures them, at ~1.2x the client CPU per connection).")
        for r in rows:
            if "overhead_us_per_conn" in r and r["server"].startswith("txgate"):
                notes.append(
                    f"(3) {r['server']}: OpenSSL's own server handshake for the gateway's certificate, in process (memory BIOs, "
                    f"server side only): {r['openssl_handshake_us']:.0f} us; gateway CPU per connection "
                    f"{r['server_cpu_us_per_req']:.0f} us - that = {r['overhead_us_per_conn']:.0f} us of the "
                    "gateway's own per connection (Python, TCP in the kernel, the proxied request).")
            elif "overhead_us_per_conn" in r:
                notes.append(
                    f"(3) {r['server']}, the same formula: CPU per connection {r['server_cpu_us_per_req']:.0f} us - "
                    f"{r['openssl_handshake_us']:.0f} us = {r['overhead_us_per_conn']:.0f} us of its own per connection "
                    "(TCP in the kernel, the proxied request; its OpenSSL is the system's, its certificate also "
                    "ECDSA P-256).")
        notes += cpu_split(rows)
        if args.verbose:
            table = _report.render_verbose(rows, meta, notes)
        else:
            table = _report.render(rows, meta, notes, streams=args.streams)
        if args.plot:
            try:
                _report.plot(rows, args.plot, streams=args.streams)
                log(f"plot written to {args.plot}")
            except Exception as e:  # a harness: report, still print the table
                log(f"--plot: {type(e).__name__}: {e}")
        prof_texts = []
        for name, path in profiles:
            try:
                prof_texts.append((name, _profile_text(path, args.profile_top)))
            except Exception as e:  # a harness: report, do not crash
                prof_texts.append((name, f"(cannot read {path}: {e})"))
        if args.json:
            sys.stderr.write(table + "\n")
            json.dump({"meta": meta, "results": rows,
                       "profiles": {n: t for n, t in prof_texts}}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(table)
            for name, text in prof_texts:
                print(f"\n== gateway profile, {name}: top {args.profile_top} by tottime ==")
                print(text.rstrip())
    if not args.keep_temp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 130 if interrupted else (1 if failed else 0)
