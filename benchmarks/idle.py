"""``--idle N``: the gateway's memory per idle downstream connection, and a request's latency meanwhile.

N TLS connections are opened to a fresh gateway by a few client processes (blocking ``ssl`` sockets,
a few threads each, pinned to the load CPU) and held open; the gateway's RSS (``/proc/PID/status``
VmRSS and RssAnon) is read before and after, and a probe connection times requests while they are
all open. Two phases, each on its own fresh gateway so that the baselines are clean:

* ``h1``: ALPN http/1.1; the first half of each client's connections send one ``GET /`` (keep-alive)
  and read the response, the other half only complete the handshake; all then stay idle.
* ``h2``: ALPN h2; every connection sends the preface, SETTINGS and one ``GET /`` stream, reads its
  response (and ACKs the server's SETTINGS), then stays idle: an h2 connection with one finished stream.

Opening 10,000 connections needs about as many file descriptors in the gateway and in the clients:
the soft ``RLIMIT_NOFILE`` is raised to the hard limit here (children inherit it) and in the gateway.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import ssl
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import procs as _procs
from .load import read_response

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME = struct.Struct(">I B B I")  # length (24 bits, packed with type), type, flags, stream id
PER_CLIENT = 2500  # connections per client process (its own fd limit; fewer threads per socket)
THREADS = 6  # connecting threads per client process (overlap the handshake round trips)


def memory(pid: int) -> dict:
    """VmRSS, RssAnon and RssFile of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(">I", sid) + payload


def h2_request_block(authority: str) -> bytes:
    """The HPACK block of ``GET /`` (literal fields without indexing: no encoder state needed)."""
    out = bytearray()
    for name, value in ((b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                        (b":authority", authority.encode())):
        out += b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value
    return bytes(out)


def _recv_exact(s, n: int, buf: bytearray) -> bytes:
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the gateway")
        buf += chunk
    data = bytes(buf[:n])
    del buf[:n]
    return data


def h2_exchange(s, sid: int, block: bytes, buf: bytearray, first: bool) -> None:
    """Send one GET on stream ``sid`` (after the preface when ``first``), read until its END_STREAM."""
    out = b""
    if first:
        out = H2_PREFACE + _frame(4, 0, 0)
    s.sendall(out + _frame(1, 0x5, sid, block))  # HEADERS, END_STREAM | END_HEADERS
    status_ok = False
    while True:
        head = _recv_exact(s, 9, buf)
        length = int.from_bytes(head[:3], "big")
        ftype, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = _recv_exact(s, length, buf)
        if ftype == 4 and not flags & 1:
            s.sendall(_frame(4, 1, 0))  # SETTINGS ACK
        elif ftype == 7:
            raise ConnectionError(f"GOAWAY from the gateway: {payload[4:8].hex()}")
        elif ftype == 3 and stream == sid:
            raise ConnectionError("stream reset by the gateway")
        elif stream == sid and ftype == 1:
            # :status 200 is index 8 of the static table (0x88) in the gateway's answer.
            status_ok = status_ok or payload[:1] == b"\x88"
        if stream == sid and ftype in (0, 1) and flags & 1:
            if not status_ok:
                raise ConnectionError("the response was not :status 200")
            return


def h1_exchange(s, req: bytes) -> None:
    """One keep-alive request; reads the whole response (Content-Length delimited)."""
    s.sendall(req)
    head = read_response(s)
    if head[9:10] != b"2":
        raise ConnectionError(f"status {head[9:12].decode(errors='replace')}")


def _client_ctx(alpn: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def _open_one(port: int, ctx, mode: str, used: bool, req: bytes, block: bytes):
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise
    try:
        if mode == "h2":
            if s.selected_alpn_protocol() != "h2":
                raise ConnectionError(f"ALPN {s.selected_alpn_protocol()!r}, not h2")
            h2_exchange(s, 1, block, bytearray(), first=True)
        elif used:
            h1_exchange(s, req)
    except BaseException:
        s.close()
        raise
    return s


def _client(port: int, count: int, mode: str, cpu, conn) -> None:
    """One client process: open ``count`` connections, report, hold them until told to close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    _procs.raise_nofile(count + 256)
    ctx = _client_ctx("h2" if mode == "h2" else "http/1.1")
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: txgate-bench\r\n\r\n".encode()
    block = h2_request_block(f"127.0.0.1:{port}")
    socks, errors = [], []
    lock = threading.Lock()
    half = count // 2

    def one(i):
        try:
            s = _open_one(port, ctx, mode, i < half, req, block)
        except Exception as e:  # a harness: count and report, keep going
            with lock:
                errors.append(f"{type(e).__name__}: {e}")
            return
        with lock:
            socks.append(s)

    t0 = time.monotonic()
    with ThreadPoolExecutor(THREADS) as ex:
        list(ex.map(one, range(count)))
    conn.send({"opened": len(socks), "errors": len(errors), "first_error": errors[0] if errors else None,
               "seconds": time.monotonic() - t0})
    conn.recv()  # "close"
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
    conn.send("closed")


def open_idle(pm: _procs.Procs, port: int, n: int, mode: str, cpu) -> tuple[list, dict]:
    """Open ``n`` idle connections from client processes; (the processes' pipes, a summary)."""
    mp = multiprocessing.get_context("fork")
    shares = [PER_CLIENT] * (n // PER_CLIENT) + ([n % PER_CLIENT] if n % PER_CLIENT else [])
    pipes = []
    for share in shares:
        parent, child = mp.Pipe()
        p = mp.Process(target=_client, args=(port, share, mode, cpu, child), daemon=True)
        pm.mp.append(p)
        p.start()
        pipes.append((p, parent))
    summary = {"opened": 0, "errors": 0, "first_error": None, "seconds": 0.0}
    for p, parent in pipes:
        if not parent.poll(600):
            raise RuntimeError("a client process did not finish opening its connections in 600 s")
        r = parent.recv()
        summary["opened"] += r["opened"]
        summary["errors"] += r["errors"]
        summary["first_error"] = summary["first_error"] or r["first_error"]
        summary["seconds"] = max(summary["seconds"], r["seconds"])
    return pipes, summary


def close_idle(pm: _procs.Procs, pipes) -> None:
    for _p, parent in pipes:
        try:
            parent.send("close")
        except OSError:
            pass
    for p, parent in pipes:
        try:
            if parent.poll(60):
                parent.recv()
        except (OSError, EOFError):
            pass
        p.join(10)
        if p.is_alive():
            p.terminate()
            p.join()
        if p in pm.mp:
            pm.mp.remove(p)


def probe(port: int, mode: str, requests: int = 100) -> dict:
    """A new connection (handshake + first request), then ``requests`` timed requests on it (ms)."""
    ctx = _client_ctx("h2" if mode == "h2" else "http/1.1")
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: txgate-bench\r\n\r\n".encode()
    block = h2_request_block(f"127.0.0.1:{port}")
    perf = time.perf_counter
    t0 = perf()
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = ctx.wrap_socket(raw)
    buf = bytearray()
    try:
        if mode == "h2":
            h2_exchange(s, 1, block, buf, first=True)
        else:
            h1_exchange(s, req)
        first = (perf() - t0) * 1000
        lat = []
        for i in range(requests):
            t = perf()
            if mode == "h2":
                h2_exchange(s, 3 + 2 * i, block, buf, first=False)
            else:
                h1_exchange(s, req)
            lat.append((perf() - t) * 1000)
    finally:
        s.close()
    lat.sort()
    return {"new_conn_ms": round(first, 3), "p50_ms": round(lat[len(lat) // 2], 3),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3), "max_ms": round(lat[-1], 3)}


def settle(pid: int, seconds: float = 1.0) -> dict:
    """RSS after the gateway had a moment to finish what the last connections started."""
    time.sleep(seconds)
    return memory(pid)


def run_phase(pm: _procs.Procs, gw, n: int, mode: str, cpu, log) -> dict:
    """One phase on a fresh gateway: RSS before, N idle connections, RSS after, a probe meanwhile."""
    probe(gw.port, mode, requests=20)  # warm the code paths the connections will use
    before = settle(gw.pid)
    cpu0 = gw.cpu()
    log(f"idle {mode}: opening {n:,} connections (gateway RSS {before['VmRSS'] / 1024:.1f} MiB)")
    pipes, summary = open_idle(pm, gw.port, n, mode, cpu)
    try:
        cpu_open = gw.cpu() - cpu0
        after = settle(gw.pid, 2.0)
        if not gw.alive():
            raise RuntimeError("the gateway died:\n" + gw.log_tail())
        pr = probe(gw.port, mode)
        after2 = memory(gw.pid)
    finally:
        close_idle(pm, pipes)
    opened = summary["opened"]
    delta = after["VmRSS"] - before["VmRSS"]
    per = delta / opened if opened else None
    row = {
        "mode": mode, "wanted": n, "opened": opened, "errors": summary["errors"],
        "first_error": summary["first_error"], "open_s": round(summary["seconds"], 2),
        "rss_before_mib": round(before["VmRSS"] / 1024, 1), "rss_after_mib": round(after["VmRSS"] / 1024, 1),
        "anon_after_mib": round(after["RssAnon"] / 1024, 1),
        "rss_after_probe_mib": round(after2["VmRSS"] / 1024, 1),
        "kib_per_conn": round(per, 2) if per is not None else None,
        "anon_kib_per_conn": round((after["RssAnon"] - before["RssAnon"]) / opened, 2) if opened else None,
        "mib_at_10k": round((before["VmRSS"] + per * 10000) / 1024, 1) if per is not None else None,
        "gw_cpu_us_per_open": round(cpu_open / opened * 1e6, 1) if opened else None,
        "probe": pr,
    }
    log(f"idle {mode}: {opened:,} open ({summary['errors']} errors), RSS {row['rss_after_mib']} MiB, "
        f"{row['kib_per_conn']} KiB/conn, probe p50 {pr['p50_ms']} ms")
    return row


def render(rows, meta: str) -> str:
    head = ["connections", "open", "errors", "RSS before MiB", "RSS after MiB", "KiB/conn", "anon KiB/conn",
            "OpenSSL KiB/conn", "MiB at 10k", "gw CPU us/open", "new conn ms", "req p50 ms", "req p99 ms", "req max ms"]
    title = {"h1": "TLS h1, idle (half used once)", "h2": "TLS h2, idle (one finished stream)"}
    lines = []
    for r in rows:
        p = r["probe"]
        engine = r.get("h2_engine", "auto")
        lines.append([title[r["mode"]] + ("" if engine == "auto" else f" [h2 {engine}]"), f"{r['opened']:,}", str(r["errors"]), f"{r['rss_before_mib']:.1f}",
                      f"{r['rss_after_mib']:.1f}", f"{r['kib_per_conn']:.2f}", f"{r['anon_kib_per_conn']:.2f}",
                      f"{r.get('openssl_kib_per_conn') or 0:.2f}", f"{r['mib_at_10k']:.1f}", f"{r['gw_cpu_us_per_open']:.0f}", f"{p['new_conn_ms']:.2f}",
                      f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}", f"{p['max_ms']:.2f}"])
    widths = [max(len(head[i]), *(len(l[i]) for l in lines)) for i in range(len(head))]

    def fmt(cols):
        return "| " + " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                                 for i, c in enumerate(cols)) + " |"

    out = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(l) for l in lines]
    out += ["", meta,
            "KiB/conn = (gateway VmRSS with the connections open - before) / connections (anon: RssAnon); "
            "MiB at 10k = before + 10,000 x KiB/conn; gw CPU us/open = gateway CPU while opening / "
            "connections (handshake, and the request of the used ones); OpenSSL KiB/conn = the C heap one idle "
            "server connection holds in OpenSSL with this certificate (in process, glibc mallinfo2, with a "
            "client like these: the gateway's floor per connection); new conn ms = a new connection's "
            "handshake + first request while they are open; req = 100 keep-alive requests on it (h2: "
            "streams one after another)."]
    for r in rows:
        if r["errors"]:
            out.append(f"{r['mode']}: {r['errors']} connections failed, first: {r['first_error']}")
    return "\n".join(out)


def run(args, pm: _procs.Procs, tmp: str, backend_port: int, gw_cpu, load_cpu, log) -> list[dict]:
    """Each mode of ``--idle-modes`` on its own fresh gateway; the rows of the table."""
    from . import gateway as _gateway

    n = args.idle
    _procs.raise_nofile(n + 1024)  # the client processes inherit it
    rows = []
    openssl_kib = None
    runs = [(mode, engine) for mode in args.idle_modes
            for engine in (getattr(args, "h2_engines", None) or ["auto"] if mode == "h2" else ["auto"])]
    for mode, engine in runs:
        # Idle connections must outlive the run (idle_timeout), and all of them fit (max_connections).
        gw = _gateway.start(pm, tmp, args.repo, backend_port, gw_cpu, name=f"gateway-idle-{mode}-{engine}",
                            listener={"idle_timeout": 3600, "max_connections": n + 1000}, nofile=n + 1024,
                            h2_engine=engine)
        log(f"gateway ({args.repo}): pid {gw.pid} on https://127.0.0.1:{gw.port}, CPU {gw_cpu}")
        try:
            row = run_phase(pm, gw, n, mode, load_cpu, log)
            if openssl_kib is None:
                from . import handshake as _handshake

                ck = _handshake.gateway_certificate(gw.state_dir)
                openssl_kib = _handshake.server_connection_kib(ck, min(n, 2000)) or 0.0
                log(f"OpenSSL's own memory per idle server connection, in process: {openssl_kib} KiB")
            row["openssl_kib_per_conn"] = openssl_kib
            row["h2_engine"] = engine
            rows.append(row)
        finally:
            pm.stop(gw.proc)
    return rows


def main(args, gw_cpu, load_cpu, log) -> int:
    """``python -m benchmarks --idle N``: backend, one gateway per mode, the table (or JSON)."""
    import json
    import shutil
    import sys
    import tempfile

    from . import backend as _backend

    tmp = tempfile.mkdtemp(prefix="txgate-bench-idle-")
    pm = _procs.Procs()
    rows, status = [], 0
    try:
        be = _backend.start(pm, tmp, args.backend, load_cpu)
        log(f"backend: {be.kind} on 127.0.0.1:{be.port}")
        rows = run(args, pm, tmp, be.port, gw_cpu, load_cpu, log)
    except KeyboardInterrupt:
        status = 130
        log("interrupted: stopping the gateway, the backend and the clients")
    except Exception as e:  # a harness: say what broke, still print what was measured
        status = 1
        log(f"error: {type(e).__name__}: {e}")
    finally:
        pm.stop_all()
        if args.keep_temp:
            log(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if rows:
        meta = (f"gateway from {args.repo}, pinned to CPU {gw_cpu}; clients on CPU {load_cpu}; "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        table = render(rows, meta)
        if args.json:
            sys.stderr.write(table + "\n")
            json.dump({"meta": meta, "idle": rows}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(table)
    return status
