# -*- test-case-name: tests.test_negotiator_unit -*-
"""TLS wrapping without Twisted's small-write aggregation.

Twisted's default TLS transport (`BufferingTLSTransport`) queues every write and flushes it
with a `callLater(0)`. txgate's protocols already hand TLS one write per response (h1 joins
head and body; h2 flushes once per burst), so the aggregation only adds a timer per request
on the hot path. The TCP transport below still coalesces socket sends per reactor turn.
"""
from __future__ import annotations

from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol


class DirectTLSFactory(TLSMemoryBIOFactory):
    """`TLSMemoryBIOFactory` whose connections write to OpenSSL at once."""

    protocol = TLSMemoryBIOProtocol

    def buildProtocol(self, addr):
        """No TLS protocol for a connection the wrapped factory refuses (None: the port closes the socket)."""
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)
