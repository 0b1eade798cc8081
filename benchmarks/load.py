"""Load generators: h2load (scenarios 1 and 2) and one-TLS-connection-per-request clients (3).

Why not ``h2load --h1 -H 'Connection: close'`` for scenario 3: h2load 1.52 does not handle servers
closing HTTP/1.1 connections in timing mode. Against nginx over plain HTTP it never finishes (it keeps
spinning past -D), over TLS it reconnects but its timings and traffic counters are wrong. So scenario 3
uses parallel ``openssl s_time -new`` processes (C, ~0.9 ms of client CPU per connection, user + system;
see s_time_connections()) or, with ``--tls-client python``, processes of blocking Python ``ssl`` clients
(~1.1 ms per connection, but with per-connection latencies; see new_connections()), all pinned to the
load CPU.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import time

from . import procs as _procs


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def percentile(sorted_vals, q: float):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(q / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def h2load_path() -> str:
    p = shutil.which("h2load")
    if not p:
        raise RuntimeError("h2load is not installed (apt-get install nghttp2-client)")
    return p


def run_h2load(pm: _procs.Procs, url: str, *, h1: bool, clients: int, streams: int, duration: float,
               cpu, log_file=None, extra=(), count: int = 0) -> dict:
    """h2load for ``duration`` seconds, or for ``count`` requests in all when given."""
    args = [h2load_path(), "-c", str(clients), "-m", str(streams), "-t", "1"]
    args += ["-n", str(count)] if count else ["-D", f"{int(duration * 1000)}ms"]
    if h1:
        args.append("--h1")
    if log_file:
        args.append(f"--log-file={log_file}")
    args += list(extra) + [url]
    p = pm.popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_procs.pin(cpu))
    try:
        out, _ = p.communicate(timeout=duration + 60)
    finally:
        pm.stop(p)
    text = out.decode(errors="replace")
    res = {"cmd": " ".join(args), "output": text}
    m = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", text)
    if not m:
        raise RuntimeError(f"h2load failed (status {p.returncode}):\n{text[-2000:]}")
    res["elapsed"] = float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]
    res["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    res["done"], res["succeeded"], res["failed"], res["errored"], res["timeout"] = (
        int(m.group(i)) for i in (3, 4, 5, 6, 7))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    res["2xx"] = int(m.group(1))
    res["non_2xx"] = sum(int(m.group(i)) for i in (2, 3, 4))
    res["5xx"] = int(m.group(4))  # h2load also counts these as failed
    m = re.search(r"Application protocol: (\S+)", text)
    res["alpn"] = m.group(1) if m else None
    res["lat_us"] = []
    if log_file and os.path.exists(log_file):
        lat = []
        with open(log_file) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
        lat.sort()
        res["lat_us"] = lat
    return res


def bursts(pm: _procs.Procs, port: int, *, clients: int, duration: float, cpu) -> dict:
    """Scenario 3b: ``h2load --h1 -c N -n N`` (N connections opened at once, one request each, then closed),
    burst after burst until ``duration`` has passed; the counts summed, the rate over the bursts' own time."""
    total: dict = {"done": 0, "succeeded": 0, "failed": 0, "errored": 0, "timeout": 0, "2xx": 0, "non_2xx": 0, "5xx": 0,
                   "elapsed": 0.0, "lat_us": [], "bursts": 0}
    end = time.monotonic() + duration
    while True:
        res = run_h2load(pm, f"https://127.0.0.1:{port}/", h1=True, clients=clients, streams=1, duration=0,
                         cpu=cpu, count=clients)
        for k in ("done", "succeeded", "failed", "errored", "timeout", "2xx", "non_2xx", "5xx", "elapsed"):
            total[k] += res[k]
        total["bursts"] += 1
        total["cmd"], total["alpn"] = res["cmd"], res["alpn"]
        if time.monotonic() >= end:
            break
    total["succeeded"] = total["2xx"]  # a connection counts when it got a 2xx answer
    total["rps"] = total["succeeded"] / total["elapsed"] if total["elapsed"] else 0.0
    return total


# -- scenario 3: one new TLS connection per request ------------------------------------------------

def read_response(s) -> bytes:
    """Read one HTTP/1.1 response (Content-Length delimited, else up to the close); its head."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    if m:
        need = int(m.group(1))
        while len(body) < need:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    else:
        while s.recv(65536):
            pass
    return head


def _tls_worker(port: int, deadline: float, cpu, q) -> None:
    # The parent handles Ctrl-C and terminates us (SIGTERM): die quietly, without its handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE   # as h2load: no verification cost on the client
    ctx.set_alpn_protocols(["http/1.1"])
    req = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: txgate-bench\r\n"
           f"Connection: close\r\n\r\n").encode()
    lat, errors, non2xx = [], 0, 0
    perf = time.perf_counter
    while time.monotonic() < deadline:
        t0 = perf()
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = ctx.wrap_socket(raw)      # full handshake: no session is reused
            s.sendall(req)
            head = read_response(s)
            s.close()
            if head[9:10] != b"2":
                non2xx += 1
            else:
                lat.append(int((perf() - t0) * 1e6))
        except (OSError, ssl.SSLError, ConnectionError):
            errors += 1
    q.put((lat, errors, non2xx))


def new_connections(pm: _procs.Procs, port: int, *, workers: int, duration: float, cpu) -> dict:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    start = time.monotonic()
    deadline = start + duration
    ps = [ctx.Process(target=_tls_worker, args=(port, deadline, cpu, q), daemon=True) for _ in range(workers)]
    pm.mp.extend(ps)
    for w in ps:
        w.start()
    lat, errors, non2xx = [], 0, 0
    for _ in ps:
        l, e, n = q.get(timeout=duration + 60)
        lat += l
        errors += e
        non2xx += n
    elapsed = time.monotonic() - start
    for w in ps:
        w.join()
        pm.mp.remove(w)
    lat.sort()
    return {"cmd": f"{workers} Python ssl client processes, full TLS handshake + GET + close per request",
            "elapsed": elapsed, "rps": len(lat) / elapsed, "done": len(lat) + errors + non2xx,
            "succeeded": len(lat), "failed": non2xx, "errored": errors, "timeout": 0, "2xx": len(lat),
            "non_2xx": non2xx, "alpn": "http/1.1", "lat_us": lat}


# -- scenario 3 with openssl s_time ------------------------------------------------------------------
#
# ``openssl s_time -new -www PATH`` loops: TCP connect, full handshake (a new SSL object each time, no
# session set, so no resumption), ``GET PATH HTTP/1.0``, read until the server closes, close. It prints
# one character per connection ('r' when the session was reused, '*' for a new TLS >= 1.2 session) and
# at the end "N connections in T.TTs; ... bytes read B" and "N connections in S real seconds, B/N bytes
# read per connection". It stops at the first connection that fails (connect or handshake error: it
# prints "ERROR" and exits 1, without the summary). Its timer counts whole seconds of time(): with
# -time S started at second X+f it stops after the first connection past X+S+1, so we start every
# process just after a second boundary with -time duration-1 and measure the wall time ourselves.
#
# -no-CApath -no-CAfile -no-CAstore: without them OpenSSL still builds and checks the chain (verification
# is off, its result ignored) and looks the gateway's issuer up in /usr/lib/ssl/certs on every
# connection (~6 getdents64 + openat/stat calls each): ~1.3 ms of client CPU per connection instead of
# ~0.9 ms, i.e. ~750 instead of ~1,050 conn/s on a 2-CPU machine.

S_TIME_PATH = "/"
_ST_SUMMARY = re.compile(r"(\d+) connections in [\d.]+s; [\d.]+ connections/user sec, bytes read (\d+)")
# -new prints "Collecting connection statistics for N seconds", -reuse "starting", before the marks.
_ST_MARKS = re.compile(r"(?:Collecting connection statistics for \d+ seconds|starting)\r?\n([*rt3]*)")


def openssl_path():
    return shutil.which("openssl")


def _client_cert_args(cert) -> list[str]:
    """s_client/s_time options presenting a client certificate: ``cert`` = (cert.pem, key.pem) or None."""
    return ["-cert", cert[0], "-key", cert[1]] if cert else []


def s_time_probe(port: int, timeout: float = 10.0, cert=None) -> dict:
    """One ``openssl s_client`` connection (same library and defaults as s_time) sending s_time's request:
    the negotiated protocol, cipher and key exchange, and the response's status line and size."""
    args = [openssl_path(), "s_client", "-connect", f"127.0.0.1:{port}", "-brief", "-ign_eof", "-no-CApath",
            "-no-CAfile", "-no-CAstore"] + _client_cert_args(cert)
    p = subprocess.run(args, input=f"GET {S_TIME_PATH} HTTP/1.0\r\n\r\n".encode(), capture_output=True,
                       timeout=timeout, start_new_session=True)
    err = p.stderr.decode(errors="replace")

    def field(name):
        m = re.search(rf"^{name}: (.+)$", err, re.M)
        return m.group(1).strip() if m else None

    status = p.stdout.split(b"\r\n", 1)[0].decode(errors="replace")
    return {"protocol": field("Protocol version"), "cipher": field("Ciphersuite"),
            "kex": field("Server Temp Key"), "status": status, "bytes": len(p.stdout)}


def s_time_connections(pm: _procs.Procs, port: int, *, clients: int, duration: float, cpu, tmp: str,
                       reuse: bool = False, cert=None) -> dict:
    """``clients`` parallel ``openssl s_time -new`` processes for about ``duration`` seconds; ``reuse``:
    ``-reuse`` instead (each process resumes its first connection's session on every later one);
    ``cert``: (cert.pem, key.pem) presented as the client certificate."""
    probe = s_time_probe(port, cert=cert)
    seconds = max(1, int(round(duration)) - 1)
    args = [openssl_path(), "s_time", "-connect", f"127.0.0.1:{port}", "-reuse" if reuse else "-new",
            "-time", str(seconds), "-www", S_TIME_PATH, "-no-CApath", "-no-CAfile", "-no-CAstore"]
    args += _client_cert_args(cert)
    # Start just after a second boundary so that every process stops at the same one (see above).
    frac = time.time() % 1.0
    time.sleep((1.0 - frac + 0.02) if frac > 0.3 else max(0.0, 0.02 - frac))
    outs, ps = [], []
    start = time.monotonic()
    try:
        for i in range(clients):
            f = open(os.path.join(tmp, f"s_time-{port}-{i}.out"), "w+b")
            outs.append(f)
            ps.append(pm.popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               preexec_fn=_procs.pin(cpu)))
        ends = {}
        hard = start + seconds + 60
        while len(ends) < len(ps):
            for p in ps:
                if p not in ends and p.poll() is not None:
                    ends[p] = time.monotonic()
            if time.monotonic() > hard:
                raise RuntimeError("openssl s_time did not finish")
            time.sleep(0.005)
    finally:
        for p in ps:
            pm.stop(p)
    elapsed = max(ends.values()) - start
    conns = ok = errors = reused = nbytes = 0
    bad = []
    for p, f in zip(ps, outs):
        f.seek(0)
        text = f.read().decode(errors="replace")
        f.close()
        mm = _ST_MARKS.search(text)
        marks = mm.group(1) if mm else ""
        reused += marks.count("r")
        m = _ST_SUMMARY.search(text)
        if p.returncode != 0 or not m:
            # Connect or handshake error: s_time stops there; what it finished before still counts.
            errors += 1
            conns += len(marks)
            ok += len(marks)
            lines = text.strip().splitlines()
            bad.append([l for l in lines if ":error:" in l][:1] or lines[-1:] or [f"status {p.returncode}"])
            continue
        n, b = int(m.group(1)), int(m.group(2))
        conns += n
        nbytes += b
        if b == 0:      # the gateway answered nothing on any of them
            errors += n
        else:
            ok += n
    if ok == 0 and conns == 0 and bad:
        raise RuntimeError(f"openssl s_time failed: {bad[0][0]}")
    per_conn = nbytes / conns if conns else 0
    return {"cmd": f"{clients} x {' '.join(args)}", "elapsed": elapsed, "rps": ok / elapsed,
            "done": conns + errors, "succeeded": ok, "failed": 0, "errored": errors, "timeout": 0,
            "2xx": ok, "non_2xx": 0, "alpn": None, "lat_us": [], "reused": reused,
            "bytes_per_conn": round(per_conn, 1), "probe": probe, "errors_text": bad[:3]}
