"""Regenerate the seed corpus of tests/fuzz/fuzz_h2.c: client sessions written by hyper-h2 (requests with
and without bodies, trailers, resets, pings, settings) plus a few hostile frame sequences.

Run from the repository root: python tests/fuzz/make_h2_corpus.py. The files are committed.
"""
from __future__ import annotations

from pathlib import Path

import h2.config
import h2.connection

OUT = Path(__file__).resolve().parent / "corpus_h2"


def session(streams: int, body: bytes, trailers: bool = False, reset: bool = False) -> bytes:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    for i in range(streams):
        sid = 1 + 2 * i
        hdrs = [(b":method", b"POST" if body else b"GET"), (b":scheme", b"https"), (b":authority", b"f.test"),
                (b":path", b"/" + bytes([97 + i])), (b"content-length", str(len(body)).encode()), (b"cookie", b"a=b")]
        c.send_headers(sid, hdrs, end_stream=not body)
        if body:
            c.send_data(sid, body, end_stream=not trailers, pad_length=3 if i % 2 else None)
            if trailers:
                c.send_headers(sid, [(b"x-t", b"1")], end_stream=True)
        if reset:
            c.reset_stream(sid, 8)
    c.ping(b"pingpong")
    c.update_settings({4: 100})
    return c.data_to_send()


def main() -> None:
    OUT.mkdir(exist_ok=True)
    seeds = {
        "get-1": session(1, b""),
        "get-5": session(5, b""),
        "post-2": session(2, b"hello world" * 20),
        "post-trailers": session(2, b"x" * 50, trailers=True),
        "reset": session(3, b"abc", reset=True),
        "bad-cl": session(1, b"abc").replace(b"content-length", b"content-lengtH"),
        # A literal value declaring 20,000 bytes, cut short: nghttp2 allocates its buffer (a big block,
        # a mapping or the heap in the glue's allocator) as soon as it reads the length.
        "big-literal": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        + b"\x00\x00\x6a\x01\x05\x00\x00\x00\x01\x82\x87\x84" + b"\x00\x01x\x7f\xa1\x9b\x01" + b"v" * 96,
        "continuation": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        + b"\x00\x00\x01\x01\x00\x00\x00\x00\x01\x82" + b"\x00\x00\x01\x09\x00\x00\x00\x00\x01\x87" * 3,
    }
    for name, data in seeds.items():
        (OUT / name).write_bytes(data)


if __name__ == "__main__":
    main()
