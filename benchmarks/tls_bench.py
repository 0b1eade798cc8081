"""Micro-benchmark: the listener's TLS layer, Twisted's ``TLSMemoryBIOProtocol`` vs txgate's own.

python -m benchmarks.tls_bench [--connections N] [--requests N] [--rounds N]

In one process, in memory (``twisted.test.iosim``, no sockets): a listener (``ListenerFactory``,
negotiator, h1 protocol, a dispatcher answering ``200 hello`` itself) under either TLS layer, and a
Twisted TLS client (pyOpenSSL). Two loads, each timed with ``time.process_time`` in alternating rounds
(best round kept):

* ``new connection``: handshake (TLS 1.3, ECDSA P-256), ``GET /`` with ``Connection: close``, the
  response, close_notify both ways;
* ``keep-alive request``: one more ``GET /`` on an open connection;
* ``keep-alive, chunked response``: the same with a response of unknown length (the h1 protocol
  writes the head with the first chunk, then the last chunk: two writes on the TLS layer).

The client side and the h1 protocol are the same code in both columns, so the difference between
them is the server's TLS layer (and what it makes the layers above do). The OpenSSL work (both
sides' handshakes and records) is in both columns too: read the difference, not the ratio.
"""
from __future__ import annotations

import argparse
import sys
import time

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from txgate.http.exchange import Limits, NullHandler
from txgate.runtime.listener import ListenerFactory
from txgate.tls.server import ServerTLS
from txgate.tls.serverconn import TLSServerFactory
from txgate.tlswrap import DirectTLSFactory

CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
KEEP = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


class _Hello(NullHandler):
    """Answers ``200 hello`` once the request is complete (so that the connection stays open)."""

    __slots__ = ("stream", "length")

    def __init__(self, stream, length: int | None = 6) -> None:
        super().__init__()
        self.stream = stream
        self.length = length

    def body_finished(self) -> None:
        s, self.stream = self.stream, None
        s.start_response(200, [(b"content-type", b"text/plain")], self.length)
        s.write(b"hello\n")
        s.finish()


class _Dispatcher:
    metrics = None

    def __init__(self, length: int | None = 6) -> None:
        self.length = length

    def dispatch(self, stream, head):
        return _Hello(stream, self.length)

    def log_request(self, *args) -> None:
        pass


class _Client(Protocol):
    def __init__(self) -> None:
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)


def _certified_key():
    import tempfile
    from datetime import datetime, timezone

    from txgate.tls.localca import LocalCA

    now = datetime.now(timezone.utc)
    return LocalCA.ensure(tempfile.mkdtemp(prefix="txgate-tls-bench-"), now=now).issue_server(["bench"], now=now)


class Bench:
    def __init__(self) -> None:
        self.server_tls = ServerTLS(default=_certified_key())
        self.clock = Clock()
        cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        cctx.set_alpn_protos([b"http/1.1"])

        @implementer(IOpenSSLClientConnectionCreator)
        class Creator:
            def clientConnectionForTLS(self, proto):
                return SSL.Connection(cctx, None)

        self.client_factory = DirectTLSFactory(Creator(), True, Factory.forProtocol(_Client), clock=self.clock)

    def top(self, kind: str, length: int | None = 6):
        listener = ListenerFactory("bench", _Dispatcher(length), Limits(), self.clock, tls=True, max_connections=1 << 30)
        if kind == "twisted":
            return DirectTLSFactory(self.server_tls, False, listener, clock=self.clock)
        return TLSServerFactory(self.server_tls, listener)

    def connect(self, top):
        sp = top.buildProtocol(None)
        cp = self.client_factory.buildProtocol(None)
        pump = iosim.connect(sp, iosim.makeFakeServer(sp), cp, iosim.makeFakeClient(cp), greet=False)
        pump.flush()
        return sp, cp, pump

    def new_connections(self, kind: str, n: int) -> float:
        top = self.top(kind)
        t0 = time.process_time()
        for _ in range(n):
            sp, cp, pump = self.connect(top)
            cp.write(CLOSE)
            pump.flush()
            cp.loseConnection()
            pump.flush()
            self.clock.advance(0)
        return (time.process_time() - t0) / n * 1e6

    def keepalive(self, kind: str, n: int, length: int | None = 6) -> float:
        sp, cp, pump = self.connect(self.top(kind, length))
        cp.write(KEEP)
        pump.flush()
        t0 = time.process_time()
        for _ in range(n):
            cp.write(KEEP)
            pump.flush()
        return (time.process_time() - t0) / n * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tls_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=300, help="new connections per round (default 300)")
    p.add_argument("--requests", type=int, default=3000, help="keep-alive requests per round (default 3000)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per layer (default 5)")
    a = p.parse_args(argv)
    b = Bench()
    results = {(kind, key): [] for kind in ("twisted", "txgate") for key in ("conn", "req", "chunked")}
    b.new_connections("twisted", 20)
    b.new_connections("txgate", 20)
    for _ in range(a.rounds):
        for kind in ("twisted", "txgate"):
            results[(kind, "conn")].append(b.new_connections(kind, a.connections))
            results[(kind, "req")].append(b.keepalive(kind, a.requests))
            results[(kind, "chunked")].append(b.keepalive(kind, a.requests, None))
    print("| load (in memory, both sides in this process) | Twisted TLSMemoryBIOProtocol us | txgate TLSServerProtocol us | difference us |")
    print("|---|---|---|---|")
    for key, title in (("conn", "new connection (handshake + GET + close)"), ("req", "keep-alive request"),
                       ("chunked", "keep-alive, chunked response")):
        old, new = min(results[("twisted", key)]), min(results[("txgate", key)])
        print(f"| {title} | {old:.1f} | {new:.1f} | {old - new:.1f} |")
    print(f"best of {a.rounds} alternating rounds, process CPU time; {a.connections} connections, "
          f"{a.requests} requests per round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
