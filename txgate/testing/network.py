# -*- test-case-name: tests.test_testing_harness -*-
"""The in-memory network: completes a MemoryReactorClock's connectTCP calls and moves time and bytes."""
from __future__ import annotations

import itertools
from typing import Any, Protocol as TypingProtocol

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from txgate.testing.wire import Link

#: Safety net for `MemoryNetwork.flush`: a network that never goes quiet is a bug in a protocol.
MAX_ROUNDS = 100_000


class Host(TypingProtocol):
    """What answers connection attempts at one (host, port) of a `MemoryNetwork`."""

    def connection_attempt(self, network: MemoryNetwork, factory: Any, connector: Any, timeout: float) -> None:
        """Accept (``network.accept``), refuse or ignore one connectTCP call."""


def address(host: str, port: int) -> IPv4Address | IPv6Address:
    """An ``IAddress`` for host and port (IPv6 when host is an IPv6 literal)."""
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class MemoryNetwork:
    """Connects what code running on ``reactor`` asks to connect, to the `Host` registered there.

    Code under test keeps calling ``reactor.connectTCP(host, port, factory, timeout=...)`` and
    ``reactor.listenTCP`` as it does in production; the network completes those calls when it is
    flushed: a registered `Host` decides (accept, refuse, never answer); an address nobody
    registered refuses the connection, as a closed port does.
    """

    def __init__(self, reactor: MemoryReactorClock | None = None) -> None:
        self.reactor = reactor if reactor is not None else MemoryReactorClock()
        self.hosts: dict[tuple[str, int], Host] = {}
        self.links: list[Link] = []
        self.attempts: list[tuple[str, int]] = []
        self._ports = itertools.count(50000)

    def register(self, host: str, port: int, answer: Host) -> None:
        """Make ``answer`` handle connection attempts to host:port."""
        self.hosts[(host.strip("[]").lower(), port)] = answer

    # -- connecting -----------------------------------------------------------------------------
    def client_address(self, host: str = "127.0.0.1") -> IPv4Address | IPv6Address:
        """A fresh client-side address (an ephemeral port)."""
        return address(host, next(self._ports))

    def accept(self, client_factory: Any, server_protocol: Any, *, to: Any, connector: Any = None) -> Link:
        """Connect a client factory's new protocol to ``server_protocol`` (listening at address ``to``)."""
        local = self.client_address()
        client = client_factory.buildProtocol(to)
        link = Link(client, server_protocol, local, to)
        self.links.append(link)
        link.start()
        return link

    def connect(self, client_protocol: Any, server_factory: Any, *, to: Any) -> Link | None:
        """Connect ``client_protocol`` to a listening factory (``reactor.tcpServers``), as an accept would.

        A factory that returns None (e.g. max_connections) gets the connection closed at once:
        the client sees ``connectionMade`` then ``connectionLost``, and None is returned.
        """
        local = self.client_address()
        server = server_factory.buildProtocol(local)
        if server is None:
            refused = Link(client_protocol, _Closed(), local, to)
            refused.start()
            refused.server.abortConnection()
            self.links.append(refused)
            self.flush()
            return None
        link = Link(client_protocol, server, local, to)
        self.links.append(link)
        link.start()
        return link

    def _complete_connects(self) -> bool:
        reactor = self.reactor
        busy = False
        while reactor.tcpClients:
            host, port, factory, timeout, _bind = reactor.tcpClients.pop(0)
            connector = reactor.connectors.pop(0)
            busy = True
            self.attempts.append((host, port))
            answer = self.hosts.get((host.strip("[]").lower(), port))
            if answer is None:
                refuse(factory, connector)
            else:
                answer.connection_attempt(self, factory, connector, timeout)
        return busy

    # -- time and bytes ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Complete connection attempts, run calls due now and pump every link until nothing moves."""
        for _ in range(MAX_ROUNDS):
            busy = self._complete_connects()
            self.reactor.advance(0)
            for link in list(self.links):
                busy = link.pump() or busy
            self.links = [link for link in self.links if not link.done]
            if not busy and not self.reactor.tcpClients:
                return
        raise AssertionError("the in-memory network never went quiet (a protocol loops?)")

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``, stopping at every scheduled call to flush the network."""
        self.flush()
        reactor = self.reactor
        target = reactor.seconds() + seconds
        for _ in range(MAX_ROUNDS):
            due = [c.getTime() for c in reactor.getDelayedCalls() if c.active() and c.getTime() <= target]
            if not due:
                break
            reactor.advance(max(0.0, min(due) - reactor.seconds()))
            self.flush()
        else:
            raise AssertionError("timers keep rescheduling themselves at the same time")
        if target > reactor.seconds():
            reactor.advance(target - reactor.seconds())
        self.flush()


def refuse(factory: Any, connector: Any) -> None:
    """Fail a connection attempt as a closed port does (``ConnectionRefusedError``)."""
    factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))


def never_answer(network: MemoryNetwork, factory: Any, connector: Any, timeout: float) -> None:
    """Let a connection attempt time out after ``timeout`` seconds, as a host that drops SYNs does."""
    network.reactor.callLater(timeout, factory.clientConnectionFailed, connector,
                              Failure(error.TimeoutError(string=f"connect timed out after {timeout:g}s")))


class _Closed:
    """The server side of a connection a listener refused: closes at once, reads nothing."""

    transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        pass
