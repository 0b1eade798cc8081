"""The downstream HTTP/1.1 protocol in memory: StringTransport + MemoryReactorClock, no sockets."""
from __future__ import annotations

import json

import pytest

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from txgate.http.closing import GRACE
from txgate.http.exchange import ConnectionInfo, Limits
from txgate.http.h1 import H1Connection
from txgate.testing.gateway import LogCapture


class Handler:
    def __init__(self, stream, head):
        self.stream = stream
        self.head = head
        self.body = b""
        self.finished = False
        self.lost = None
        self.paused = 0
        self.resumed = 0

    def body_received(self, data):
        self.body += data

    def body_finished(self):
        self.finished = True

    def stream_lost(self, reason):
        self.lost = reason

    def pause_producing(self):
        self.paused += 1

    def resume_producing(self):
        self.resumed += 1

    def respond(self, status=200, body=b"ok", headers=(), content_length="auto"):
        cl = len(body) if content_length == "auto" else content_length
        self.stream.start_response(status, list(headers), cl)
        self.stream.write(body)
        self.stream.finish()


class Dispatcher:
    """Records handlers; with auto=True answers each request (echoing its body) when the body ends."""

    def __init__(self, auto=True):
        self.auto = auto
        self.handlers: list[Handler] = []
        self.logged = []

    def dispatch(self, stream, head):
        h = Handler(stream, head)
        if self.auto:
            orig = h.body_finished

            def finished():
                orig()
                h.respond(body=b"%s %s %d" % (head.method, head.target, len(h.body)))

            h.body_finished = finished
        self.handlers.append(h)
        return h

    def log_request(self, info, head, status, bytes_in, bytes_out, handler, started, ended):
        self.logged.append((head.method if head else None, status, bytes_in, bytes_out))


def connect(auto=True, clock=None, **limits):
    clock = clock or MemoryReactorClock()
    d = Dispatcher(auto)
    proto = H1Connection(d, ConnectionInfo("main", "127.0.0.1", 4000, tls=True), Limits(**limits), clock)
    t = StringTransport()
    proto.makeConnection(t)
    return proto, t, d, clock


def responses(data: bytes) -> list[tuple[bytes, dict, bytes]]:
    """Split a byte stream of HTTP/1.1 responses (content-length or chunked framed)."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            hdrs[k.strip().lower()] = v.strip()
        if lines[0].split()[1].startswith(b"1"):
            out.append((lines[0], hdrs, b""))
            continue
        if b"content-length" in hdrs:
            n = int(hdrs[b"content-length"])
            body, data = data[:n], data[n:]
        elif hdrs.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body += data[:size]
                data = data[size + 2:]
                if size == 0:
                    break
        else:
            body, data = data, b""
        out.append((lines[0], hdrs, body))
    return out


def test_keep_alive_two_requests_one_connection():
    proto, t, d, _ = connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    proto.dataReceived(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    got = responses(t.value())
    assert [r[2] for r in got] == [b"GET /a 0", b"POST /b 3"]
    assert all(r[0] == b"HTTP/1.1 200 OK" for r in got)
    assert b"connection" not in got[0][1]
    assert not t.disconnecting
    assert [s for _, s, _, _ in d.logged] == [200, 200]


def test_pipelined_requests_answered_in_order():
    proto, t, d, _ = connect(auto=False)
    proto.dataReceived(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
        b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    # Only the first is dispatched; the others wait and reading is paused meanwhile.
    assert len(d.handlers) == 1 and d.handlers[0].head.target == b"/1"
    assert t.producerState == "paused"
    d.handlers[0].respond(body=b"one")
    assert len(d.handlers) == 2
    h2 = d.handlers[1]
    assert h2.head.target == b"/2" and h2.body == b"body" and h2.finished
    h2.respond(body=b"two", content_length=None)  # chunked
    h3 = d.handlers[2]
    h3.respond(body=b"three")
    assert [r[2] for r in responses(t.value())] == [b"one", b"two", b"three"]
    assert t.producerState == "producing"
    assert not t.disconnecting


def test_garbage_gets_400_json_and_close():
    proto, t, d, _ = connect()
    proto.dataReceived(b"\x16\x03\x01 this is not http\r\n\r\n")
    (status, hdrs, body), = responses(t.value())
    assert status.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"] == "bad_request"
    assert hdrs[b"connection"] == b"close"
    assert t.disconnecting
    assert d.handlers == []
    # More bytes after the error are ignored (no second error response).
    n = len(t.value())
    proto.dataReceived(b"more garbage\r\n\r\n")
    assert len(t.value()) == n


def test_missing_host_is_400():
    proto, t, d, _ = connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    (status, _, body), = responses(t.value())
    assert status.startswith(b"HTTP/1.1 400") and json.loads(body)["error"] == "bad_request"


def test_huge_headers_get_431():
    proto, t, d, _ = connect(max_header_bytes=1024)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
    for i in range(20):
        proto.dataReceived(b"X-Filler-%d: %s\r\n" % (i, b"a" * 100))
    (status, hdrs, body), = responses(t.value())
    assert status.startswith(b"HTTP/1.1 431")
    assert json.loads(body)["error"] == "headers_too_large"
    assert t.disconnecting and d.handlers == []


def test_huge_url_gets_431():
    proto, t, d, _ = connect(max_header_bytes=1024)
    proto.dataReceived(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    (status, _, _), = responses(t.value())
    assert status.startswith(b"HTTP/1.1 431")


def test_slowloris_disconnected_after_header_timeout():
    proto, t, d, clock = connect(header_timeout=2.0, idle_timeout=60.0)
    proto.dataReceived(b"GET / HTTP/1.1\r\n")
    clock.advance(1.0)
    proto.dataReceived(b"Host: x\r\n")
    assert not t.disconnecting
    clock.advance(1.01)
    assert t.disconnecting, "headers not finished within header_timeout must close the connection"
    assert d.handlers == []


def test_header_timeout_does_not_cut_a_slow_response():
    proto, t, d, clock = connect(auto=False, header_timeout=2.0, idle_timeout=60.0)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(10)
    assert not t.disconnecting
    d.handlers[0].respond()
    assert not t.disconnecting


def test_idle_keep_alive_connection_closed_after_idle_timeout():
    proto, t, d, clock = connect(header_timeout=2.0, idle_timeout=5.0)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(4.9)
    assert not t.disconnecting
    clock.advance(0.2)
    assert t.disconnecting


def test_head_response_has_length_but_no_body():
    proto, t, d, _ = connect(auto=False)
    proto.dataReceived(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n")
    d.handlers[0].respond(body=b"0123456789")
    data = t.value()
    assert data.endswith(b"\r\n\r\n")
    assert b"content-length: 10\r\n" in data
    assert b"0123456789" not in data
    proto.dataReceived(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(d.handlers) == 2  # the connection is still usable


def test_head_with_unknown_length_is_not_chunked():
    proto, t, d, _ = connect(auto=False)
    proto.dataReceived(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n")
    d.handlers[0].respond(body=b"abc", content_length=None)
    assert b"transfer-encoding" not in t.value()
    assert t.value().endswith(b"\r\n\r\n")


def test_expect_100_continue():
    proto, t, d, _ = connect()
    proto.dataReceived(b"PUT /u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert t.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.dataReceived(b"hello")
    got = responses(t.value())
    assert got[-1][2] == b"PUT /u 5"


def test_no_100_continue_when_answered_at_once():
    proto, t, d, _ = connect(auto=False)
    orig = d.dispatch

    def rejecting(stream, head):
        h = orig(stream, head)
        h.respond(413, b"too big")
        return h

    d.dispatch = rejecting
    proto.dataReceived(b"PUT /u HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\nExpect: 100-continue\r\n\r\n")
    assert b"100 Continue" not in t.value()
    assert t.value().startswith(b"HTTP/1.1 413")
    assert b"connection: close" in t.value()  # the unread body makes the connection unusable


def test_chunked_response_to_http11_client():
    proto, t, d, _ = connect(auto=False)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    s = d.handlers[0].stream
    s.start_response(200, [(b"x-a", b"1")], None)
    s.write(b"hello ")
    s.write(b"world")
    s.finish()
    data = t.value()
    assert b"transfer-encoding: chunked\r\n" in data
    assert data.endswith(b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")
    assert responses(data)[0][2] == b"hello world"
    assert not t.disconnecting


def test_chunked_request_body_streamed():
    proto, t, d, _ = connect()
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert d.handlers[0].body == b"abc" and not d.handlers[0].finished
    assert d.handlers[0].head.content_length is None and d.handlers[0].head.has_body
    proto.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
    assert responses(t.value())[0][2] == b"POST / 5"


def test_http10_close_delimited_response():
    proto, t, d, _ = connect(auto=False)
    proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    s = d.handlers[0].stream
    s.start_response(200, [], None)
    s.write(b"abc")
    s.write(b"def")
    s.finish()
    data = t.value()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and b"content-length" not in head
    assert b"connection: close" in head
    assert body == b"abcdef"
    assert t.disconnecting


def test_http10_keep_alive_with_length():
    proto, t, d, _ = connect()
    proto.dataReceived(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"connection: keep-alive\r\n" in t.value()
    assert not t.disconnecting


def test_connection_close_request_closes_after_response():
    proto, t, d, _ = connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"connection: close" in t.value()
    assert t.disconnecting
    # TLS transports only close once no producer is registered.
    assert t.producer is None


class TimerCount(MemoryReactorClock):
    """A clock that names every callback scheduled on it."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled: list[str] = []

    def callLater(self, delay, f, *args, **kw):
        self.scheduled.append(f.__qualname__)
        return super().callLater(delay, f, *args, **kw)


def test_the_close_takes_over_the_connections_timer_and_aborts_after_the_grace():
    clock = TimerCount()
    proto, t, d, _ = connect(clock=clock, header_timeout=10.0, idle_timeout=60.0)
    clock.advance(1.0)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert t.disconnecting and not t.disconnected
    assert len(clock.getDelayedCalls()) == 1  # one timer per connection: the close's grace is on it
    clock.advance(GRACE - 0.05)  # the timer is due early: re-armed for the rest of the grace
    assert not t.disconnected and len(clock.getDelayedCalls()) == 1
    clock.advance(0.1)
    assert t.disconnected, "a peer that does not finish the close is aborted once the grace is over"
    assert clock.scheduled == ["H1Connection._check_timeout", "Closer._check"]
    proto.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_a_connection_lost_after_its_close_leaves_no_timer():
    clock = TimerCount()
    proto, t, d, _ = connect(clock=clock)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == [] and clock.scheduled == ["H1Connection._check_timeout"]


def test_an_idle_close_is_aborted_after_the_grace():
    proto, t, d, clock = connect(header_timeout=2.0, idle_timeout=5.0)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(5.1)
    assert t.disconnecting and not t.disconnected
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(GRACE - 0.2)
    assert not t.disconnected
    clock.advance(0.2)
    assert t.disconnected


def test_backpressure_both_ways():
    proto, t, d, _ = connect(auto=False)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
    h = d.handlers[0]
    h.stream.pause_reading()
    assert t.producerState == "paused"
    h.stream.resume_reading()
    assert t.producerState == "producing"
    proto.pauseProducing()
    assert h.paused == 1
    proto.resumeProducing()
    assert h.resumed == 1


def test_client_gone_tells_the_handler_and_logs():
    proto, t, d, _ = connect(auto=False)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reason = Failure(ConnectionDone("client gone"))
    proto.connectionLost(reason)
    assert d.handlers[0].lost is reason  # handler.stream_lost(reason), exchange.py's contract
    assert len(d.logged) == 1 and d.logged[0][1] == 0


def test_shutdown_idle_closes_and_busy_finishes_first():
    proto, t, d, _ = connect(auto=False)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    proto.shutdown()
    assert not t.disconnecting
    d.handlers[0].respond()
    assert b"connection: close" in t.value()
    assert t.disconnecting
    proto2, t2, _, _ = connect()
    proto2.shutdown()
    assert t2.disconnecting


def test_one_endless_header_line_gets_431():
    proto, t, d, _ = connect(max_header_bytes=1024)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    for _ in range(5):
        proto.dataReceived(b"a" * 1000)
    assert t.value().startswith(b"HTTP/1.1 431")
    assert t.disconnecting


def test_dispatch_crash_is_500_not_400():
    proto, t, d, _ = connect()

    def broken(stream, head):
        raise RuntimeError("bug")

    d.dispatch = broken
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 500")
    assert t.disconnecting


def test_body_pause_does_not_outlive_its_exchange():
    proto, t, d, _ = connect(auto=False)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    h = d.handlers[0]
    # The upstream's write buffer filled with the last bytes; then the response came back.
    h.stream.pause_reading()
    h.respond()
    assert t.producerState == "producing", "the next request on this connection would never be read"
    proto.dataReceived(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(d.handlers) == 2


def test_bad_chunk_after_dispatch_gets_400_and_the_handler_learns_the_client_is_gone():
    proto, t, d, _ = connect()
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    handler = d.handlers[0]
    proto.dataReceived(b"zz\r\nnot a chunk\r\n")
    (status, hdrs, body), = responses(t.value())
    assert status.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"] == "bad_request"
    assert handler.lost is not None and not handler.finished
    assert t.disconnecting
    assert d.logged[-1][:2] == (b"POST", 400)


@pytest.mark.parametrize("request_line, status", [
    (b"GET /echo HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),
    (b"GET /echo HTTP/3.0\r\nHost: x\r\n\r\n", b"400"),  # llhttp refuses unknown versions itself
])
def test_unsupported_http_versions_are_refused(request_line, status):
    proto, t, d, _ = connect()
    proto.dataReceived(request_line)
    (line, hdrs, body), = responses(t.value())
    assert line.split()[1] == status
    assert d.handlers == []
    assert t.disconnecting


def test_http09_style_request_line_is_refused():
    proto, t, d, _ = connect()
    logs = LogCapture()
    logs.install()
    try:
        proto.dataReceived(b"GET /echo\r\n\r\n")
    finally:
        logs.uninstall()
    assert d.handlers == []
    (line, hdrs, body), = responses(t.value())
    assert line.split()[1] == b"505"  # like HTTP/2.0 above: a version this server does not speak
    # The body has the code, a generic message and the request ID; the details are logged with the ID.
    doc = json.loads(body)
    assert doc == {"error": "http_version_not_supported", "message": "HTTP version not supported",
                   "request_id": doc["request_id"]}
    assert logs.error_detail(doc["request_id"]) == "HTTP/0.9 is not supported here"
    assert t.disconnecting


@pytest.mark.parametrize("framing", [
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
])
def test_http10_with_transfer_encoding_is_400_and_the_pipelined_request_is_not_served(framing):
    # RFC 9112 6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty; whatever
    # follows on the connection cannot be trusted to start where the gateway thinks it does.
    proto, t, d, _ = connect()
    proto.dataReceived(
        b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\n" + framing + b"\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    )
    (status, hdrs, body), = responses(t.value())
    assert status.startswith(b"HTTP/1.1 400") and hdrs[b"connection"] == b"close"
    assert json.loads(body)["error"] == "bad_request"
    assert d.handlers == []
    assert t.disconnecting


def test_unknown_transfer_coding_is_501_and_closes():
    proto, t, d, _ = connect()
    proto.dataReceived(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
    (status, hdrs, body), = responses(t.value())
    assert status.startswith(b"HTTP/1.1 501") and json.loads(body)["error"] == "transfer_coding_not_supported"
    assert d.handlers == [] and t.disconnecting


def _request_of_size(limit: int, over: int) -> bytes:
    """A GET whose URL and fields count limit + over bytes (URL, then name + value + 4 per field)."""
    url = b"/" + b"u" * 99
    fields = [(b"host", b"x")] + [(b"x-a%03d" % i, b"v" * 90) for i in range(limit // 100 - 2)]
    rest = limit + over - len(url) - sum(len(n) + len(v) + 4 for n, v in fields)
    fields.append((b"x-last", b"w" * (rest - len(b"x-last") - 4)))
    return b"GET %s HTTP/1.1\r\n%s\r\n" % (url, b"".join(b"%s: %s\r\n" % f for f in fields))


@pytest.mark.parametrize("read", [100_000, 1000, 7, 1])
@pytest.mark.parametrize("pipelined", [False, True])
def test_header_limit_counts_url_and_fields_exactly_whatever_the_reads(read, pipelined):
    # Fields are counted lazily (at the end of a read inside a head, and at its end when it could
    # be over), not one by one: the limit stays exact, for a pipelined head too.
    for over, status in ((0, b"HTTP/1.1 200"), (1, b"HTTP/1.1 431")):
        proto, t, d, _ = connect(max_header_bytes=2048, header_timeout=1e9)
        first = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n" if pipelined else b""
        data = first + _request_of_size(2048, over)
        for i in range(0, len(data), read):
            proto.dataReceived(data[i:i + read])
        got = [r[0][:12] for r in responses(t.value())]
        assert got == ([b"HTTP/1.1 200"] if pipelined else []) + [status], (over, read)


def test_endless_header_line_pipelined_behind_a_request_in_flight_is_bounded():
    # The head of a pipelined request that began while the one before was in flight: reading
    # stops until that one is answered; then it is a head like any other (431 past the limit).
    proto, t, d, clock = connect(auto=False, max_header_bytes=1024)
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    assert t.producerState == "paused"
    d.handlers[0].respond()
    assert t.producerState == "producing" and not t.disconnecting
    for _ in range(5):
        proto.dataReceived(b"a" * 1000)
    statuses = [r[0][:12] for r in responses(t.value())]
    assert statuses == [b"HTTP/1.1 200", b"HTTP/1.1 431"] and t.disconnecting
    assert len(d.handlers) == 1


def test_pipelined_head_begun_in_flight_gets_the_header_timeout_once_its_turn_comes():
    proto, t, d, clock = connect(auto=False, header_timeout=2.0, idle_timeout=60.0)
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n")
    clock.advance(30)  # the first request takes its time: no header timeout meanwhile
    assert not t.disconnecting
    d.handlers[0].respond()
    clock.advance(1.0)
    proto.dataReceived(b"Host: x\r\n")
    assert not t.disconnecting
    clock.advance(1.1)
    assert t.disconnecting and len(d.handlers) == 1


def test_pipelined_head_begun_in_flight_completes_after_the_answer():
    proto, t, d, clock = connect(auto=False)
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HT")
    d.handlers[0].respond()
    proto.dataReceived(b"TP/1.1\r\nHost: x\r\n\r\n")
    assert [h.head.target for h in d.handlers] == [b"/a", b"/b"]
    d.handlers[1].respond()
    assert [r[0][:12] for r in responses(t.value())] == [b"HTTP/1.1 200"] * 2 and not t.disconnecting
