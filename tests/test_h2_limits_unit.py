"""txgate.http.h2 limits on each engine, in memory: control-frame floods from a peer that does not read,
header_timeout over the preface and request heads, streams over SETTINGS_MAX_CONCURRENT_STREAMS."""
from __future__ import annotations

import struct

import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes

from test_h2_unit import Dispatcher, Pair, Silent
from txgate.http.exchange import Limits
from txgate.http.h2engine import available_engines
from txgate.http.h2head import HeadClock

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]
LONG = GET + [(b"x-pad-%d" % i, b"v" * 10) for i in range(20)]


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The frames in a server's output (type, flags, stream id, payload), the preface's SETTINGS included."""
    out = []
    while len(data) >= 9:
        n = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9:9 + n]))
        data = data[9 + n:]
    return out


def goaway_of(data: bytes):
    codes = [int.from_bytes(f[3][4:8], "big") for f in frames_of(data) if f[0] == 7]
    return codes[-1] if codes else None


@pytest.fixture(autouse=True, params=sorted(available_engines()))
def engine(request, monkeypatch):
    monkeypatch.setattr(Pair, "engine", available_engines()[request.param])
    return request.param


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def ping(n: int) -> bytes:
    return frame(6, 0, 0, n.to_bytes(8, "big"))


def goaway_code(p: Pair):
    p._client_receive(p.transport.value())
    p.transport.clear()
    return None if p.goaway is None else p.goaway.error_code


# -- (6) control-frame floods -------------------------------------------------------------------
def test_a_peer_that_does_not_read_is_not_read_and_its_acks_stay_queued():
    p = Pair()
    p.transport.clear()
    p.server.pauseProducing()  # the TLS transport's buffer is full: the client does not read
    assert p.transport.producerState == "paused"  # ... so we stop reading it
    p.server.dataReceived(b"".join(ping(i) for i in range(500)))
    assert p.transport.value() == b"" and not p.transport.disconnecting
    p.server.resumeProducing()
    assert p.transport.producerState == "producing"
    p.clock.advance(0)
    p._client_receive(p.transport.value())
    assert len([e for e in p.events if isinstance(e, h2.events.PingAckReceived)]) == 500


@pytest.mark.parametrize("flood", [
    lambda i: ping(i),
    lambda i: frame(4, 0, 0, b""),                                  # empty SETTINGS
    lambda i: frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64"),          # SETTINGS with a value
    lambda i: ping(i) if i % 2 else frame(4, 0, 0, b""),            # both
], ids=["ping", "settings", "settings-value", "mixed"])
def test_control_frame_flood_from_a_peer_that_does_not_read_gets_enhance_your_calm(flood):
    p = Pair()
    p.transport.clear()
    p.events.clear()
    p.server.pauseProducing()
    sent = 0
    for _ in range(5):
        p.server.dataReceived(b"".join(flood(sent + i) for i in range(600)))
        sent += 600
        if p.transport.disconnecting:
            break
    assert p.transport.disconnecting and sent == 1200
    assert goaway_code(p) == ErrorCodes.ENHANCE_YOUR_CALM
    # Bounded: at most what two reads asked for was queued, and nothing more is read.
    acks = [e for e in p.events if isinstance(e, (h2.events.PingAckReceived, h2.events.SettingsAcknowledged))]
    assert len(acks) <= 1200


def test_pings_from_a_reading_peer_are_answered_without_limit():
    p = Pair()
    for _ in range(3):
        for i in range(600):
            p.client.ping(i.to_bytes(8, "big"))
        p.pump()
    assert not p.transport.disconnecting and p.goaway is None
    assert len([e for e in p.events if isinstance(e, h2.events.PingAckReceived)]) == 1800


# -- (7) header_timeout -------------------------------------------------------------------------
def bare_server(header_timeout: float = 2):
    """A server that has sent its preface and heard nothing: (server, transport, clock)."""
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from txgate.http.exchange import ConnectionInfo
    from txgate.http.h2 import H2Connection

    clock = MemoryReactorClock()
    limits = Limits(header_timeout=header_timeout, idle_timeout=60)
    server = H2Connection(Dispatcher(), ConnectionInfo("t", "192.0.2.1", 1), limits, clock, engine=Pair.engine)
    t = StringTransport()
    server.makeConnection(t)
    return server, t, clock


def test_connection_that_never_sends_its_preface_is_closed_after_header_timeout():
    server, t, clock = bare_server()
    server.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n")  # part of the magic, then silence
    clock.advance(1.9)
    assert not t.disconnecting
    clock.advance(0.2)
    assert t.disconnecting


def test_preface_without_its_settings_frame_is_closed_after_header_timeout():
    server, t, clock = bare_server()
    server.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"\x00\x03\x00\x00")[:12])
    clock.advance(2.1)
    assert t.disconnecting


def test_headers_without_end_headers_and_slow_continuations_hit_header_timeout():
    p = Pair(Dispatcher(Silent), limits=Limits(header_timeout=2, idle_timeout=60))
    block = p.client.encoder.encode(LONG)
    assert len(block) > 10
    p.server.dataReceived(frame(1, 0x1, 1, block[:3]))  # HEADERS, END_STREAM, no END_HEADERS
    for i in range(3, len(block)):
        p.clock.advance(0.5)
        if p.transport.disconnecting:
            break
        p.server.dataReceived(frame(9, 0, 1, block[i:i + 1]))  # one tiny CONTINUATION
    assert p.transport.disconnecting
    assert p.clock.seconds() <= 2.5
    assert p.dispatcher.handlers == []


def test_a_headers_frame_trickled_byte_by_byte_hits_header_timeout():
    p = Pair(Dispatcher(Silent), limits=Limits(header_timeout=2, idle_timeout=60))
    data = frame(1, 0x5, 1, p.client.encoder.encode(GET))
    for i in range(len(data)):
        p.server.dataReceived(data[i:i + 1])
        p.clock.advance(0.4)
        if p.transport.disconnecting:
            break
    assert p.transport.disconnecting and p.clock.seconds() <= 2.5


def test_each_head_gets_its_own_header_timeout_and_complete_heads_never_time_out():
    p = Pair(Dispatcher(Silent), limits=Limits(header_timeout=2, idle_timeout=60))
    for sid in (1, 3, 5):
        data = frame(1, 0x5, sid, p.client.encoder.encode(GET))
        p.server.dataReceived(data[:10])
        p.clock.advance(1.5)
        p.server.dataReceived(data[10:])  # this head took 1.5 s: within the timeout
    p.clock.advance(10)
    assert not p.transport.disconnecting
    assert len(p.dispatcher.handlers) == 3


def test_head_clock_walks_frames_split_anywhere():
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
    head = frame(1, 0x1, 1, b"abc") + frame(9, 0, 1, b"de") + frame(9, 0x4, 1, b"f")
    stream = preface + head + frame(0, 0x1, 1, b"body") + frame(1, 0x5, 3, b"xyz")
    for cut in range(1, len(stream)):
        c = HeadClock()
        c.feed(stream[:cut])
        c.feed(stream[cut:])
        assert not c.pending and c.heads == 3
    c = HeadClock()
    c.feed(preface + head[:12])
    assert c.pending and c.heads == 2
    c = HeadClock()
    c.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 1, 0, b"") + frame(6, 0, 0, b"12345678"))
    assert c.pending  # a SETTINGS ACK (or anything else) first is no preface


# -- (8) streams over SETTINGS_MAX_CONCURRENT_STREAMS ------------------------------------------------
def open_raw(p: Pair, sid: int) -> None:
    # Raw frames: the h2 client would not open a stream over the server's limit.
    p.server.dataReceived(frame(1, 0x5, sid, p.client.encoder.encode(GET)))


def test_stream_over_max_concurrent_streams_is_refused_alone():
    p = Pair(Dispatcher(Silent), limits=Limits(max_concurrent_streams=2))
    p.transport.clear()
    for sid in (1, 3, 5):
        open_raw(p, sid)
    p.clock.advance(0)
    out = frames_of(p.transport.value())
    p.transport.clear()
    assert goaway_of(b"") is None and not [f for f in out if f[0] == 7] and not p.transport.disconnecting
    assert [(f[2], int.from_bytes(f[3], "big")) for f in out if f[0] == 3] == [(5, ErrorCodes.REFUSED_STREAM)]
    assert [h.head.path for h in p.dispatcher.handlers] == [b"/", b"/"]
    # The two streams in flight complete; then there is room again.
    for h in p.dispatcher.handlers:
        h.respond(b"ok")
    p.clock.advance(0)
    ended = {f[2] for f in frames_of(p.transport.value()) if f[0] == 0 and f[1] & 1}
    assert ended == {1, 3}
    open_raw(p, 7)
    assert len(p.dispatcher.handlers) == 3


def test_the_advertised_limit_is_the_configured_one():
    p = Pair(limits=Limits(max_concurrent_streams=7))
    changed = [e for e in p.events if isinstance(e, h2.events.RemoteSettingsChanged)][0]
    assert changed.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 7


def test_client_that_keeps_opening_refused_streams_gets_enhance_your_calm():
    p = Pair(Dispatcher(Silent), limits=Limits(max_concurrent_streams=1))
    p.transport.clear()
    sid = 1
    for _ in range(150):
        open_raw(p, sid)
        sid += 2
        if p.transport.disconnecting:
            break
    assert p.transport.disconnecting
    assert goaway_of(p.transport.value()) == ErrorCodes.ENHANCE_YOUR_CALM
    assert sid <= 1 + 2 * 103
