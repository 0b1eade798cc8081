"""The HTTP/2 engines (hyper-h2 and libnghttp2) behind one interface: the same scenarios on both."""
from __future__ import annotations

import pytest

from h2engine_driver import (
    CONT, DATA, ENGINE_NAMES, GOAWAY, HEADERS, PING, PREFACE, RST, SETTINGS, WINDOW, Driver, client, frame,
    parse_frames, request_headers,
)
from txgate.http import h2engine
from txgate.http.h2engine.base import (
    ENHANCE_YOUR_CALM, INTERNAL_ERROR, NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL, EngineSettings,
    GoAwayReceived, ProtocolFailure, RequestReceived, StreamReset, WindowOpened,
)

pytestmark = pytest.mark.parametrize("name", ENGINE_NAMES)


def _settings_of(out: bytes) -> dict:
    for kind, flags, sid, payload in parse_frames(out):
        if kind == SETTINGS and not flags & 1:
            return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
                    for i in range(0, len(payload), 6)}
    raise AssertionError("no SETTINGS frame")


def test_preface_advertises_limits_and_opens_the_connection_window(name):
    d = Driver(name, EngineSettings(max_concurrent_streams=7, max_header_list_size=5000,
                                    initial_window_size=1 << 20, connection_window_size=16 << 20))
    s = _settings_of(bytes(d.out))
    assert (s[3], s[6], s[4]) == (7, 5000, 1 << 20)
    ups = [p for k, f, sid, p in parse_frames(bytes(d.out)) if k == WINDOW and sid == 0]
    assert sum(int.from_bytes(p, "big") for p in ups) == (16 << 20) - 65535


def test_request_headers_arrive_raw_and_in_order(name):
    d = Driver(name)
    c = client()
    hdrs = request_headers(b"/p?q=1", extra=[(b"X-Upper", b"v"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
                                             (b"connection", b"close")])
    c.send_headers(1, hdrs, end_stream=True)
    d.feed(c.data_to_send())
    assert d.requests == {1: hdrs}
    assert d.ended == [1]
    view = d.server_view()
    assert view["responses"][1] == {"status": b"200", "body": b"ok", "ended": True}


def test_request_body_arrives_in_pieces_with_flow_lengths(name):
    d = Driver(name)
    c = client()
    c.send_headers(1, request_headers(method=b"POST"))
    c.send_data(1, b"abc", pad_length=10)
    c.send_data(1, b"defg", end_stream=True)
    events = d.feed(c.data_to_send())
    datas = [e for e in events if type(e).__name__ == "DataReceived"]
    assert b"".join(e.data for e in datas) == b"abcdefg"
    assert all(e.flow_len >= len(e.data) for e in datas)
    assert d.ended == [1]


def test_unacknowledged_body_closes_the_stream_window_only(name, monkeypatch):
    d = Driver(name, EngineSettings(initial_window_size=65535, connection_window_size=1 << 20))
    monkeypatch.setattr(type(d.engine), "acknowledge", lambda self, sid, n: None)  # a paused reader
    c = client()
    c.receive_data(bytes(d.out))
    d.out.clear()
    c.send_headers(1, request_headers(method=b"POST"))
    c.send_data(1, b"x" * 16384)
    c.send_data(1, b"x" * 16384)
    d.feed(c.data_to_send())
    c.receive_data(bytes(d.out))
    assert c.local_flow_control_window(1) == 65535 - 32768
    c.send_headers(3, request_headers(method=b"POST"))
    # The connection window was credited on arrival: another stream can send a full stream window.
    assert c.local_flow_control_window(3) == 65535


def test_acknowledge_reopens_the_stream_window(name):
    d = Driver(name, EngineSettings(initial_window_size=65535))
    c = client()
    c.receive_data(bytes(d.out))
    d.out.clear()
    c.send_headers(1, request_headers(method=b"POST"))
    for _ in range(3):
        c.send_data(1, b"y" * 16384)
    d.feed(c.data_to_send())
    c.receive_data(bytes(d.out))
    assert c.local_flow_control_window(1) > 65535 - 3 * 16384


def test_send_window_blocks_then_window_update_opens_it(name):
    d = Driver(name, respond=False)
    c = client()
    c.update_settings({4: 100})  # SETTINGS_INITIAL_WINDOW_SIZE
    c.send_headers(1, request_headers(), end_stream=True)
    d.feed(c.data_to_send())
    eng = d.engine
    assert eng.send_headers(1, [(b":status", b"200")])
    assert eng.send_window(1) == 100
    with pytest.raises(ValueError):
        eng.send_data(1, b"z" * 101)
    assert eng.send_data(1, b"z" * 100)
    assert eng.send_window(1) == 0
    d.flush()
    c.receive_data(bytes(d.out))
    c.increment_flow_control_window(50, stream_id=1)
    events = d.feed(c.data_to_send())
    assert WindowOpened(1) in events
    assert eng.send_window(1) == 50
    assert eng.send_data(1, b"w" * 50, end_stream=True)
    d.flush()
    assert d.server_view()["responses"][1] == {"status": b"200", "body": b"z" * 100 + b"w" * 50, "ended": True}


def test_large_body_is_split_into_frames_of_the_client_max_size(name):
    d = Driver(name, body=b"b" * 40000)
    c = client()
    c.send_headers(1, request_headers(), end_stream=True)
    d.feed(c.data_to_send())
    sizes = [len(p) for k, f, sid, p in parse_frames(bytes(d.out)) if k == DATA]
    assert sum(sizes) == 40000 and max(sizes) <= 16384
    assert d.server_view()["responses"][1]["ended"]


def test_data_frames_end_at_the_frame_size_and_the_window(name):
    # 32,882 bytes with a stream window of 20000: frames of the client's max size, the window's
    # remainder, then the rest once WINDOW_UPDATE arrives; the bytes in order, END_STREAM on the last.
    body = bytes(range(251)) * 131 + b"!"
    d = Driver(name, body=body)
    c = client()
    c.update_settings({4: 20000})
    c.send_headers(1, request_headers(), end_stream=True)
    d.feed(c.data_to_send())
    first = [(f, p) for k, f, sid, p in parse_frames(bytes(d.out)) if k == DATA]
    assert [len(p) for f, p in first] == [16384, 20000 - 16384] and not any(f & 1 for f, p in first)
    c.receive_data(bytes(d.out))
    d.out.clear()
    c.increment_flow_control_window(len(body), stream_id=1)
    d.feed(c.data_to_send())
    rest = [(f, p) for k, f, sid, p in parse_frames(bytes(d.out)) if k == DATA]
    assert [len(p) for f, p in rest] == [len(body) - 20000] and rest[-1][0] & 1
    assert b"".join(p for f, p in first + rest) == body


def test_trailers_end_the_stream(name):
    d = Driver(name, respond=False)
    c = client()
    c.send_headers(1, request_headers(), end_stream=True)
    d.feed(c.data_to_send())
    eng = d.engine
    eng.send_headers(1, [(b":status", b"200")])
    eng.send_data(1, b"body")
    assert eng.send_trailers(1, [(b"grpc-status", b"0")])
    d.flush()
    frames = [(k, f) for k, f, sid, p in parse_frames(bytes(d.out)) if sid == 1]
    assert frames[-1] == (HEADERS, 0x5)  # END_STREAM | END_HEADERS
    assert (DATA, 0) in frames


def test_server_reset_sends_rst_and_reports_nothing(name):
    d = Driver(name, respond=False)
    c = client()
    c.send_headers(1, request_headers(method=b"POST"))
    d.feed(c.data_to_send())
    d.engine.reset(1, INTERNAL_ERROR)
    d.flush()
    assert d.server_view()["rsts"] == [(1, INTERNAL_ERROR)]
    c.send_data(1, b"late")
    events = d.feed(c.data_to_send())
    assert not [e for e in events if isinstance(e, StreamReset)]
    assert not d.engine.send_headers(1, [(b":status", b"200")])


def test_client_reset_is_reported_as_remote(name):
    d = Driver(name, respond=False)
    c = client()
    c.send_headers(1, request_headers(method=b"POST"))
    c.reset_stream(1, CANCEL)
    events = d.feed(c.data_to_send())
    assert StreamReset(1, CANCEL, True) in events
    assert not d.engine.send_headers(1, [(b":status", b"200")])
    assert d.engine.send_window(1) == 0


def test_garbage_gets_goaway_protocol_error(name):
    d = Driver(name)
    d.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert d.failure == PROTOCOL_ERROR
    assert d.server_view()["goaways"] == [PROTOCOL_ERROR]
    assert d.engine.receive(PREFACE) == []


@pytest.mark.parametrize("cl, body", [(b"3", b"toolong"), (b"10", b"short"), (b"x1", b"")])
def test_content_length_disagreeing_with_data_is_a_connection_error(name, cl, body):
    d = Driver(name)
    c = client()
    c.send_headers(1, request_headers(method=b"POST", extra=[(b"content-length", cl)]))
    c.send_data(1, body, end_stream=True)
    events = d.feed(c.data_to_send())
    assert events == [ProtocolFailure(PROTOCOL_ERROR, events[0].reason)]
    assert d.server_view()["goaways"] == [PROTOCOL_ERROR]


def test_header_list_over_the_advertised_size_still_arrives(name):
    d = Driver(name, EngineSettings(max_header_list_size=1000))
    c = client()
    c.send_headers(1, request_headers(extra=[(b"x-big", b"v" * 1500)]), end_stream=True)
    d.feed(c.data_to_send())
    assert 1 in d.requests and d.failure is None


def test_header_list_over_the_decode_limit_gets_enhance_your_calm(name):
    d = Driver(name, EngineSettings(max_header_list_size=1000))
    c = client()
    c.send_headers(1, request_headers(extra=[(b"x-big", b"v" * 6000)]), end_stream=True)
    d.feed(c.data_to_send())
    assert d.failure == ENHANCE_YOUR_CALM and not d.requests
    assert d.server_view()["goaways"] == [ENHANCE_YOUR_CALM]


def test_continuation_flood_fails_the_connection(name):
    import hpack

    d = Driver(name)
    block = hpack.Encoder().encode(request_headers())
    data = PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0, 1, block)
    data += frame(CONT, 0, 1, b"") * 100
    d.feed(data)
    assert d.failure == PROTOCOL_ERROR and not d.requests


def test_streams_over_the_concurrency_limit_are_not_served(name):
    import hpack

    d = Driver(name, EngineSettings(max_concurrent_streams=2), respond=False)
    enc = hpack.Encoder()
    data = PREFACE + frame(SETTINGS, 0, 0) + frame(SETTINGS, 1, 0)  # the client ACKs ours
    for sid in (1, 3, 5):
        data += frame(HEADERS, 4, sid, enc.encode(request_headers()))
    d.feed(data)
    assert set(d.requests) <= {1, 3}
    assert d.failure == PROTOCOL_ERROR or (5, REFUSED_STREAM) in d.server_view()["rsts"]


def test_graceful_goaway_lets_open_streams_finish_and_refuses_new_ones(name):
    d = Driver(name, respond=False)
    c = client()
    c.send_headers(1, request_headers(), end_stream=True)
    d.feed(c.data_to_send())
    d.engine.goaway()
    d.flush()
    assert d.server_view()["goaways"] == [NO_ERROR]
    c.send_headers(3, request_headers(), end_stream=True)
    events = d.feed(c.data_to_send())
    assert not [e for e in events if isinstance(e, RequestReceived)]
    assert (3, REFUSED_STREAM) in d.server_view()["rsts"]
    d.answer(1)
    d.flush()
    assert d.server_view()["responses"][1]["ended"]


def test_goaway_with_an_error_code_finishes_the_engine(name):
    d = Driver(name)
    d.engine.goaway(ENHANCE_YOUR_CALM)
    d.flush()
    assert d.server_view()["goaways"] == [ENHANCE_YOUR_CALM]
    c = client()
    c.send_headers(1, request_headers(), end_stream=True)
    assert d.engine.receive(c.data_to_send()) == []


def test_client_goaway_is_reported(name):
    d = Driver(name)
    c = client()
    c.close_connection(error_code=0)
    events = d.feed(c.data_to_send())
    assert GoAwayReceived(0, 0) in events


def test_ping_and_settings_are_answered(name):
    d = Driver(name)
    c = client()
    c.ping(b"12345678")
    d.feed(c.data_to_send())
    frames = parse_frames(bytes(d.out))
    assert (PING, 1, 0, b"12345678") in frames
    assert any(k == SETTINGS and f & 1 for k, f, sid, p in frames)


def test_send_on_an_unknown_stream_is_refused(name):
    d = Driver(name)
    assert not d.engine.send_headers(9, [(b":status", b"200")])
    assert not d.engine.send_data(9, b"x")
    assert d.engine.send_window(9) == 0


def test_select_engine_names_and_choices(name):
    assert h2engine.select_engine(name).name == name
    assert h2engine.describe_engine(name).startswith(name)
    with pytest.raises(ValueError):
        h2engine.select_engine("fast")
