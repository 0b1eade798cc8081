"""Memory of one HTTP/2 engine per idle connection, in process: where the bytes go, step by step.

python -m benchmarks.h2engine_mem [--engines native,python] [--connections N] [--body BYTES] [--churn]

For each engine, N engines are made and each serves one request the way the idle benchmark's clients
do (preface + SETTINGS + one GET, a 200 with a small body, the client's SETTINGS ACK), one step at a
time over all N; after each step the process's C heap in use (glibc ``mallinfo2().uordblks``) and its
RSS (``VmRSS``) are read, and the differences are printed per connection. C heap counts nghttp2's and
the glue's allocations (and cffi's); RSS also counts Python objects and says which pages were touched.

``--churn`` first frees ~25 KiB of written heap per connection between small blocks that are kept
(as a TLS handshake does in the gateway, before the engine is made): the engine's heap blocks then land
on pages that are already resident, as in a long-running gateway, where allocated bytes cost RSS in full
and only memory in pages never written (such as a separate mapping) stays free. Without it, a fresh heap
makes untouched parts of large blocks look free. Figures: docs/benchmarks.md (memory per idle connection).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import struct

from txgate.http.h2engine import available_engines


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

CHURN_FREED = (17000, 5000, 2000, 1000)  # written, then freed: ~25 KiB per connection
CHURN_KEPT = 1500  # written and kept, so the freed blocks stay inside the heap


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _heap() -> int:
    return _libc.mallinfo2().uordblks


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", sid) + payload


def _client_bytes() -> bytes:
    block = b""
    for name, value in ((b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                        (b":authority", b"localhost")):
        block += b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0) + _frame(1, 5, 1, block)


def measure(cls, n: int, body: bytes, churn: bool) -> list[tuple[str, float, float]]:
    """(step, C heap bytes per connection, RSS bytes per connection) for each step."""
    client = _client_bytes()
    response = [(b":status", b"200"), (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()), (b"server", b"txgate")]
    rows: list[tuple[str, float, float]] = []
    kept: list[int] = []
    gc.collect()
    last = [_heap(), _rss()]

    def mark(step: str, extra_heap: int = 0) -> None:
        gc.collect()
        heap, rss = _heap(), _rss()
        rows.append((step, (heap - last[0] - extra_heap) / n, (rss - last[1] - extra_heap) / n))
        last[:] = [heap, rss]

    engines = []
    for _ in range(n):
        if churn:
            blocks = [_libc.malloc(size) for size in CHURN_FREED]
            for b, size in zip(blocks, CHURN_FREED):
                _libc.memset(b, 1, size)
            kept.append(_libc.malloc(CHURN_KEPT))
            _libc.memset(kept[-1], 1, CHURN_KEPT)
            for b in blocks:
                _libc.free(b)
        engines.append(cls())
    mark("engine made", CHURN_KEPT * n if churn else 0)
    for e in engines:
        e.initiate()
        e.receive(client)
        e.data_to_send()
    mark("preface + GET received, SETTINGS out")
    for e in engines:
        e.send_headers(1, response)
        e.send_data(1, body, end_stream=True)
        e.data_to_send()
    mark("response sent")
    for e in engines:
        e.receive(_frame(4, 1, 0))
        e.data_to_send()
        e.idle()
    mark("SETTINGS ACK received, idle")
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    for e in engines:
        e.close()
    for b in kept:
        _libc.free(b)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.h2engine_mem", description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="native,python")
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--body", type=int, default=6, help="response body bytes (default 6, as the idle benchmark's)")
    p.add_argument("--churn", action="store_true", help="engines made on a used heap (see the docstring)")
    args = p.parse_args(argv)
    engines = available_engines()
    for name in args.engines.split(","):
        if name not in engines:
            print(f"{name}: not available")
            continue
        print(f"{name} engine, {args.connections} connections, body {args.body} B"
              f"{', used heap' if args.churn else ''}: bytes per connection")
        for step, heap, rss in measure(engines[name], args.connections, b"b" * args.body, args.churn):
            print(f"  {step:40} C heap {heap:8.0f}   RSS {rss:8.0f}")


if __name__ == "__main__":
    main()
