"""A Kubernetes Secret's certificate with worker processes (`[gateway] workers = 2`): the supervisor follows the
Secret; both workers serve it, and both switch to a new version applied with kubectl, with no failed request."""
from __future__ import annotations

import http.client
import socket
import ssl

import pytest
from certs_helpers import make_ca, make_leaf
from conftest import poll
from cryptography import x509

from k8s_apiserver import FakeApiServer
from test_k8s_e2e import Load, apply_secret, config, write_ca
from test_workers_e2e import served_by, workers_of

FRESH = 40  # fresh connections per check: with worker_affinity = none the kernel spreads them over both workers


@pytest.fixture
def api(tmp_path):
    server = FakeApiServer(tmp_path)
    yield server
    server.close()


class Client:
    """Requests on fresh TLS connections verified against the site CA, counted (to know when metrics are complete)."""

    def __init__(self, port: int, ca_path: str) -> None:
        self.port, self.ctx, self.sent = port, ssl.create_default_context(cafile=ca_path), 0

    def fetch(self) -> tuple[int, x509.Certificate]:
        """One request: (status, the served leaf)."""
        self.sent += 1
        conn = http.client.HTTPSConnection("site.example", self.port, context=self.ctx, timeout=10)
        conn._create_connection = lambda addr, *a, **kw: socket.create_connection(("127.0.0.1", addr[1]), *a, **kw)
        try:
            conn.connect()
            leaf = x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True))
            conn.request("GET", "/echo")
            resp = conn.getresponse()
            resp.read()
            return resp.status, leaf
        finally:
            conn.close()


def counted(gw, total: int) -> dict[int, int]:
    """Each worker's request count, once the workers' metrics files (flushed every 0.5 s) add up to ``total``."""
    def complete():
        c = served_by(gw)
        return [c] if sum(c.values()) == total else None

    return poll(complete, 10, what=f"{total} requests counted")[0]


def both_workers_serve(gw, pids: set, client: Client, leaf: x509.Certificate, others: int = 0) -> None:
    """FRESH connections all get ``leaf`` and a 200, and both workers served some of them (their metrics say).

    ``others``: the requests sent by anyone else so far (all of them are counted before these)."""
    before = counted(gw, client.sent + others)
    for i in range(FRESH):
        status, seen = client.fetch()
        assert (status, seen) == (200, leaf), f"connection {i}: {status}, {seen.serial_number:x}"
    after = counted(gw, client.sent + others)
    assert {pid for pid in pids if after.get(pid, 0) > before.get(pid, 0)} == pids, (before, after)


def test_two_workers_serve_the_secret_and_switch_together(api, tmp_path, gateway_factory):
    site_ca = make_ca("site CA")
    ca_path = write_ca(tmp_path, site_ca)
    v1 = make_leaf(site_ca, ["site.example"])
    apply_secret(api, tmp_path, "web", "site-tls", v1)
    text = config(api.kubeconfig(tmp_path / "kubeconfig"), "k8s-secret:web/site-tls").replace(
        "[gateway]\n", "[gateway]\nworkers = 2\nworker_affinity = none\n")
    gw = gateway_factory(text, workers=None)  # the worker count from gw.ini
    gw.wait_log(r"2 workers serving", timeout=30)
    pids = set(workers_of(gw).values())
    assert len(pids) == 2
    client = Client(gw.port, ca_path)
    both_workers_serve(gw, pids, client, v1.leaf)
    # kubectl apply of a new certificate: both workers switch, and nothing fails meanwhile.
    load = Load(gw.port, ca_path)
    v2 = make_leaf(site_ca, ["site.example"])
    try:
        apply_secret(api, tmp_path, "web", "site-tls", v2)
        gw.wait_log(r"reloaded \(.*\): .*; 2 workers", timeout=30)
        poll(lambda: all(client.fetch()[1] == v2.leaf for _ in range(10)), 10,
             what="the new certificate on ten fresh connections in a row")
        ok = load.ok
        poll(lambda: load.ok > ok + 20, 10, what="requests under load after the switch")
    finally:
        load.stop()
    assert load.failures == [], load.failures[:3]
    both_workers_serve(gw, pids, client, v2.leaf, others=load.ok)
    assert set(workers_of(gw).values()) == pids  # the same workers: a hot reload, no restart
