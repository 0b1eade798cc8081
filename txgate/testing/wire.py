# -*- test-case-name: tests.test_testing_harness -*-
"""In-memory TCP connections: a transport pair that moves bytes when pumped, with TCP-like flow control."""
from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import implementer

#: Bytes a reader may leave unread before the writer's producer is paused (a socket buffer's worth).
HIGH_WATER = 65536
#: Largest piece delivered to ``dataReceived`` at once (a large write arrives in several reads).
SEGMENT = 16384


@implementer(ITCPTransport, IConsumer, IPushProducer)
class MemoryTransport:
    """One end of an in-memory connection: writes are queued until the `Link` is pumped.

    Unlike ``twisted.test.iosim.FakeTransport`` it honours ``pauseProducing`` (a paused reader
    receives nothing and, past `HIGH_WATER` unread bytes, pauses the peer's producer) and tells
    ``abortConnection`` (the peer sees ``ConnectionLost``) from ``loseConnection``
    (``ConnectionDone`` once everything written was delivered).
    """

    def __init__(self, protocol: Any, host: IPv4Address, peer: IPv4Address) -> None:
        self.protocol = protocol
        self.host = host
        self.peer = peer
        self.outgoing: list[bytes] = []
        self.incoming: list[bytes] = []
        self.disconnecting = False
        self.aborted = False
        self.closed = False
        self.reading_paused = False
        self.producer: Any = None
        self.streaming = False
        self.producer_paused = False
        self.bytes_written = 0
        self.peer_end: MemoryTransport | None = None  # set by the Link

    # -- ITransport ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue bytes for the peer (dropped once the connection is closing, like Twisted's)."""
        if self.disconnecting or self.closed:
            return
        if data:
            self.outgoing.append(bytes(data))
            self.bytes_written += len(data)
            self.throttle()

    def writeSequence(self, data) -> None:
        """Queue several byte strings."""
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close after everything written has been delivered."""
        self.disconnecting = True

    def abortConnection(self) -> None:
        """Reset the connection: bytes written so far still leave (they had reached the socket), then
        the peer sees ``ConnectionLost`` and loses what it had not read yet."""
        self.disconnecting = True
        self.aborted = True

    def getPeer(self) -> IPv4Address:
        """The remote address."""
        return self.peer

    def getHost(self) -> IPv4Address:
        """The local address."""
        return self.host

    def logPrefix(self) -> str:
        """Identify this transport in log events."""
        return "memory"

    # -- ITCPTransport (no sockets: accepted and ignored) ------------------------------------
    def loseWriteConnection(self) -> None:
        """Half-close is not modelled: same as ``loseConnection``."""
        self.loseConnection()

    def getTcpNoDelay(self) -> bool:
        """Always true in memory."""
        return True

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Ignored."""

    def getTcpKeepAlive(self) -> bool:
        """Always false in memory."""
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """Ignored."""

    # -- IConsumer: the protocol's producer, paused when the peer stops reading ------------
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register the producer the peer's reading speed throttles."""
        self.producer = producer
        self.streaming = streaming
        self.producer_paused = False
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        """Forget the producer."""
        self.producer = None

    # -- IPushProducer: this end's reading ----------------------------------------------------
    def pauseProducing(self) -> None:
        """Stop delivering received bytes to the protocol (they wait in `incoming`)."""
        self.reading_paused = True

    def resumeProducing(self) -> None:
        """Deliver received bytes again (on the next pump)."""
        self.reading_paused = False

    def stopProducing(self) -> None:
        """Close the connection."""
        self.loseConnection()

    @property
    def unread(self) -> int:
        """Bytes received but not yet delivered to the protocol."""
        return sum(len(b) for b in self.incoming)

    @property
    def backlog(self) -> int:
        """Bytes written that the peer's protocol has not read yet."""
        peer = self.peer_end
        return sum(len(b) for b in self.outgoing) + (peer.unread if peer is not None else 0)

    def throttle(self) -> bool:
        """Pause or resume the registered producer by the backlog, as a socket buffer does; whether it changed."""
        producer = self.producer
        if producer is None or not self.streaming:
            return False
        backlog = self.backlog
        if backlog > HIGH_WATER and not self.producer_paused:
            self.producer_paused = True
            producer.pauseProducing()
            return True
        if backlog <= HIGH_WATER and self.producer_paused:
            self.producer_paused = False
            producer.resumeProducing()
            return True
        return False


class Link:
    """Two `MemoryTransport` ends and the protocols on them; `pump` moves bytes and closes."""

    def __init__(self, client: Any, server: Any, client_address: IPv4Address, server_address: IPv4Address) -> None:
        self.client = MemoryTransport(client, client_address, server_address)
        self.server = MemoryTransport(server, server_address, client_address)
        self.client.peer_end, self.server.peer_end = self.server, self.client
        self.done = False

    def start(self) -> None:
        """``makeConnection`` on both protocols (the server first, as a listening reactor does)."""
        self.server.protocol.makeConnection(self.server)
        self.client.protocol.makeConnection(self.client)

    def pump(self) -> bool:
        """Deliver what each side wrote and close what was closed; whether anything happened."""
        if self.done:
            return False
        c, s = self.client, self.server
        if not (c.outgoing or s.outgoing or c.incoming or s.incoming or c.disconnecting or s.disconnecting
                or c.producer_paused or s.producer_paused):
            return False  # nothing to move, close or resume (a test with a thousand quiet links stays fast)
        moved = self._move(self.client, self.server)
        moved = self._move(self.server, self.client) or moved
        return self._close() or moved

    def _move(self, src: MemoryTransport, dst: MemoryTransport) -> bool:
        moved = False
        if src.outgoing:
            dst.incoming.extend(src.outgoing)
            src.outgoing.clear()
            moved = True
        while dst.incoming and not dst.reading_paused and not dst.closed:
            # One segment at a time, so a reader that pauses mid-way leaves the rest unread.
            data = dst.incoming[0]
            if len(data) > SEGMENT:
                dst.incoming[0] = data[SEGMENT:]
                data = data[:SEGMENT]
            else:
                dst.incoming.pop(0)
            dst.protocol.dataReceived(data)
            moved = True
        return src.throttle() or moved

    def _close(self) -> bool:
        for end, other in ((self.client, self.server), (self.server, self.client)):
            if not end.disconnecting:
                continue
            if not end.aborted and (end.outgoing or other.incoming):
                return False  # a graceful close waits for its bytes to be read
            self.done = True
            end.closed = other.closed = True
            mine = Failure(error.ConnectionDone("Connection was closed cleanly."))
            theirs = Failure(error.ConnectionLost("Connection was reset by the peer.") if end.aborted
                             else error.ConnectionDone("Connection was closed cleanly."))
            other.incoming.clear()
            end.protocol.connectionLost(mine)
            other.protocol.connectionLost(theirs)
            return True
        return False
