"""The native engine's memory per idle session (docs/benchmarks.md, idle memory): the glue frees its own
buffers between calls, keeps a header block that spans two reads, gives nghttp2's 16 KiB frame buffer a
mapping of its own, and writes DATA frames itself (NO_COPY) with the payload bytes exactly in place."""
from __future__ import annotations

import pytest

from h2engine_driver import (
    CONT, DATA, ENGINE_NAMES, HEADERS, PREFACE, SETTINGS, Driver, client, frame, parse_frames, request_headers,
)

pytestmark = pytest.mark.skipif("native" not in ENGINE_NAMES, reason="txgate._nghttp2 not built")


def _memory(engine) -> tuple[int, int]:
    """(bytes in the glue's own buffers, bytes mapped for nghttp2's big blocks)."""
    from txgate._nghttp2 import ffi, lib  # type: ignore[import-not-found]

    glue, mapped = ffi.new("size_t *"), ffi.new("size_t *")
    lib.txg_h2_memory(engine._h, glue, mapped)
    return glue[0], mapped[0]


def _block(headers) -> bytes:
    """A literal-without-indexing HPACK block (names and values under 128 bytes)."""
    out = bytearray()
    for name, value in headers:
        out += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return bytes(out)


def test_nghttp2_frame_buffer_has_its_own_mapping():
    d = Driver("native")
    glue, mapped = _memory(d.engine)
    assert mapped >= 16384 + 10 and mapped % 4096 == 0  # 9-byte header + pad length + 16 KiB payload


def test_a_big_header_value_is_decoded_in_a_mapping_given_back_afterwards():
    # nghttp2 allocates a 20,000-byte value's buffer as soon as it reads the length: a second mapping
    # while the block is decoded, unmapped once the request is handed over.
    d = Driver("native", respond=False)
    framebuf = _memory(d.engine)[1]
    hdrs = request_headers(b"/big")
    block = _block(hdrs) + b"\x00\x01x\x7f\xa1\x9b\x01" + b"v" * 20000  # x: 20,000 bytes, no indexing
    d.feed(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x1, 1, block[:16000]))  # END_STREAM
    assert _memory(d.engine)[1] >= framebuf + 20000
    d.feed(frame(CONT, 0x4, 1, block[16000:]))
    assert d.requests[1] == hdrs + [(b"x", b"v" * 20000)]
    assert _memory(d.engine)[1] == framebuf


def test_an_idle_session_holds_no_glue_buffer_after_a_request():
    d = Driver("native", body=b"r" * 40000)  # the output once held ~40 KiB of DATA frames
    c = client()
    c.send_headers(1, request_headers(extra=[(b"x-pad", b"v" * 100)]), end_stream=True)
    d.feed(c.data_to_send())
    assert d.server_view()["responses"][1] == {"status": b"200", "body": b"r" * 40000, "ended": True}
    assert _memory(d.engine)[0] == 0


def test_output_not_yet_taken_is_kept():
    d = Driver("native", respond=False)
    c = client()
    c.send_headers(1, request_headers(), end_stream=True)
    d.engine.receive(c.data_to_send())  # SETTINGS ACK serialized into the glue, not taken yet
    assert _memory(d.engine)[0] > 0
    assert [k for k, f, sid, p in parse_frames(d.engine.data_to_send())] == [SETTINGS]
    assert _memory(d.engine)[0] == 0


def test_a_header_block_split_across_reads_keeps_its_buffer():
    d = Driver("native", respond=False)
    hdrs = request_headers(b"/split", extra=[(b"x-long", b"y" * 120)])
    block = _block(hdrs)
    cut = len(block) - 60  # the first frame ends inside x-long's value
    first = PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x1, 1, block[:cut])  # END_STREAM, no END_HEADERS
    d.feed(first)
    assert 1 not in d.requests
    assert _memory(d.engine)[0] > 0  # the fields decoded so far wait for the CONTINUATION
    d.feed(frame(CONT, 0x4, 1, block[cut:]))
    assert d.requests[1] == hdrs
    assert _memory(d.engine)[0] == 0


def test_data_frames_written_by_the_glue_carry_each_stream_s_bytes_in_order():
    # Many small sends on two streams, served one frame at a time as the windows open: each DATA frame
    # the glue writes itself must hold exactly the next bytes of its stream, whatever sizes they came in.
    d = Driver("native", respond=False)
    c = client()
    c.update_settings({4: 777})  # SETTINGS_INITIAL_WINDOW_SIZE: frames end at window boundaries
    c.send_headers(1, request_headers(), end_stream=True)
    c.send_headers(3, request_headers(), end_stream=True)
    d.feed(c.data_to_send())
    c.receive_data(bytes(d.out))
    d.out.clear()
    bodies = {1: bytes(range(256)) * 9, 3: bytes(reversed(range(256))) * 7}
    eng = d.engine
    for sid in bodies:
        assert eng.send_headers(sid, [(b":status", b"200")])
    sent = {1: 0, 3: 0}
    got = {1: bytearray(), 3: bytearray()}
    for _ in range(50):
        for sid, body in bodies.items():
            while sent[sid] < len(body) and eng.send_window(sid):
                n = min(eng.send_window(sid), 100, len(body) - sent[sid])
                eng.send_data(sid, body[sent[sid]:sent[sid] + n], end_stream=sent[sid] + n == len(body))
                sent[sid] += n
        out = eng.data_to_send()
        frames = parse_frames(out)
        assert sum(9 + len(p) for *_, p in frames) == len(out)  # whole frames, nothing else
        c.receive_data(out)
        for kind, flags, sid, payload in frames:
            if kind == DATA:
                assert 0 < len(payload) <= 777
                got[sid] += payload
                assert bool(flags & 1) == (len(got[sid]) == len(bodies[sid]))
                c.acknowledge_received_data(len(payload), sid)
        if all(len(got[s]) == len(b) for s, b in bodies.items()):
            break
        eng.receive(c.data_to_send())
    assert {s: bytes(b) for s, b in got.items()} == bodies


def test_the_memory_harness_sees_the_frame_buffer_off_the_heap():
    # benchmarks.h2engine_mem: an idle native engine held ~28 KiB of C heap with nghttp2's 16 KiB frame
    # buffer on it; with the buffer in its own mapping and the glue's buffers freed, ~10 KiB.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.h2engine_mem import measure
    from txgate.http.h2engine.native import NativeEngine

    rows = dict((step, heap) for step, heap, rss in measure(NativeEngine, 200, b"ok", churn=True))
    assert list(rows) == ["engine made", "preface + GET received, SETTINGS out", "response sent",
                          "SETTINGS ACK received, idle", "total"]
    assert 4096 < rows["total"] < 16384
