"""Micro-benchmark: µs of HTTP/2 engine work per request, native (libnghttp2) vs python (hyper-h2).

python -m benchmarks.h2engine_bench [--requests N] [--streams S] [--rounds R]

The client bytes are made once with hyper-h2: one connection, S concurrent GET streams per batch
(browser-like headers), N requests in all. Each engine then serves them in memory exactly as the
gateway's protocol will: receive() the batch, answer each request (5 response headers + a small
body) with send_headers/send_data, data_to_send(); the client's side is not timed. Prints µs per
request (best of R rounds) and the ratio.
"""
from __future__ import annotations

import argparse
import time

import h2.config
import h2.connection

from txgate.http.h2engine import available_engines, describe_engine
from txgate.http.h2engine.base import DataReceived, RequestReceived, StreamEnded

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"api.example.test"),
           (b":path", b"/v1/items/42?x=1"), (b"user-agent", b"h2load nghttp2/1.52.0"),
           (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/json"), (b"content-length", b"17"),
            (b"server", b"txgate"), (b"date", b"Sun, 01 Nov 2026 00:00:00 GMT")]
BODY = b'{"id":42,"ok":1}\n'


def client_batches(requests: int, streams: int) -> list[bytes]:
    """The client's bytes, one chunk per batch of ``streams`` requests (stream ids in order)."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    # The client never reads the responses here: open its connection window once, all the way.
    c.increment_flow_control_window((1 << 31) - 1 - 65535)
    batches = []
    sid = 1
    for start in range(0, requests, streams):
        for _ in range(min(streams, requests - start)):
            c.send_headers(sid, REQUEST, end_stream=True)
            sid += 2
        batches.append(c.data_to_send())
    return batches


def serve(engine_cls, batches: list[bytes]) -> float:
    """Seconds for one engine to serve every batch."""
    from txgate.http.h2engine.base import EngineSettings

    start = time.perf_counter()
    eng = engine_cls(EngineSettings(max_concurrent_streams=1000))
    eng.initiate()
    eng.data_to_send()
    send_headers, send_data, receive, data_to_send = eng.send_headers, eng.send_data, eng.receive, eng.data_to_send
    for chunk in batches:
        for ev in receive(chunk):
            if ev.__class__ is StreamEnded:
                sid = ev.stream_id
                send_headers(sid, RESPONSE)
                send_data(sid, BODY, True)
            elif ev.__class__ is DataReceived:
                eng.acknowledge(ev.stream_id, ev.flow_len)
            elif ev.__class__ is RequestReceived:
                pass
        data_to_send()
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.h2engine_bench", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--streams", type=int, default=10, help="concurrent streams per batch (default 10)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    batches = client_batches(args.requests, args.streams)
    engines = available_engines()
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, cls in engines.items():
            t = serve(cls, batches)
            best[name] = min(best.get(name, t), t)
    for name in engines:
        us = best[name] / args.requests * 1e6
        print(f"{describe_engine(name):32} {us:8.2f} µs/request  ({args.requests / best[name]:,.0f} req/s)")
    if "native" in best:
        print(f"native is {best['python'] / best['native']:.1f}x faster per request")
    else:
        print("native engine not built (python3 native/h2_build.py)")


if __name__ == "__main__":
    main()
