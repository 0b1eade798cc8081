"""The upstream pool in memory (txgate.testing): keep-alive reuse, limits, idle sweep, failover, retry-once, timeouts."""
from __future__ import annotations

import pytest

from memory_fixtures import make, pki  # noqa: F401 (fixtures)
from txgate.testing import CloseMidBody, Connect, Drop, Hang, Respond
from txgate.upstream.pool import IDLE_TIMEOUT


def test_sequential_requests_reuse_one_upstream_connection(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080")
    client = gw.client()
    assert [client.get(f"/a/{i}").status for i in range(3)] == [200, 200, 200]
    assert [r.connection for r in up.requests] == [0, 0, 0]
    assert len(up.connections) == 1


def test_connections_are_shared_across_downstream_clients(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080")
    assert gw.get("/a/1").status == 200
    assert gw.get("/a/2", alpn=("h2",)).status == 200
    assert len(up.connections) == 1 and len(up.requests) == 2


def test_upstream_connection_close_header_is_not_reused(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080").queue(Respond(200, b"x", (("connection", "close"),)))
    client = gw.client()
    assert client.get("/a/1").status == 200
    assert client.get("/a/2").status == 200
    assert [r.connection for r in up.requests] == [0, 1]


def test_request_waits_for_the_busy_connection_then_reuses_it(make):
    gw = make("max_connections = 1\nmax_pending = 1\n")
    up = gw.upstream("http://a.internal:8080").queue(Hang())
    first = gw.client().request("GET", "/a/first")
    second = gw.client().request("GET", "/a/second")
    gw.flush()
    assert (first.status, second.status) == (None, None)
    assert len(up.connections) == 1 and [r.path for r in up.requests] == ["/a/first"]
    up.release(Respond(200, b"one"))
    assert (first.status, first.body, second.status, second.body) == (200, b"one", 200, b"ok")
    assert [r.connection for r in up.requests] == [0, 0]


def test_full_wait_queue_answers_503_upstream_busy(make):
    gw = make("max_connections = 1\nmax_pending = 1\n")
    gw.upstream("http://a.internal:8080").queue(Hang())
    gw.client().request("GET", "/a/1")
    gw.client().request("GET", "/a/2")
    third = gw.get("/a/3")
    assert third.status == 503 and third.code == "upstream_busy"
    assert "1 connections busy and 1 requests waiting" in gw.logs.error_detail(third.request_id)
    assert gw.logs.matching(r"api a upstream http://a\.internal:8080 upstream_busy")


def test_max_pending_zero_refuses_at_once(make):
    gw = make("max_connections = 1\nmax_pending = 0\n")
    up = gw.upstream("http://a.internal:8080").queue(Hang())
    gw.client().request("GET", "/a/1")
    second = gw.get("/a/2")
    assert second.status == 503 and second.code == "upstream_busy"
    assert len(up.requests) == 1


def test_idle_connection_is_closed_by_the_sweep(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080")
    assert gw.get("/a/1").status == 200
    gw.advance(IDLE_TIMEOUT - 1)
    assert not up.connections[0].closed
    gw.advance(IDLE_TIMEOUT / 2 + 1)
    assert up.connections[0].closed
    assert gw.get("/a/2").status == 200
    assert [r.connection for r in up.requests] == [0, 1]


def test_connection_used_again_stays_parked_past_the_first_idle_period(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080")
    client = gw.client()
    assert client.get("/a/1").status == 200
    gw.advance(IDLE_TIMEOUT - 5)
    assert client.get("/a/2").status == 200
    gw.advance(10)
    assert not up.connections[0].closed
    assert [r.connection for r in up.requests] == [0, 0]


def test_refused_target_fails_over_to_the_next(make):
    gw = make("", upstream="http://a.internal:8080 http://b.internal:8080")
    a = gw.upstream("http://a.internal:8080", connect=Connect.REFUSE)
    b = gw.upstream("http://b.internal:8080")
    response = gw.get("/a/x")
    assert response.status == 200
    assert a.requests == [] and [r.path for r in b.requests] == ["/a/x"]
    assert gw.logs.matching(r"upstream http://a\.internal:8080 upstream_unavailable: .*connection refused; trying the next target")


def test_round_robin_alternates_targets(make):
    gw = make("", upstream="http://a.internal:8080 http://b.internal:8080")
    a, b = gw.upstream("http://a.internal:8080"), gw.upstream("http://b.internal:8080")
    for i in range(4):
        assert gw.get(f"/a/{i}").status == 200
    assert [r.path for r in a.requests] == ["/a/0", "/a/2"]
    assert [r.path for r in b.requests] == ["/a/1", "/a/3"]


def test_every_target_refusing_is_502_upstream_unavailable(make):
    gw = make("", upstream="http://a.internal:8080 http://b.internal:8080")
    gw.upstream("http://a.internal:8080", connect=Connect.REFUSE)
    gw.upstream("http://b.internal:8080", connect=Connect.REFUSE)
    response = gw.get("/a/x")
    assert response.status == 502 and response.code == "upstream_unavailable"
    assert "connection refused" in gw.logs.error_detail(response.request_id)


def test_connect_timeout_on_the_clock_is_504(make):
    gw = make("connect_timeout = 2\n")
    gw.upstream("http://a.internal:8080", connect=Connect.NEVER)
    response = gw.client().request("GET", "/a/x")
    gw.advance(1.9)
    assert response.status is None
    gw.advance(0.2)
    assert response.status == 504 and response.code == "upstream_timeout"
    assert "connect timed out after 2s" in gw.logs.error_detail(response.request_id)


def test_tls_handshake_that_never_finishes_is_a_connect_timeout(make, pki):
    gw = make(f"connect_timeout = 3\nupstream_ca = {pki.ca_path}\n", upstream="https://a.internal:8443")
    up = gw.upstream("https://a.internal:8443", certificate=pki.issue("a.internal"), connect=Connect.SILENT)
    response = gw.client().request("GET", "/a/x")
    gw.advance(2.9)
    assert response.status is None and not up.connections[0].closed
    gw.advance(0.2)
    assert response.status == 504 and response.code == "upstream_timeout"
    assert up.connections[0].closed


def test_unknown_upstream_address_is_refused(make):
    gw = make("")
    response = gw.get("/a/x")  # nothing registered at a.internal:8080
    assert response.status == 502 and response.code == "upstream_unavailable"
    assert gw.network.attempts == [("a.internal", 8080)]


def test_reused_connection_closed_by_the_upstream_is_retried_once(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080").queue(Respond(200, b"one"), Drop(), Respond(200, b"two"))
    client = gw.client()
    assert client.get("/a/1").body == b"one"
    second = client.get("/a/2")
    assert (second.status, second.body) == (200, b"two")
    assert [(r.path, r.connection) for r in up.requests] == [("/a/1", 0), ("/a/2", 0), ("/a/2", 1)]


def test_retry_happens_only_once(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080").queue(Respond(200), Drop(), Drop())
    client = gw.client()
    client.get("/a/1")
    second = client.get("/a/2")
    assert second.status == 502 and second.code == "upstream_unavailable"
    assert len(up.requests) == 3
    assert gw.logs.matching(r"upstream_unavailable: http://a\.internal:8080: connection lost")


def test_request_with_a_body_is_not_retried(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080").queue(Respond(200), Drop())
    client = gw.client()
    client.get("/a/1")
    post = client.fetch("POST", "/a/2", body=b"payload")
    assert post.status == 502 and post.code == "upstream_unavailable"
    assert [r.body for r in up.requests] == [b"", b"payload"]


def test_fresh_connection_dying_is_not_retried(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080").queue(Drop())
    response = gw.get("/a/1")
    assert response.status == 502 and response.code == "upstream_unavailable"
    assert len(up.requests) == 1


def test_response_cut_short_is_not_retried_and_the_client_sees_the_cut(make):
    gw = make("")
    up = gw.upstream("http://a.internal:8080").queue(Respond(200), CloseMidBody(200, b"par", 10))
    client = gw.client()
    client.get("/a/1")
    second = client.get("/a/2")
    assert second.status == 200 and second.body == b"par" and second.reset and not second.complete
    assert len(up.requests) == 2


def test_default_wait_queue_holds_a_burst_of_1024_then_answers_503(make):
    """The default max_pending (1024, Envoy's) lets a burst wait for one busy connection; the next is refused."""
    gw = make("max_connections = 1\n")
    up = gw.upstream("http://a.internal:8080").queue(Hang())
    first = gw.client().request("GET", "/a/first")
    waiting = [gw.client().request("GET", f"/a/{i}") for i in range(1024)]
    gw.flush()
    refused = gw.get("/a/refused")
    assert refused.status == 503 and refused.code == "upstream_busy"
    assert "1 connections busy and 1024 requests waiting" in gw.logs.error_detail(refused.request_id)
    up.release(Respond(200, b"one"))
    gw.flush()
    assert first.status == 200 and [r.status for r in waiting] == [200] * 1024
    assert len(up.connections) == 1 and len(up.requests) == 1025
