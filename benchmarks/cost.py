"""Python calls and CPU instructions per new TLS connection and per keep-alive request, per tree.

    python -m benchmarks.cost --repo /path/to/main --repo .            # cProfile call counts
    python -m benchmarks.cost --repo /path/to/main --repo . --callgrind  # + valgrind instruction counts
    python -m benchmarks.cost --repo /path/to/main --repo . --strace     # + system calls by name

For each tree (``--repo``, the same harness for all), one gateway (``twistd -n txgate`` with that tree
on ``PYTHONPATH``, the harness's gw.ini, nginx backend when installed), warmed up, then two fixed
workloads, each between a start and a stop of the counter:

- scenario 3: ``--connections`` new connections one after the other from this process (Python ``ssl``,
  TLS 1.3 full handshake, ALPN http/1.1, ``GET /`` with ``Connection: close``, read to the close);
- scenario 1: ``h2load --h1 -c 20 -n --requests`` keep-alive requests.

Counters: cProfile's call count (every Python and builtin function call) in the gateway, divided by the
connections or requests (the reactor's loops per connection are printed beside it: each loop costs ~15
calls, and how many a connection takes depends on how its packets meet the poll, so the figure moves
by a few dozen from run to run); with ``--callgrind`` the gateway runs under ``valgrind --tool=callgrind``
instead and the figure is the user-space instructions (Ir) it executed, the same way (kernel work,
e.g. TCP on loopback, is not in it); with ``--strace``, ``strace -c -f`` attached to the gateway counts its
system calls by name. All are counts, not times: per request they repeat within ~1% on a loaded
machine, per connection within a few per cent (the reactor loops), so a change shows up run to run. ``--top`` lists the functions with the most
calls per connection/request (cProfile).
"""
from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from . import backend as _backend
from . import gateway as _gateway
from . import load as _load
from . import procs as _procs

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _connections(port: int, n: int) -> int:
    """``n`` new TLS connections, one request each; how many got a 2xx."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    ok = 0
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw)
        s.sendall(req)
        head = _load.read_response(s)
        s.close()
        ok += head[9:10] == b"2"
    return ok


def _keepalive(pm, port: int, n: int) -> int:
    args = [_load.h2load_path(), "--h1", "-c", "20", "-t", "1", "-n", str(n), f"https://127.0.0.1:{port}/"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=3600).stdout
    for line in out.splitlines():
        if line.startswith("status codes:"):
            return int(line.split()[2])
    raise RuntimeError(f"h2load: {out[-1000:]}")


_EPOLL_POLL = "<method 'poll' of 'select.epoll' objects>"  # one per reactor loop (a reactor may wrap runUntilCurrent)


class _Profile:
    """cProfile in the gateway (SIGUSR1/SIGUSR2, the harness's --profile launcher)."""

    wrap = ()
    profile = True

    def __init__(self, gw, tmp) -> None:
        self.gw = gw

    def start(self) -> None:
        self.gw.profile_start()
        time.sleep(0.3)

    def stop(self) -> dict:
        path = self.gw.profile_stop()
        st = pstats.Stats(path)
        loops = sum(nc for f, (cc, nc, tt, ct, callers) in st.stats.items() if f[2] == _EPOLL_POLL)
        return {"calls": st.total_calls, "stats": st, "path": path, "loops": loops}


class _Callgrind:
    """valgrind --tool=callgrind around the gateway; callgrind_control zeroes and dumps the counters."""

    profile = False

    def __init__(self, gw, tmp) -> None:
        self.gw = gw
        self.tmp = tmp

    @staticmethod
    def wrapper(tmp: str):
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out.%p"]

    def _control(self, flag: str) -> None:
        # callgrind answers between two basic blocks: wake the (idle) gateway with a connection meanwhile.
        p = subprocess.Popen(["callgrind_control", flag, str(self.gw.pid)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        while p.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.gw.port), timeout=5).close()
            except OSError:
                pass
            time.sleep(0.2)

    def start(self) -> None:
        self._control("-z")

    def stop(self) -> dict:
        before = set(os.listdir(self.tmp))
        self._control("-d")
        new = sorted(f for f in set(os.listdir(self.tmp)) - before if f.startswith("callgrind.out"))
        ir = 0
        for f in new:
            with open(os.path.join(self.tmp, f)) as fh:
                for line in fh:
                    if line.startswith(("summary:", "totals:")):
                        ir = max(ir, int(line.split()[1]))
        return {"ir": ir, "files": [os.path.join(self.tmp, f) for f in new]}


class _Strace:
    """``strace -c -f`` attached to the gateway: system calls per connection or request, by name."""

    profile = False

    def __init__(self, gw, tmp) -> None:
        self.gw = gw
        self.tmp = tmp
        self.proc = None
        self.n = 0

    def start(self) -> None:
        self.n += 1
        self.out = os.path.join(self.tmp, f"strace-{self.n}.txt")
        self.proc = subprocess.Popen(["strace", "-c", "-f", "-p", str(self.gw.pid), "-o", self.out],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGINT)  # detach and write the summary
        self.proc.wait(60)
        calls = {}
        with open(self.out) as f:
            for line in f:
                parts = line.split()
                # "% time  seconds  usecs/call  calls  [errors]  syscall"
                if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                    calls[parts[-1]] = int(parts[3])
        return {"syscalls": calls}


def measure(pm, repo: str, be, tmp: str, args, counter_cls, name: str) -> dict:
    d = os.path.join(tmp, name)
    os.makedirs(d)
    wrap = counter_cls.wrapper(d) if counter_cls is _Callgrind else ()
    slow_counter = counter_cls is not _Profile
    gw = _gateway.start(pm, d, repo, be.port, args.gateway_cpu, profile=counter_cls.profile,
                        timeout=600 if wrap else 30, wrap=wrap)
    try:
        counter = counter_cls(gw, d)
        slow = 10 if slow_counter else 1
        _connections(gw.port, max(5, 30 // slow))  # warm-up: every code path loaded, pools filled
        _keepalive(pm, gw.port, max(200, 2000 // slow))
        out = {}
        n3 = max(20, args.connections // slow)
        counter.start()
        ok = _connections(gw.port, n3)
        out["3"] = dict(counter.stop(), n=ok)
        n1 = max(500, args.requests // slow)
        counter.start()
        ok = _keepalive(pm, gw.port, n1)
        out["1"] = dict(counter.stop(), n=ok)
        return out
    finally:
        pm.stop(gw.proc, timeout=60)


def _top(stats: pstats.Stats, n: int, k: int) -> list[str]:
    rows = sorted(((nc, f) for f, (cc, nc, tt, ct, callers) in stats.stats.items()), reverse=True)[:k]
    return [f"  {nc / n:7.1f}  {os.path.basename(f[0])}:{f[1]}({f[2]})" for nc, f in rows]


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", action="append", help="a tree to measure (repeat to compare; default: this one)")
    p.add_argument("--connections", type=int, default=300, help="scenario 3 connections (default 300)")
    p.add_argument("--requests", type=int, default=20000, help="scenario 1 requests (default 20000)")
    p.add_argument("--callgrind", action="store_true",
                   help="also count instructions under valgrind (connections and requests / 10)")
    p.add_argument("--strace", action="store_true",
                   help="also count system calls per connection and request (strace -c attached to the gateway)")
    p.add_argument("--top", type=int, default=0, help="list the N functions with the most calls")
    p.add_argument("--save", metavar="DIR", help="keep the cProfile files there (TREE-INDEX-SCENARIO.prof)")
    p.add_argument("--gateway-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    args = p.parse_args(argv)
    repos = [os.path.abspath(r) for r in (args.repo or [HERE])]
    if args.callgrind and not shutil.which("valgrind"):
        p.error("--callgrind: valgrind is not installed")
    cpus = sorted(os.sched_getaffinity(0))
    if args.gateway_cpu not in cpus or args.load_cpu not in cpus:
        args.gateway_cpu = args.load_cpu = None
    signal.signal(signal.SIGTERM, _on_sigterm)  # stop the gateway and the backend on the way out
    tmp = tempfile.mkdtemp(prefix="txgate-cost-")
    pm = _procs.Procs()
    results = []
    try:
        be = _backend.start(pm, tmp, "auto", args.load_cpu)
        counters = [_Profile] + ([_Callgrind] if args.callgrind else []) + ([_Strace] if args.strace else [])
        for i, repo in enumerate(repos):
            res = {}
            for c in counters:
                sys.stderr.write(f"{repo}: {c.__name__.strip('_').lower()}...\n")
                res[c] = measure(pm, repo, be, tmp, args, c, f"{i}-{c.__name__.strip('_')}")
            results.append((repo, res))
    finally:
        pm.stop_all()
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        for i, (repo, res) in enumerate(results):
            for key, r in res[_Profile].items():
                shutil.copy(r["path"], os.path.join(args.save, f"{os.path.basename(repo)}-{i}-{key}.prof"))
            for key, r in res.get(_Callgrind, {}).items():
                for j, f in enumerate(r["files"]):
                    shutil.copy(f, os.path.join(args.save, f"{os.path.basename(repo)}-{i}-{key}.callgrind.{j}"))
    print("| tree | calls/conn (3) | reactor loops/conn | calls/req (1) | reactor loops/req |"
          + (" Ir/conn (3) | Ir/req (1) |" if args.callgrind else ""))
    print("|---|---|---|---|---|" + ("---|---|" if args.callgrind else ""))
    for repo, res in results:
        pr = res[_Profile]
        line = (f"| {repo} | {pr['3']['calls'] / pr['3']['n']:,.0f} | {pr['3']['loops'] / pr['3']['n']:.1f} "
                f"| {pr['1']['calls'] / pr['1']['n']:,.0f} | {pr['1']['loops'] / pr['1']['n']:.2f} |")
        if _Callgrind in res:
            cg = res[_Callgrind]
            line += f" {cg['3']['ir'] / cg['3']['n']:,.0f} | {cg['1']['ir'] / cg['1']['n']:,.0f} |"
        print(line)
    if args.strace:
        for key, title in (("3", "per new connection"), ("1", "per keep-alive request")):
            print(f"\nsystem calls {title} (strace -c)")
            names = sorted({k for _, res in results for k in res[_Strace][key]["syscalls"]})
            print("| syscall | " + " | ".join(os.path.basename(r) for r, _ in results) + " |")
            print("|---|" + "---|" * len(results))
            for k in names + ["total"]:
                vals = []
                for _, res in results:
                    r = res[_Strace][key]
                    c = sum(r["syscalls"].values()) if k == "total" else r["syscalls"].get(k, 0)
                    vals.append(f"{c / r['n']:.2f}")
                print(f"| {k} | " + " | ".join(vals) + " |")
    if args.top:
        for repo, res in results:
            for key, title in (("3", "per new connection"), ("1", "per keep-alive request")):
                r = res[_Profile][key]
                print(f"\n{repo}: calls {title}, top {args.top}")
                print("\n".join(_top(r["stats"], r["n"], args.top)))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
