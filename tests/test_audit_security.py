"""Security audit (second pass): upstream pinning, client mTLS allowlists, certificate store.

Each test here demonstrates a defect the audit found; all are fixed now and the tests guard against regressions.
"""
from __future__ import annotations

import json
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

from certs_helpers import make_ca, make_intermediate, make_leaf, write_ca, write_pair
from conftest import ADMIN_EPHEMERAL, Backend, curl
from test_clientauth_unit import make_client
from txgate.pins import format_pin, spki_sha256

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pin_of(cert) -> str:
    return format_pin(spki_sha256(der(cert)))


def _get(gw, path: str, *extra: str) -> tuple[int, str]:
    r = curl("--cacert", str(gw.workdir / "state" / "ca.pem"), *extra, gw.url(path), "-w", "\n%{http_code}")
    body, _, status = r.stdout.decode().rpartition("\n")
    return int(status or 0), body


# -- (b) client mTLS ----------------------------------------------------------------------------


@needs_curl
def test_ca_entry_of_one_api_does_not_admit_its_clients_to_another_mtls_api(gateway_factory, tmp_path):
    corp = make_ca("audit corp root")
    partner = make_ca("audit partner root")
    corp_ca = write_ca(tmp_path, "corp", corp)
    partner_ca = write_ca(tmp_path, "partner", partner)
    partner_client = write_pair(tmp_path, "partner-client", make_client(partner, "partner-client"))
    corp_client = write_pair(tmp_path, "corp-client", make_client(corp, "corp-client"))
    gw = gateway_factory(ADMIN_EPHEMERAL + f"""
[gateway]
state_dir = ./state

[listener:main]
bind = 127.0.0.1:0
client_ca = {corp_ca}

[api:partner]
path = /partner
upstream = builtin:echo
mtls = require
client_certificates = {partner_ca}

[api:corp]
path = /corp
upstream = builtin:echo
mtls = require
""")
    cert_args = ("--cert", partner_client[0], "--key", partner_client[1])
    # Sanity: the partner client is admitted where its CA is listed, the corp client where it belongs.
    assert _get(gw, "/partner/x", *cert_args)[0] == 200
    assert _get(gw, "/corp/x", "--cert", corp_client[0], "--key", corp_client[1])[0] == 200
    # The defect: the partner's certificate "verifies" for /corp too, because partner-ca became an anchor.
    status, body = _get(gw, "/corp/x", *cert_args)
    assert status == 403 and json.loads(body)["error"] == "client_certificate_not_allowed"


# -- (a) upstream pinning -----------------------------------------------------------------------


@needs_curl
def test_pins_only_mode_is_not_satisfied_by_an_appended_public_ca_certificate(gateway_factory, tmp_path):
    root = make_ca("audit pinned root")
    inter = make_intermediate(root, "audit pinned intermediate")
    root_pem = write_ca(tmp_path, "pinned-root", root)
    # The attacker: their own key, self-signed, plus the real (public) intermediate certificate.
    attacker = make_leaf(make_ca("audit attacker"), ["127.0.0.1", "localhost"])
    cert = tmp_path / "attacker-chain.pem"
    cert.write_bytes(attacker.chain[0].public_bytes(serialization.Encoding.PEM)
                     + inter.chain[0].public_bytes(serialization.Encoding.PEM))
    _, key = write_pair(tmp_path, "attacker", attacker)
    b = Backend(tls=(str(cert), key))
    try:
        gw = gateway_factory(ADMIN_EPHEMERAL + f"""
[gateway]
state_dir = ./state

[listener:main]
bind = 127.0.0.1:0

[api:pinned]
path = /
upstream = {b.url("https")}
upstream_ca = {root_pem}
upstream_verify = off
pinned_public_keys = {pin_of(inter.chain[0])}
connect_timeout = 3
""")
        status, body = _get(gw, "/x")
        assert status == 502 and json.loads(body)["error"] == "upstream_pin_mismatch"
        assert b.requests == []
    finally:
        b.close()


PIN = "sha256/" + "A" * 43 + "="
BASE = "[listener:main]\nbind = 127.0.0.1:0\n"


def _chain_check(config_text: str):
    from txgate.config import ConfigError, parse_text
    from txgate.service import prepare

    try:
        prepared = prepare(parse_text(config_text, "gw.ini"), check_ports=False, create_state=False)
    except ConfigError:
        return "rejected"
    (tls,) = prepared.upstream_tls.values()
    return tls._chain_check


def test_star_port_pin_pattern_is_either_rejected_or_applied():
    text = BASE + f"[security]\npinned_public_keys =\n    *:9443 = {PIN}\n[api:a]\nupstream = https://127.0.0.1:9443\n"
    assert _chain_check(text) is not None


def test_global_pins_for_upstream_server_name_apply_to_an_ip_upstream():
    text = (BASE + f"[security]\npinned_public_keys =\n    api.internal = {PIN}\n"
            "[api:a]\nupstream = https://10.0.0.5:8443\nupstream_server_name = api.internal\n")
    assert _chain_check(text) is not None


# -- (c) certificate store ----------------------------------------------------------------------


def test_store_name_with_trailing_newline_is_invalid(tmp_path):
    from txgate.store import open_store
    from txgate.store.model import StoreError

    ca = make_ca("audit store ca")
    leaf = make_leaf(ca, ["web.example"])
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in leaf.chain)
    store = open_store("dir", str(tmp_path), b"s" * 32)
    with pytest.raises(StoreError):
        store.put("web\n", chain)
