"""python -m benchmarks.workers_bench: how connections reach worker processes (docs/workers.md).

For each layout -- SO_REUSEPORT with client-address steering (the default), SO_REUSEPORT with the
kernel's hash (worker_affinity = none), one shared socket (TXGATE_WORKER_SOCKETS=shared) -- it starts
`twistd txgate --workers 2` with the built-in echo API and measures, with Python TLS clients on fresh
connections (each connection: handshake, GET, close):

- spread: requests per worker (from the workers' metrics files) and p50/p99 latency, clients from
  127.0.0.1 and from 32 loopback addresses (127.0.0.1-32);
- busy: worker 0 stopped (SIGSTOP) for --stall seconds under the same load: failed requests, p99 and
  max latency;
- resumption: `openssl s_client -sess_out` once, then --resume `-sess_in` runs from 127.0.0.1.

A harness: it prints a table and never fails on a figure.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()"
INI = """[gateway]
state_dir = ./state
access_log = off
worker_affinity = {affinity}

[listener:main]
bind = 127.0.0.1:0

[api:echo]
path = /echo
upstream = builtin:echo

[admin]
bind = off
"""
LAYOUTS = (("reuseport+client_address", "client_address", "reuseport"),
           ("reuseport+hash", "none", "reuseport"),
           ("shared socket", "none", "shared"))


def _ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


CTX = _ctx()


def request(port, source):
    t0 = time.monotonic()
    conn = http.client.HTTPSConnection("localhost", port, context=CTX, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", "/echo/x")
        r = conn.getresponse()
        r.read()
        ok = r.status == 200
    except Exception:
        ok = False
    finally:
        conn.close()
    return ok, time.monotonic() - t0


def load(port, seconds, sources, threads=8, during=None):
    out = []
    stop = time.monotonic() + seconds

    def run(i):
        n = 0
        while time.monotonic() < stop:
            out.append(request(port, sources[(i + n * threads) % len(sources)]))
            n += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    if during:
        during()
    for t in ts:
        t.join()
    lat = sorted(d for ok, d in out if ok)
    pct = (lambda p: lat[min(len(lat) - 1, int(len(lat) * p / 100))] * 1000 if lat else float("nan"))
    return {"requests": len(out), "failed": sum(1 for ok, _ in out if not ok), "p50_ms": pct(50),
            "p99_ms": pct(99), "max_ms": lat[-1] * 1000 if lat else float("nan")}


def per_worker(state):
    from prometheus_client.mmap_dict import MmapedDict

    counts = {}
    d = os.path.join(state, "metrics")
    for name in os.listdir(d):
        if name.startswith("counter_"):
            pid = int(name.split("_")[1].split(".")[0])
            for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(os.path.join(d, name)):
                if json.loads(key)[1] == "txgate_requests_total":
                    counts[pid] = counts.get(pid, 0) + int(value)
    return counts


def workers(pid):
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return sorted(out)


def resumption(port, tmp, n):
    sess = os.path.join(tmp, "sess.pem")
    req = b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-ign_eof"]
    subprocess.run(base + ["-sess_out", sess], input=req, capture_output=True, timeout=20)
    reused = 0
    for _ in range(n):
        r = subprocess.run(base + ["-sess_in", sess], input=req, capture_output=True, timeout=20)
        reused += b"Reused, " in r.stdout
    return reused


def measure(name, affinity, mode, args):
    tmp = tempfile.mkdtemp(prefix="txgate-workers-")
    with open(os.path.join(tmp, "gw.ini"), "w") as f:
        f.write(INI.format(affinity=affinity))
    env = dict(os.environ, PYTHONPATH=REPO, TXGATE_WORKER_SOCKETS=mode)
    out = open(os.path.join(tmp, "out.txt"), "wb")
    p = subprocess.Popen([sys.executable, "-c", RUN, "-n", "--pidfile=", "txgate", "--config", "gw.ini",
                          "--workers", "2"], cwd=tmp, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not re.search(rb"2 workers serving", open(os.path.join(tmp, "out.txt"), "rb").read()):
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError(open(os.path.join(tmp, "out.txt")).read())
            time.sleep(0.1)
        port = int(re.search(rb"listener main on https://127\.0\.0\.1:(\d+)",
                             open(os.path.join(tmp, "out.txt"), "rb").read()).group(1))
        state = os.path.join(tmp, "state")
        rows = []
        for label, sources in (("1 address", ["127.0.0.1"]), ("32 addresses", [f"127.0.0.{i}" for i in range(1, 33)])):
            before = per_worker(state)
            res = load(port, args.duration, sources)
            time.sleep(1)  # the workers flush their counters every 0.5 s
            after = per_worker(state)
            share = sorted((after.get(k, 0) - before.get(k, 0) for k in after), reverse=True)
            total = sum(share) or 1
            rows.append((name, f"spread, {label}", res, "/".join(f"{100 * s / total:.0f}%" for s in share)))
        victim = workers(p.pid)[0]

        def stall():
            time.sleep(1)
            os.kill(victim, signal.SIGSTOP)
            time.sleep(args.stall)
            os.kill(victim, signal.SIGCONT)

        res = load(port, args.duration + args.stall, [f"127.0.0.{i}" for i in range(1, 33)], during=stall)
        rows.append((name, f"worker 0 stopped {args.stall:g}s", res, ""))
        reused = resumption(port, tmp, args.resume)
        rows.append((name, f"resumed {reused}/{args.resume}", None, ""))
        return rows
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(60)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.workers_bench")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--stall", type=float, default=2.0)
    ap.add_argument("--resume", type=int, default=100)
    args = ap.parse_args(argv)
    print("| layout | run | requests | failed | p50 ms | p99 ms | max ms | per worker |")
    print("|---|---|---|---|---|---|---|---|")
    for name, affinity, mode in LAYOUTS:
        for layout, run, res, share in measure(name, affinity, mode, args):
            if res is None:
                print(f"| {layout} | {run} | | | | | | |")
            else:
                print(f"| {layout} | {run} | {res['requests']} | {res['failed']} | {res['p50_ms']:.1f} | "
                      f"{res['p99_ms']:.1f} | {res['max_ms']:.0f} | {share} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
