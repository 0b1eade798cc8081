# -*- test-case-name: tests.test_testing_harness -*-
"""Public test doubles and the in-memory gateway harness (no sockets, no threads, a clock you move).

    from txgate.testing import MemoryGateway, Respond, TestPKI

    pki = TestPKI(tmp_path)
    leaf = pki.issue("localhost")
    gw = MemoryGateway(f'''
    [admin]
    bind = off
    [gateway]
    access_log = off
    [listener:main]
    bind = 127.0.0.1:0
    certificate = {leaf.cert_path} {leaf.key_path}
    [api:orders]
    path = /orders
    upstream = http://orders.internal:8080
    ''', pki=pki)
    orders = gw.upstream("http://orders.internal:8080").queue(Respond.json({"id": 1}))
    response = gw.get("/orders/1")
    assert response.status == 200 and orders.requests[0].path == "/orders/1"
    gw.stop()

See docs/testing.md. Names exported here are the stable API; the submodules' other names are not.
"""
from __future__ import annotations

from txgate.testing.client import GatewayClient, Response
from txgate.testing.gateway import LogCapture, MemoryGateway, client_creator, gateway_ini
from txgate.testing.network import MemoryNetwork
from txgate.testing.pki import TestPKI
from txgate.testing.upstream import (
    CloseMidBody,
    Connect,
    Drop,
    Hang,
    RecordedRequest,
    Respond,
    UpstreamConnectionRecord,
    UpstreamDouble,
)
from txgate.testing.wire import Link, MemoryTransport

__all__ = [
    "CloseMidBody", "Connect", "Drop", "GatewayClient", "Hang", "Link", "LogCapture", "MemoryGateway",
    "MemoryNetwork", "MemoryTransport", "RecordedRequest", "Respond", "Response", "TestPKI",
    "UpstreamConnectionRecord", "UpstreamDouble", "client_creator", "gateway_ini",
]
