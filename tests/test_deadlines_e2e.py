"""Every deadline of a downstream connection, over real sockets, with deadlines longer than the close's
grace (the connection's one timer is first due within the grace and re-armed: none may fire early), and
the close itself: abort after the grace, a clean end for a client that answers close_notify, a large
response to a slow reader never cut by the close that follows it."""
from __future__ import annotations

import socket
import ssl
import time

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock

from backends import StreamingBackend
from conftest import ADMIN_EPHEMERAL, Gateway, poll
from rawhttp import read_response

from txgate.http.closing import GRACE, _unsent

SLOW = 3.0  # header_timeout / idle_timeout of the listeners under test: longer than the close's grace
assert SLOW > GRACE + 0.5


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    be = StreamingBackend()
    config = (
        ADMIN_EPHEMERAL + "[gateway]\nstate_dir = ./txgate-state\naccess_log = off\n"
        f"[listener:hdr]\nbind = 127.0.0.1:0\ncertificate = local\nheader_timeout = {SLOW}\nidle_timeout = 60\n"
        f"[listener:idle]\nbind = 127.0.0.1:0\ncertificate = local\nheader_timeout = 10\nidle_timeout = {SLOW}\n"
        f"[listener:plainhdr]\nbind = 127.0.0.1:0\ntls = off\nheader_timeout = {SLOW}\nidle_timeout = 60\n"
        f"[listener:plainidle]\nbind = 127.0.0.1:0\ntls = off\nheader_timeout = 10\nidle_timeout = {SLOW}\n"
        "[api:echo]\npath = /echo\nupstream = builtin:echo\n"
        f"[api:dl]\npath = /download\nupstream = {be.url()}\n"
    )
    gateway = Gateway(tmp_path_factory.mktemp("deadlines"), config).start()
    yield gateway
    try:
        assert gateway.stop() == 0
    finally:
        be.close()


def _context(alpn: str = "http/1.1") -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def _open(port: int, tls: bool, alpn: str = "http/1.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    return _context(alpn).wrap_socket(sock, server_hostname="localhost") if tls else sock


def _seconds_until_closed(sock, limit: float = 15.0) -> float:
    """Read (and drop) until the server ends the connection (close_notify, FIN or reset): seconds taken."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except (ssl.SSLError, ConnectionError):
        pass
    return time.monotonic() - start


HEAD = b"GET /echo/slow HTTP/1.1\r\nHost: localhost\r\n"  # and never the empty line


@pytest.mark.parametrize("listener, tls, first", [
    ("hdr", False, b""),
    ("hdr", False, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    ("hdr", True, HEAD),
    ("plainhdr", False, HEAD),
], ids=["handshake-never-begun", "handshake-never-finished", "head-never-finished", "plain-head-never-finished"])
def test_a_slowloris_is_dropped_at_header_timeout_not_before(gw, listener, tls, first):
    sock = _open(gw.ports[listener], tls=tls)
    try:
        sock.sendall(first)
        took = _seconds_until_closed(sock)
    finally:
        sock.close()
    assert SLOW - 0.3 <= took <= SLOW + 2, took


@pytest.mark.parametrize("listener", ["idle", "plainidle"])
def test_an_idle_keepalive_connection_is_closed_at_idle_timeout_not_before(gw, listener):
    sock = _open(gw.ports[listener], tls=listener == "idle")
    try:
        sock.sendall(b"GET /echo/idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(sock)[1][0].startswith("HTTP/1.1 200")
        took = _seconds_until_closed(sock)
    finally:
        sock.close()
    assert SLOW - 0.3 <= took <= SLOW + 2, took


def test_an_idle_h2_connection_is_closed_at_idle_timeout_not_before(gw):
    import h2.config
    import h2.connection

    sock = _open(gw.ports["idle"], tls=True, alpn="h2")
    try:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        took = _seconds_until_closed(sock)
    finally:
        sock.close()
    assert SLOW - 0.3 <= took <= SLOW + 2, took


class _BioClient:
    """A TLS client over a raw socket that decides itself whether it answers close_notify."""

    def __init__(self, port: int, alpn: str = "http/1.1", server_name: str = "localhost") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = _context(alpn).wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        self._step(self.tls.do_handshake)

    def _step(self, fn, *args):
        while True:
            try:
                result = fn(*args)
            except ssl.SSLWantReadError:
                self._send()
                data = self.sock.recv(65536)
                if not data:
                    self.incoming.write_eof()
                else:
                    self.incoming.write(data)
                continue
            self._send()
            return result

    def _send(self) -> None:
        out = self.outgoing.read()
        if out:
            self.sock.sendall(out)

    def request_until_close_notify(self, request: bytes) -> bytes:
        """Send ``request``; everything up to the server's close_notify (which is not answered)."""
        self._step(self.tls.write, request)
        return self.until_close_notify()

    def until_close_notify(self) -> bytes:
        """Everything up to the server's close_notify (which is not answered)."""
        got = b""
        while True:
            try:
                chunk = self._step(self.tls.read, 65536)
            except ssl.SSLZeroReturnError:
                return got
            if not chunk:  # (the close_notify, as CPython reports it)
                return got
            got += chunk

    def answer_close_notify(self) -> None:
        self._step(self.tls.unwrap)

    def tcp_end(self) -> tuple[str, float]:
        """Wait for the end of the TCP connection: ("fin" | "reset", seconds)."""
        start = time.monotonic()
        try:
            while self.sock.recv(65536):
                pass
            how = "fin"
        except ConnectionResetError:
            how = "reset"
        return how, time.monotonic() - start

    def close(self) -> None:
        self.sock.close()


CLOSE = b"GET /echo/bye HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("listener", ["hdr", "idle"])
def test_a_client_that_never_answers_close_notify_is_aborted_after_the_grace(gw, listener):
    client = _BioClient(gw.ports[listener])
    try:
        assert client.request_until_close_notify(CLOSE).startswith(b"HTTP/1.1 200")
        how, took = client.tcp_end()
    finally:
        client.close()
    assert how == "reset" and GRACE - 0.3 <= took <= GRACE + 2, (how, took)


@pytest.mark.parametrize("listener", ["hdr", "idle"])
def test_a_client_that_answers_close_notify_gets_a_clean_end_at_once(gw, listener):
    client = _BioClient(gw.ports[listener])
    try:
        assert client.request_until_close_notify(CLOSE).startswith(b"HTTP/1.1 200")
        client.answer_close_notify()
        how, took = client.tcp_end()
    finally:
        client.close()
    assert how == "fin" and took < 1.0, (how, took)


CHALLENGE_NAME = "acme-close.example"


@pytest.fixture(scope="module")
def acme_gw(tmp_path_factory):
    """Two worker processes answering a pending TLS-ALPN-01 challenge that the test itself put on the
    shelf they read (state_dir/run/acme-challenges/, as the supervisor's ACME order would)."""
    from txgate.acme.challenges import ChallengeBoard
    from txgate.acme.shelves import CHALLENGE_DIR, DirectoryShelf

    config = (ADMIN_EPHEMERAL + "[gateway]\nstate_dir = ./txgate-state\naccess_log = off\n"
              "[listener:main]\nbind = 127.0.0.1:0\ncertificate = local\n"
              "[api:echo]\npath = /echo\nupstream = builtin:echo\n")
    gateway = Gateway(tmp_path_factory.mktemp("acme-close"), config, workers="2").start()
    try:
        gateway.wait_log(r"2 workers serving", timeout=30)
        shelf = DirectoryShelf(str(gateway.workdir / "txgate-state" / CHALLENGE_DIR))
        ChallengeBoard(shelf).add_alpn(CHALLENGE_NAME, "token.thumbprint")
        yield gateway
    finally:
        assert gateway.stop() == 0


def test_an_acme_tls_alpn_validation_that_never_answers_close_notify_is_aborted_after_the_grace(acme_gw):
    """RFC 8737: the acme-tls/1 handshake is the answer, then the connection closes as any other does. A
    validator (or anyone offering acme-tls/1 while a challenge is pending) that neither answers the
    close_notify nor closes must not keep the connection (and its max_connections slot) for ever."""
    client = _BioClient(acme_gw.port, alpn="acme-tls/1", server_name=CHALLENGE_NAME)
    try:
        assert client.tls.selected_alpn_protocol() == "acme-tls/1"  # the challenge certificate was presented
        assert client.until_close_notify() == b""
        client.sock.settimeout(GRACE + 5)
        how, took = client.tcp_end()
    finally:
        client.close()
    assert how == "reset" and GRACE - 0.3 <= took <= GRACE + 2, (how, took)


def test_an_acme_tls_alpn_validation_that_answers_close_notify_gets_a_clean_end_at_once(acme_gw):
    client = _BioClient(acme_gw.port, alpn="acme-tls/1", server_name=CHALLENGE_NAME)
    try:
        assert client.tls.selected_alpn_protocol() == "acme-tls/1"
        assert client.until_close_notify() == b""
        client.answer_close_notify()
        how, took = client.tcp_end()
    finally:
        client.close()
    assert how == "fin" and took < 1.0, (how, took)


@pytest.mark.parametrize("listener", ["hdr", "plainhdr"])
def test_a_slow_reader_gets_the_whole_response_before_the_close(gw, listener):
    size = 5 << 20
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    raw.settimeout(15)
    raw.connect(("127.0.0.1", gw.ports[listener]))
    sock = _context().wrap_socket(raw, server_hostname="localhost") if listener == "hdr" else raw
    try:
        sock.sendall(b"GET /download/%d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % size)
        start = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        received = len(data) - data.index(b"\r\n\r\n") - 4
        while True:
            # A reader slower than the close's grace: the end of the response is still on its way
            # well after the gateway closed its side (once the upstream's body was all in).
            time.sleep(0.015)
            try:
                chunk = sock.recv(16384)
            except (ssl.SSLError, ConnectionError) as e:
                pytest.fail(f"cut after {received} of {size} bytes: {e!r}")
            if not chunk:
                break
            received += len(chunk)
    finally:
        sock.close()
    assert received == size
    assert time.monotonic() - start > GRACE + 1.5


def test_what_the_kernel_has_not_delivered_counts_as_unsent():
    """The abort after the grace is a reset, which drops what the peer has not acknowledged: the close
    must count it as still draining (else a slow reader's tail is cut, above)."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect(listener.getsockname())
    ours, _ = listener.accept()
    try:
        transport = tcp.Connection(ours, Protocol(), reactor=MemoryReactorClock())
        assert _unsent(transport) == 0
        sent = ours.send(bytes(1 << 20))  # (non-blocking: what the kernel took)
        assert sent > 0 and _unsent(transport) > 0  # the peer reads nothing yet
        peer.settimeout(10)
        got = 0
        while got < sent:
            got += len(peer.recv(1 << 16))
        poll(lambda: _unsent(transport) == 0, 5, what="the peer's acknowledgements")
    finally:
        for s in (peer, ours, listener):
            s.close()
