"""ACME challenges answered by a process that did not order: worker processes (the supervisor orders, the
workers answer, through state_dir/run/acme-challenges/) and a fleet on one Redis store."""
# -*- test-case-name: tests.test_acme_shared_e2e -*-
from __future__ import annotations

import pytest

from acme_pebble import pebble_available
from conftest import free_port, poll
from test_acme_e2e import NAME, _config, _served_by_pebble, acme_env  # noqa: F401 (a fixture)
from test_workers_e2e import served_by, workers_of

pytestmark = pytest.mark.skipif(not pebble_available(), reason="pebble is not installed (apt-get install pebble)")

FRESH = 30


@pytest.mark.timeout(150)
@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_two_workers_answer_the_supervisors_challenges_and_both_serve_the_certificate(acme_env, tmp_path, challenge):
    start_pebble, start_gateway = acme_env
    http_port, tls_port = free_port(), free_port()
    pebble = start_pebble(http_port, tls_port)
    text = _config(pebble, http_port, tls_port, challenge).replace("[gateway]\n", "[gateway]\nworker_affinity = none\n")
    gw = start_gateway(text, workers="2")
    gw.wait_log(r"2 workers serving", timeout=30)
    pids = set(workers_of(gw).values())
    assert len(pids) == 2
    gw.wait_log(r"acme: certificate for www.acme-test.example issued", timeout=90)
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    # The supervisor stored it; each worker swaps it in on the reload that follows.
    gw.wait_log(r"reloaded \(.*\): .*; 2 workers", timeout=30)
    poll(lambda: _served_by_pebble(gw, tls_port, str(root)), 20, 0.2, "the ACME certificate being served")
    before = served_by(gw)
    for i in range(FRESH):  # fresh connections, spread by the kernel over both workers (worker_affinity = none)
        assert _served_by_pebble(gw, tls_port, str(root)), f"connection {i}"
    counts = poll(lambda: (c := served_by(gw)) and sum(c.values()) - sum(before.values()) >= FRESH and c, 10,
                  what=f"{FRESH} requests counted")
    served = {pid for pid in pids if counts.get(pid, 0) > before.get(pid, 0)}
    assert served == pids, (before, counts)
    # The challenge entries are gone once the order is over.
    directory = gw.workdir / "txgate-state" / "run" / "acme-challenges"
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert [p.name for p in directory.iterdir()] == []


# -- a fleet on one Redis store: the gateway the CA reaches is not the one that orders ---------------
from test_store_redis import redis_server  # noqa: E402,F401 (a fixture)

BYSTANDER = """
[gateway]
state_dir = ./txgate-state
access_log = off
{store}

[admin]
bind = off

[listener:http]
bind = 127.0.0.1:{http_port}
tls = off

[listener:https]
bind = 127.0.0.1:{tls_port}
"""


@pytest.mark.timeout(150)
@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_a_gateway_of_the_fleet_that_did_not_order_answers_the_challenge(acme_env, tmp_path, redis_server,  # noqa: F811
                                                                         challenge):
    from test_store import SECRET

    redis_server.client().flushdb()
    secret = tmp_path / "store-secret"
    secret.write_bytes(SECRET)
    store = f"store = {redis_server.url()}\nstore_secret_file = {secret}"
    start_pebble, start_gateway = acme_env
    b_http, b_tls = free_port(), free_port()
    pebble = start_pebble(b_http, b_tls)  # the CA validates against gateway B only
    b = start_gateway(BYSTANDER.format(store=store, http_port=b_http, tls_port=b_tls), name="b")
    a_http, a_tls = free_port(), free_port()
    a = start_gateway(_config(pebble, a_http, a_tls, challenge).replace("[gateway]\n", f"[gateway]\n{store}\n"),
                      name="a")
    a.wait_log(r"acme: certificate for www.acme-test.example issued", timeout=90)
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    poll(lambda: _served_by_pebble(a, a_tls, str(root)), 20, 0.2, "the ACME certificate being served by A")
    assert "ordering" not in b.output()
