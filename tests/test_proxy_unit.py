"""The upstream connection and proxy handler in memory (StringTransport, Clock), no sockets."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txgate.upstream.connection import UpstreamConnection


class FakePool:
    label = "up"

    def __init__(self):
        self.reactor = Clock()
        self.connect_timeout = 5.0
        self.ready = []
        self.checked_in = []
        self.closed = []

    def connection_ready(self, conn):
        self.ready.append(conn)

    def checkin(self, conn, now=None):
        self.checked_in.append(conn)

    def connection_closed(self, conn):
        self.closed.append(conn)

    def connection_failed(self, conn, reason):
        pass


class SlowReaderExchange:
    """Pauses the upstream on the first body bytes, like a downstream whose buffer is full."""

    head_only = False

    def __init__(self, conn):
        self.conn = conn
        self.body = b""
        self.finished = False

    def response_head(self, status, headers, content_length):
        self.status = status

    def response_body(self, data):
        self.body += data
        self.conn.pause_reading()

    def response_finished(self):
        self.finished = True

    def upstream_write_paused(self):
        pass

    def upstream_write_resumed(self):
        pass


def test_connection_returned_to_pool_is_not_left_paused():
    pool = FakePool()
    conn = UpstreamConnection(pool, tls=False)
    t = StringTransport()
    conn.makeConnection(t)
    ex = SlowReaderExchange(conn)
    conn.start(ex, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", False)
    conn.end_body(b"")
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert ex.finished and pool.checked_in == [conn]
    # The downstream that paused it has finished and will never resume it: the pool's next
    # user would wait forever for a response on a connection that does not read.
    assert t.producerState == "producing"


def test_second_exchange_reads_after_a_paused_first():
    pool = FakePool()
    conn = UpstreamConnection(pool, tls=False)
    t = StringTransport()
    conn.makeConnection(t)
    ex = SlowReaderExchange(conn)
    conn.start(ex, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", False)
    conn.end_body(b"")
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    ex2 = SlowReaderExchange(conn)
    conn.start(ex2, b"GET /2 HTTP/1.1\r\nhost: x\r\n\r\n", False)
    assert t.producerState == "producing"


class ParkingPool:
    """A pool that hands out connections when the test says so."""

    label = "http://up:80"
    host_value = b"up"
    base_path = b""

    def __init__(self):
        self.requesters = []

    def acquire(self, requester):
        self.requesters.append(requester)

    def cancel(self, requester):
        pass

    def checkin(self, conn):
        pass


class RecordingConn:
    def __init__(self):
        self.exchange = None
        self.sent = b""
        self.paused = False

    def start(self, ex, head, head_only, request_done=False):
        self.exchange = ex
        self.sent += head

    def write_body(self, data):
        self.sent += data

    def end_body(self, tail):
        self.sent += tail

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def close(self):
        pass


class NullStream:
    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def make_handler(method=b"GET", has_body=False, content_length=None):
    from txgate.http.exchange import RequestHead
    from txgate.upstream.proxy import ProxyHandler, Upstream

    pool = ParkingPool()
    up = Upstream("api", [pool], timeout=30, max_body_bytes=0)
    head = RequestHead(method, b"/x?y=1", b"gw", [], content_length, has_body, b"1.1")
    h = ProxyHandler(up, NullStream(), head, b"/x?y=1", b"\r\n", None, Clock())
    h.start()
    return h, pool


def test_client_pause_before_the_upstream_is_ready_is_applied_when_it_is():
    h, pool = make_handler()
    h.pause_producing()
    conn = RecordingConn()
    pool.requesters[0].upstream_ready(conn, False)
    assert conn.paused
    h.resume_producing()
    assert not conn.paused
    assert conn.sent.startswith(b"GET /x?y=1 HTTP/1.1\r\nhost: up\r\n")


def test_body_received_before_the_upstream_is_ready_is_sent_in_order_chunked():
    h, pool = make_handler(b"POST", has_body=True)
    h.body_received(b"abc")
    h.body_received(b"de")
    h.body_finished()
    conn = RecordingConn()
    pool.requesters[0].upstream_ready(conn, False)
    assert conn.sent.endswith(b"\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")


class HeadLimitExchange(SlowReaderExchange):
    """Records the response head or the error; reads on."""

    status = None
    error = None

    def response_body(self, data):
        self.body += data

    def upstream_error(self, err):
        self.error = err


def _head_of_size(limit: int, over: int) -> bytes:
    """A response head whose fields count limit + over bytes (name + value + 4 each, as the limit counts)."""
    fields = [(b"x-a%03d" % i, b"v" * 90) for i in range(limit // 100 - 1)]
    rest = limit + over - sum(len(n) + len(v) + 4 for n, v in fields) - len(b"content-length") - 1 - 4
    fields += [(b"x-last", b"w" * (rest - len(b"x-last") - 4)), (b"content-length", b"0")]
    return b"HTTP/1.1 200 OK\r\n" + b"".join(b"%s: %s\r\n" % f for f in fields) + b"\r\n"


def _answer_head(head: bytes, read: int, limit: int = 4096):
    pool = FakePool()
    pool.max_response_header_bytes = limit
    conn = UpstreamConnection(pool, tls=False)
    conn.makeConnection(StringTransport())
    ex = HeadLimitExchange(conn)
    conn.start(ex, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", False)
    conn.end_body(b"")
    for i in range(0, len(head), read):
        conn.dataReceived(head[i:i + read])
        if ex.error is not None:
            break
    return ex


def test_response_head_limit_counts_fields_exactly_whatever_the_reads():
    # Fields are counted lazily (when a head could be over the limit, and at the end of a read that
    # ends inside a head), not one by one: in one read the limit is exact; split into reads, the
    # raw bytes of the reads before count too (an endless line is bounded), so a third still passes.
    ok = _answer_head(_head_of_size(4096, 0), 100_000)
    assert ok.status == 200 and ok.finished and ok.error is None
    for read in (100_000, 1000, 7, 1):
        over = _answer_head(_head_of_size(4096, 1), read)
        assert over.status is None and over.error is not None and over.error.code == "upstream_headers_too_large", read
        assert over.error.message == "up: response head exceeds 4096 bytes"
        small = _answer_head(_head_of_size(1300, 0), read)
        assert small.status == 200 and small.finished and small.error is None, read


# -- the exchange's clock readings ------------------------------------------------------------------
class ClockPool(FakePool):
    """A FakePool that queues requesters, or hands them ``conn`` at once when it is set."""

    host_value = b"up"
    base_path = b""

    def __init__(self):
        super().__init__()
        self.requesters = []
        self.conn = None
        self.parked_at = []
        self.last_success = None

    def acquire(self, requester):
        if self.conn is not None:
            requester.upstream_ready(self.conn, True)
        else:
            self.requesters.append(requester)

    def cancel(self, requester):
        pass

    def checkin(self, conn, now=None):
        super().checkin(conn)
        self.parked_at.append(now)


class RecordingStream:
    def __init__(self):
        self.events = []

    def start_response(self, status, headers, content_length):
        self.events.append(("head", status))

    def write(self, data):
        self.events.append(("body", data))

    def finish(self):
        self.events.append(("finish",))

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def _clocked_exchange(pool):
    from txgate.http.exchange import RequestHead
    from txgate.upstream.proxy import ProxyHandler, Upstream

    up = Upstream("api", [pool], timeout=30, max_body_bytes=0)
    head = RequestHead(b"GET", b"/x", b"gw", [], None, False, b"1.1")
    stream = RecordingStream()
    return ProxyHandler(up, stream, head, b"/x", b"\r\n", None, pool.reactor), stream


def _ready_connection(pool):
    conn = UpstreamConnection(pool, tls=False)
    conn.makeConnection(StringTransport())
    return conn


def test_upstream_time_runs_from_the_send_to_the_read_with_the_head_and_progress_from_each_read():
    pool = ClockPool()
    clock = pool.reactor
    clock.advance(10)
    h, stream = _clocked_exchange(pool)
    h.start()
    assert h.last == 10 and pool.requesters == [h]
    clock.advance(2)  # the connection comes later: the request is sent now
    conn = _ready_connection(pool)
    h.upstream_ready(conn, False)
    assert h.sent_at == 12
    clock.advance(3)
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    assert h.upstream_seconds == 3 and h.last == 15 and pool.last_success == 15
    clock.advance(4)
    conn.dataReceived(b"def")
    assert h.last == 19 and pool.parked_at == [19] and pool.checked_in == [conn]
    assert stream.events == [("head", 200), ("body", b"abc"), ("body", b"def"), ("finish",)]


def test_a_connection_handed_out_at_once_is_written_at_the_start_time():
    pool = ClockPool()
    clock = pool.reactor
    clock.advance(5)
    pool.conn = _ready_connection(pool)
    h, stream = _clocked_exchange(pool)
    h.start()
    assert h.sent_at == 5 == h.last
    clock.advance(0.5)
    pool.conn.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert h.upstream_seconds == 0.5 and stream.events == [("head", 204), ("finish",)]
    assert pool.parked_at == [5.5]
