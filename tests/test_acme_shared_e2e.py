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
