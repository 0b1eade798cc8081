"""One write per response where possible: the TLS layer's writes during a read, and the upstream
request's head with the body read meanwhile (in memory, no sockets)."""
from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.task import Clock

from test_serverconn import App, _pair, server_tls  # noqa: F401 - the fixture
from txgate.tls.serverconn import hold_writes, release_writes
from txgate.upstream.proxy import ProxyHandler


def _count_writes(sp) -> list[bytes]:
    """Record each write the TLS protocol makes on its TCP transport (still delivered)."""
    writes: list[bytes] = []
    transport = sp.transport
    real = transport.write

    def write(data):
        writes.append(data)
        real(data)

    transport.write = write
    return writes


class _Responder(App):
    """Answers each read with a head, a body and a tail in separate writes (as h1 does for chunked)."""

    body = b"hello"

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        self.transport.write(b"%x\r\n%b\r\n" % (len(self.body), self.body))
        self.transport.write(b"0\r\n\r\n")
        if data == b"last":
            self.transport.loseConnection()


def _with_responder(sp, app, body=b"hello"):
    responder = _Responder()
    responder.body = body
    responder.makeConnection(sp)
    sp.sink = responder
    return responder


def test_writes_made_while_a_read_is_delivered_go_out_in_one_tcp_write(server_tls):  # noqa: F811
    sp, app, cp, client, pump = _pair(server_tls)
    _with_responder(sp, app)
    writes = _count_writes(sp)
    cp.write(b"GET")
    pump.flush()
    assert len(writes) == 1
    assert client.received == (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def test_writes_outside_a_read_are_sent_at_once(server_tls):  # noqa: F811
    sp, app, cp, client, pump = _pair(server_tls)
    writes = _count_writes(sp)
    sp.write(b"one")
    sp.write(b"two")
    assert len(writes) == 2  # e.g. an upstream's response: no read of this connection to wait for
    pump.flush()
    assert client.received == b"onetwo"


def test_writes_during_a_hold_go_out_in_one_tcp_write_per_connection_at_its_release(server_tls):  # noqa: F811
    # As an upstream's read does: its response's head, chunks and end, written to the client's side.
    a, _, _, client_a, pump_a = _pair(server_tls)
    b, _, _, client_b, pump_b = _pair(server_tls)
    writes_a, writes_b = _count_writes(a), _count_writes(b)
    started = hold_writes()
    assert started and not hold_writes()  # a nested hold leaves the release to the outer one
    a.write(b"head ")
    b.write(b"other")
    a.write(b"body")
    release_writes(False)
    assert writes_a == [] and writes_b == []
    release_writes(started)
    assert len(writes_a) == 1 and len(writes_b) == 1
    pump_a.flush()
    pump_b.flush()
    assert client_a.received == b"head body" and client_b.received == b"other"
    a.write(b"!")
    assert len(writes_a) == 2  # no hold any more: at once


def test_a_close_during_a_hold_sends_what_was_held_first(server_tls):  # noqa: F811
    sp, app, cp, client, pump = _pair(server_tls)
    started = hold_writes()
    try:
        sp.write(b"last words")
        sp.loseConnection()
    finally:
        release_writes(started)
    pump.flush()
    assert client.received == b"last words" and client.lost is not None


def test_a_large_body_is_still_streamed_a_record_at_a_time(server_tls):  # noqa: F811
    sp, app, cp, client, pump = _pair(server_tls)
    body = b"x" * 100_000
    _with_responder(sp, app, body)
    writes = _count_writes(sp)
    cp.write(b"GET")
    pump.flush()
    assert len(writes) >= 100_000 // (1 << 14)  # the TCP buffer (and its producer) sees it as it comes
    assert client.received.endswith(b"\r\n" + body + b"\r\n0\r\n\r\n")


def test_close_in_the_same_read_sends_the_response_then_close_notify(server_tls):  # noqa: F811
    sp, app, cp, client, pump = _pair(server_tls)
    _with_responder(sp, app)
    cp.write(b"last")
    pump.flush()
    assert client.received.endswith(b"0\r\n\r\n")
    assert client.lost is not None and sp.getHandle() is None


# -- upstream: head and the body read meanwhile ------------------------------------------------------
class _Conn:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.ended = False

    def start(self, exchange, head: bytes, head_only: bool, request_done: bool = False) -> None:
        self.writes.append(head)
        self.ended = request_done

    def write_body(self, data: bytes) -> None:
        self.writes.append(data)

    def end_body(self, tail: bytes) -> None:
        if tail:
            self.writes.append(tail)
        self.ended = True


def _handler(content_length):
    upstream = SimpleNamespace(api="a", max_body_bytes=0)
    stream = SimpleNamespace(resumed=0)
    stream.resume_reading = lambda: setattr(stream, "resumed", stream.resumed + 1)
    head = SimpleNamespace(method=b"POST", has_body=True, content_length=content_length)
    h = ProxyHandler(upstream, stream, head, b"/x", b"content-length: 6\r\n\r\n", None, Clock())
    h.pool = SimpleNamespace(host_value=b"up", base_path=b"")
    return h


def test_request_head_and_a_body_read_before_the_connection_is_ready_go_in_one_write():
    h = _handler(6)
    h.body_received(b"abc")
    h.body_received(b"def")
    h.body_finished()
    conn = _Conn()
    h.upstream_ready(conn, False)
    assert conn.writes == [b"POST /x HTTP/1.1\r\nhost: up\r\ncontent-length: 6\r\n\r\nabcdef"]
    assert conn.ended and h.sent_body


def test_chunked_request_body_read_before_the_connection_is_ready_keeps_its_framing():
    h = _handler(None)
    h.body_received(b"abc")
    conn = _Conn()
    h.upstream_ready(conn, False)
    assert len(conn.writes) == 1 and conn.writes[0].endswith(b"\r\n\r\n3\r\nabc\r\n") and not conn.ended
    h.body_received(b"de")
    h.body_finished()
    assert conn.writes[1:] == [b"2\r\nde\r\n", b"0\r\n\r\n"] and conn.ended
