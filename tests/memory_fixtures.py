"""Fixtures for the in-memory unit tests (txgate.testing): test CAs and gateways stopped after each test.

Test modules import them by name (``from memory_fixtures import make, pki``) so pytest sees them.
"""
from __future__ import annotations

import pytest

from txgate.testing import MemoryGateway, TestPKI, gateway_ini


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> TestPKI:
    """The CA the gateway's listener certificate and trusted upstreams come from."""
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> TestPKI:
    """A CA nobody trusts."""
    return TestPKI(tmp_path_factory.mktemp("other-pki"), name="unrelated CA")


@pytest.fixture
def make(pki):
    """make(api_lines, upstream=..., listener=...) -> a MemoryGateway with API `a` at /a; all stopped at the end."""
    gateways = []

    def start(api_lines: str = "", upstream: str = "http://a.internal:8080", listener: str = "") -> MemoryGateway:
        ini = gateway_ini(pki.issue("localhost"), f"[api:a]\npath = /a\nupstream = {upstream}\n{api_lines}",
                          listener=listener)
        gw = MemoryGateway(ini, pki=pki)
        gateways.append(gw)
        return gw

    yield start
    for gw in gateways:
        gw.stop()
