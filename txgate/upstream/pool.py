# -*- test-case-name: tests.test_pool_unit -*-
"""Per-target connection pools: keep-alive reuse, a cap on connections, a bounded wait queue."""
from __future__ import annotations

from collections import deque

from twisted.internet import error as ierror
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from txgate.tlswrap import DirectTLSFactory

from txgate.config import Target
from txgate.errors import GatewayError, UpstreamBusy, UpstreamTimeout, UpstreamTLSError, UpstreamUnavailable
from txgate.tls.client import upstream_tls_error
from txgate.upstream.connection import UpstreamConnection

log = Logger()

IDLE_TIMEOUT = 30.0  # below common server keep-alive timeouts (nginx: 75 s), to avoid reuse races


class _Factory(ClientFactory):
    noisy = False  # no "Starting factory" / "Stopping factory" line per upstream connection
    def __init__(self, pool: TargetPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr):
        conn = UpstreamConnection(self.pool, self.pool.tls_creator is not None)
        self.pool.pending_connections[conn] = None
        return conn

    def clientConnectionFailed(self, connector, reason):
        self.pool.connect_failed(reason)


class TargetPool:
    """Connections to one target for one API (TLS settings are per API)."""

    def __init__(self, reactor, target: Target, *, tls_creator=None, max_connections: int = 64,
                 max_pending: int = 256, connect_timeout: float = 5.0,
                 max_response_header_bytes: int = 65536) -> None:
        self.reactor = reactor
        self.target = target
        self.label = target.label
        default_port = 443 if target.tls else 80
        host = f"[{target.host}]" if ":" in target.host else target.host
        self.host_value = (host if target.port == default_port else f"{host}:{target.port}").encode("ascii", "replace")
        self.base_path = target.base_path.encode("latin-1")
        self.tls_creator = tls_creator
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self.max_response_header_bytes = max_response_header_bytes
        self.idle: list[UpstreamConnection] = []
        self.busy = 0  # connections handed out
        self.connecting = 0
        self.waiters: deque = deque()
        self.pending_connections: dict[UpstreamConnection, None] = {}
        self.all: set[UpstreamConnection] = set()
        factory = _Factory(self)
        if tls_creator is not None:
            factory = DirectTLSFactory(tls_creator, True, factory, clock=reactor)
        self.factory = factory
        self.closed = False
        self._sweep_call = None
        # For the status page: when the target last answered, and its last failure (code, when).
        self.last_success: float | None = None
        self.last_failure: tuple[str, float] | None = None

    @property
    def open_connections(self) -> int:
        return len(self.all) + self.connecting

    # -- acquiring ---------------------------------------------------------------------
    def acquire(self, requester) -> None:
        """Hand requester a connection now or later: requester.upstream_ready(conn, reused) or .upstream_failed(pool, err)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.lost:
                continue
            conn.checked_out = True
            self.busy += 1
            requester.upstream_ready(conn, True)
            return
        if self.busy + self.connecting < self.max_connections:
            self.waiters.append(requester)
            self._connect()
            return
        if len(self.waiters) >= self.max_pending + self.connecting:
            raise UpstreamBusy(
                f"{self.label}: {self.max_connections} connections busy and {self.max_pending} requests waiting"
            )
        self.waiters.append(requester)

    def cancel(self, requester) -> None:
        """A waiting requester gave up (client gone or timeout)."""
        try:
            self.waiters.remove(requester)
        except ValueError:
            pass

    def _connect(self) -> None:
        self.connecting += 1
        t = self.target
        self.reactor.connectTCP(t.host, t.port, self.factory, timeout=self.connect_timeout)

    # -- connection events --------------------------------------------------------------
    def connection_ready(self, conn: UpstreamConnection) -> None:
        self.pending_connections.pop(conn, None)
        self.connecting -= 1
        self.all.add(conn)
        self.checkin(conn)

    def connection_failed(self, conn: UpstreamConnection, reason) -> None:
        """The connection closed before it was ready (TLS failure, reset during handshake)."""
        # (The dict's values are all None: test membership, not the popped value.)
        if conn not in self.pending_connections:
            return
        del self.pending_connections[conn]
        self.connect_failed(reason, timed_out=conn.handshake_timed_out)

    def connect_failed(self, reason, timed_out: bool = False) -> None:
        self.connecting -= 1
        err = self._classify(reason, timed_out)
        # Not logged here: the request that waited for this connection logs it (one line per rejection).
        # One failure fails one waiter; the others get their own attempt.
        if self.waiters:
            requester = self.waiters.popleft()
            requester.upstream_failed(self, err)
        self._maybe_connect_for_waiters()

    def _classify(self, reason, timed_out: bool = False) -> GatewayError:
        exc = reason.value
        if isinstance(exc, UpstreamTLSError):
            return upstream_tls_error(self.label, reason, in_handshake=True)
        if timed_out or isinstance(exc, (ierror.TimeoutError, ierror.UserError)):
            return UpstreamTimeout(f"{self.label}: connect timed out after {self.connect_timeout:g}s")
        if self.tls_creator is not None and not isinstance(exc, (ierror.ConnectionRefusedError, ierror.DNSLookupError, ierror.NoRouteError)):
            return upstream_tls_error(self.label, reason, in_handshake=True)
        if isinstance(exc, ierror.ConnectionRefusedError):
            return UpstreamUnavailable(f"{self.label}: connection refused")
        if isinstance(exc, ierror.DNSLookupError):
            return UpstreamUnavailable(f"{self.label}: host name lookup failed")
        return UpstreamUnavailable(f"{self.label}: {exc.__class__.__name__}: {exc}")

    def checkin(self, conn: UpstreamConnection, now: float | None = None) -> None:
        """A connection is free (new, or its exchange ended): hand it to the first waiter or park it if
        it is clean, else close it (``now``: the clock, when the caller has read it)."""
        if conn.checked_out:
            conn.checked_out = False
            self.busy -= 1
        if conn.lost or conn.no_reuse or self.closed:
            conn.close()
            self._maybe_connect_for_waiters()
            return
        if self.waiters:
            requester = self.waiters.popleft()
            conn.checked_out = True
            self.busy += 1
            requester.upstream_ready(conn, False)
            return
        # Idle expiry by timestamp and one sweep per pool, not a timer per parked connection
        # (a connection is parked after every request on a busy route).
        conn.idle_since = self.reactor.seconds() if now is None else now
        self.idle.append(conn)
        if self._sweep_call is None:
            self._sweep_call = self.reactor.callLater(IDLE_TIMEOUT / 2, self._sweep_idle)

    def connection_closed(self, conn: UpstreamConnection) -> None:
        """A ready connection went away (idle close by the server, or after use)."""
        self.all.discard(conn)
        if conn.checked_out:
            conn.checked_out = False
            self.busy -= 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._maybe_connect_for_waiters()

    def _maybe_connect_for_waiters(self) -> None:
        while (
            self.waiters
            and not self.closed
            and self.busy + self.connecting < self.max_connections
            and self.connecting < len(self.waiters)
        ):
            self._connect()

    def _sweep_idle(self) -> None:
        self._sweep_call = None
        cutoff = self.reactor.seconds() - IDLE_TIMEOUT
        expired = [c for c in self.idle if c.idle_since <= cutoff]
        if expired:
            self.idle = [c for c in self.idle if c.idle_since > cutoff]
            for conn in expired:
                conn.close()
        if self.idle and not self.closed:
            self._sweep_call = self.reactor.callLater(IDLE_TIMEOUT / 2, self._sweep_idle)

    def close(self) -> None:
        """Close idle connections and stop reusing busy ones (shutdown or reload)."""
        self.closed = True
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
