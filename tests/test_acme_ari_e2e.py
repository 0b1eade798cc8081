"""ARI (RFC 9773) end to end: pebble 2.4 has no renewalInfo, so a small local **stand-in** serves the ACME
directory (pebble's, plus a ``renewalInfo`` URL pointing at itself) and RFC 9773 renewalInfo responses;
every other ACME request goes to pebble itself. The stand-in is not an ACME server: it only answers
``GET /dir`` and ``GET /renewal-info/CERTID``."""
# -*- test-case-name: tests.test_acme_ari_e2e -*-
from __future__ import annotations

import json
import ssl
import threading
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from acme_pebble import Pebble, pebble_available
from conftest import free_port, poll, txgate_cli
from test_acme_e2e import NAME, _config, acme_env  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(not pebble_available(), reason="pebble is not installed (apt-get install pebble)")


def _rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class RenewalInfoStandIn:
    """Stand-in for a CA's renewalInfo endpoint (RFC 9773), in front of pebble's directory.

    The first certificate asked about gets a window that is open now (renew at once); every later one a
    window 30 days out. ``asked`` lists the certIDs in the order they were asked for."""

    def __init__(self, pebble: Pebble) -> None:
        self.pebble = pebble
        self.asked: list[str] = []
        conf = json.loads((pebble.workdir / "pebble.json").read_text())["pebble"]
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, doc: dict, **headers) -> None:
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/dir":
                    ctx = ssl.create_default_context(cafile=stand_in.pebble.ca_bundle)
                    with urllib.request.urlopen(stand_in.pebble.directory, context=ctx, timeout=5) as r:
                        directory = json.loads(r.read())
                    directory["renewalInfo"] = f"{stand_in.base}/renewal-info"
                    return self._json(directory)
                if self.path.startswith("/renewal-info/"):
                    cert_id = self.path.rsplit("/", 1)[1]
                    if cert_id not in stand_in.asked:
                        stand_in.asked.append(cert_id)
                    now = datetime.now(timezone.utc)
                    if cert_id == stand_in.asked[0]:
                        start, end = now - timedelta(seconds=10), now + timedelta(seconds=1)
                    else:
                        start, end = now + timedelta(days=30), now + timedelta(days=31)
                    return self._json({"suggestedWindow": {"start": _rfc3339(start), "end": _rfc3339(end)}},
                                      **{"Retry-After": "60"})
                self.send_error(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(conf["certificate"], conf["privateKey"])  # pebble's own listener certificate
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> RenewalInfoStandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(150)
def test_ari_window_times_the_renewal_and_the_next_order_replaces_the_old_certificate(acme_env, tmp_path):
    start_pebble, start_gateway = acme_env
    http_port, tls_port = free_port(), free_port()
    pebble = start_pebble(http_port, tls_port)  # 5-year certificates: the ratio alone would wait years
    stand_in = RenewalInfoStandIn(pebble).start()
    try:
        text = _config(pebble, http_port, tls_port, "http-01").replace(pebble.directory, f"{stand_in.base}/dir")
        gw = start_gateway(text)
        poll(lambda: gw.output().count("acme: certificate for www.acme-test.example issued") >= 2, 90, 0.3,
             "the first certificate and its ARI-timed renewal")
        out = gw.output()
        assert "ordering a certificate for www.acme-test.example (ari)" in out, out
        first_id = stand_in.asked[0]
        assert f"for www.acme-test.example (replaces {first_id})" in out, out
        assert out.count("ordering a certificate for") == 2
        # The renewed certificate is asked about too, and its window (30 days out) is the next renewal.
        poll(lambda: len(stand_in.asked) >= 2, 20, 0.2, "renewalInfo for the new certificate")
        r = txgate_cli("acme", "status", "--json", "--config", str(gw.config_path), cwd=gw.workdir)
        [entry] = json.loads(r.stdout)["certificates"]
        assert entry["renewal_reason"] == "ari" and entry["orders"] == 2
        renew_at = datetime.strptime(entry["next_renewal"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert timedelta(days=29) < renew_at - datetime.now(timezone.utc) < timedelta(days=32)
        gw.stop()
        r = txgate_cli("store", "list", "--config", str(gw.config_path), cwd=gw.workdir)
        assert "versions=1,2" in r.stdout, r.stdout
        # The certID sent as `replaces` is the one of version 1 (the replaced certificate).
        assert first_id != stand_in.asked[1]
        assert first_id == _cert_id_of_version(gw, 1)
    finally:
        stand_in.stop()


def _cert_id_of_version(gw, version: int) -> str:
    """The ARI certID of version ``version`` of the gateway's ACME slot (read from its store)."""
    import os

    from txgate import config as _config
    from txgate.acme.client import ari_cert_id
    from txgate.plan.store import open_gateway_store

    cwd = os.getcwd()
    os.chdir(gw.workdir)
    try:
        store = open_gateway_store(_config.load(str(gw.config_path)), create=False)
        try:
            entry = store.get(f"acme/{NAME}@{version}")
        finally:
            store.close()
    finally:
        os.chdir(cwd)
    return ari_cert_id(entry.chain_pem)
