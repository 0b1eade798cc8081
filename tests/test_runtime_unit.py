"""Runtime pieces without sockets: port moves of a swap, reload coalescing, store-change reasons,
handshake-failure outcomes, and max_connections refused by the listener before TLS is built."""
from __future__ import annotations

from types import SimpleNamespace

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.task import Clock

from certs_helpers import make_ca, make_leaf
from txgate.http.exchange import Limits
from txgate.runtime.listener import ListenerFactory, wrap_tls
from txgate.runtime.reload import Coalescer, Debounce, plan_port_moves, store_change_reason
from txgate.tls.outcomes import HandshakeOutcome, classify_handshake_failure
from txgate.tls.server import ServerTLS


def _ln(name, host="127.0.0.1", port=8000):
    return SimpleNamespace(name=name, host=host, port=port)


def test_port_moves_keep_same_binds_adopt_freed_ones_and_close_the_rest():
    binds = {"a": ("127.0.0.1", 8000), "b": ("127.0.0.1", 8001), "c": ("127.0.0.1", 8002)}
    moves = plan_port_moves(binds, [_ln("a", port=8000), _ln("renamed", port=8001), _ln("new", port=9000)])
    assert moves.keep == {"a"}
    assert moves.adopted == {"renamed": "b"}
    assert moves.to_open == ["new"]
    assert moves.closed == ["c"]


def test_port_moves_never_adopt_a_port_0_bind():
    moves = plan_port_moves({"a": ("127.0.0.1", 0)}, [_ln("b", port=0)])
    assert (moves.adopted, moves.to_open, moves.closed) == ({}, ["b"], ["a"])


def test_port_moves_rebind_a_listener_whose_address_changed():
    moves = plan_port_moves({"a": ("127.0.0.1", 8000)}, [_ln("a", port=8001)])
    assert (moves.keep, moves.to_open, moves.closed) == (set(), ["a"], ["a"])


def test_coalescer_runs_one_at_a_time_and_shares_the_queued_run():
    gates, reasons = [], []

    def run(reason):
        reasons.append(reason)
        gates.append(defer.Deferred())
        return gates[-1]

    c = Coalescer(run)
    first, second, third = c("a"), c("b"), c("c")
    assert reasons == ["a"]
    gates[0].callback("one")
    assert reasons == ["a", "b"]  # the queued run takes the first queued reason
    gates[1].callback("two")
    results = [[], [], []]
    for d, out in zip((first, second, third), results):
        d.addCallback(out.append)
    assert results == [["one"], ["two"], ["two"]]


def test_debounce_fires_once_after_a_quiet_period():
    clock, fired = Clock(), []
    d = Debounce(clock, 0.2, fired.append)
    for name in ("web", "api", "web"):
        d.add(name)
        clock.advance(0.1)
    assert fired == []
    clock.advance(0.2)
    assert fired == [{"web", "api"}]
    assert store_change_reason(fired[0]) == "store change: api, web"
    assert store_change_reason({None, "web"}) == "store change: resync"


def test_debounce_cancel_drops_the_pending_call():
    clock, fired = Clock(), []
    d = Debounce(clock, 0.2, fired.append)
    d.add("web")
    d.cancel()
    clock.advance(1)
    assert fired == []


def test_handshake_failure_outcomes():
    openssl = SSL.Error([("SSL routines", "", "peer did not return a certificate")])
    failure = classify_handshake_failure(openssl)
    assert (failure.why, failure.outcome, failure.no_client_certificate) == (
        "peer did not return a certificate", HandshakeOutcome.FAILED, True)
    plain = classify_handshake_failure(SSL.Error([("SSL routines", "", "http request")]))
    assert (plain.outcome, plain.no_client_certificate) == ("protocol_error", False)
    from twisted.internet.error import ConnectionDone

    gone = classify_handshake_failure(ConnectionDone())
    assert gone.outcome is HandshakeOutcome.ABORTED and gone.why.startswith("ConnectionDone")


def test_a_tls_listener_at_max_connections_builds_no_tls_protocol():
    ca = make_ca("runtime unit CA")
    clock = Clock()
    factory = ListenerFactory("main", object(), Limits(), clock, tls=True, max_connections=1)
    top = wrap_tls(factory, ServerTLS(default=make_leaf(ca, ["localhost"])), clock)
    factory.connections.add(object())  # one open connection: the limit
    assert top.buildProtocol(None) is None
    assert factory.refused == 1
    factory.connections.clear()
    assert top.buildProtocol(None) is not None
