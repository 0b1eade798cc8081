"""Pin and verify, end to end: a real gateway, real TLS upstreams on loopback, curl as the client."""
from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from certs_helpers import NOW, make_ca, make_leaf, pem_chain, write_pair
from conftest import ADMIN_EPHEMERAL, Backend, curl
from txgate.pins import format_pin, spki_sha256


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pin_of(cert) -> str:
    return format_pin(spki_sha256(der(cert)))


@pytest.fixture(scope="module")
def upstream_pki(tmp_path_factory):
    """An upstream certificate chain (leaf <- intermediate <- root) and the pins of each."""
    from certs_helpers import make_intermediate

    d = tmp_path_factory.mktemp("pki")
    root = make_ca("pin root")
    inter = make_intermediate(root, "pin intermediate")
    leaf = make_leaf(inter, ["127.0.0.1", "localhost"])
    cert, key = write_pair(d, "upstream", leaf)
    root_pem = d / "root.pem"
    root_pem.write_bytes(root.chain[-1].public_bytes(serialization.Encoding.PEM))
    inter_pem = d / "intermediate.pem"
    inter_pem.write_bytes(inter.chain[0].public_bytes(serialization.Encoding.PEM))
    return {
        "dir": d, "root": root, "inter": inter, "leaf": leaf, "cert": cert, "key": key,
        "root_pem": str(root_pem), "inter_pem": str(inter_pem),
        "pins": {"leaf": pin_of(leaf.leaf), "intermediate": pin_of(inter.chain[0]), "root": pin_of(root.chain[-1])},
    }


WRONG_PIN = "sha256/" + "A" * 43 + "="


def api_config(upstream: str, ca: str, extra: str = "", security: str = "") -> str:
    return ADMIN_EPHEMERAL + f"""
[gateway]
state_dir = ./state
{security}
[listener:main]
bind = 127.0.0.1:0

[api:pinned]
path = /
upstream = {upstream}
upstream_ca = {ca}
connect_timeout = 3
{extra}
"""


def get(gw, path="/pinned/x"):
    r = curl("--cacert", str(gw.workdir / "state" / "ca.pem"), gw.url(path), "-w", "\n%{http_code}")
    body, _, status = r.stdout.decode().rpartition("\n")
    return int(status), body


@pytest.mark.parametrize("which", ["leaf", "intermediate", "root"])
def test_pin_on_any_certificate_of_the_verified_chain_passes(gateway_factory, upstream_pki, which):
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]))
    try:
        gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"],
                                        f"pinned_public_keys = {WRONG_PIN} {upstream_pki['pins'][which]}"))
        status, body = get(gw)
        assert status == 200, body
        assert json.loads(body)["path"] == "/pinned/x"
    finally:
        b.close()


def test_wrong_pin_enforced_gives_502_and_no_bytes_upstream(gateway_factory, upstream_pki):
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]))
    try:
        gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"], f"pinned_public_keys = {WRONG_PIN}"))
        status, body = get(gw)
        assert status == 502
        assert json.loads(body)["error"] == "upstream_pin_mismatch"
        line = gw.wait_log(r"upstream_pin_mismatch.*")
        assert WRONG_PIN in line.group(0)
        for pin in (upstream_pki["pins"]["leaf"], upstream_pki["pins"]["intermediate"]):
            assert pin in line.group(0)
        assert f"127.0.0.1:{b.port}" in line.group(0)
        assert b.requests == []
    finally:
        b.close()


def test_report_mode_lets_the_request_through_and_logs(gateway_factory, upstream_pki):
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]))
    try:
        gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"],
                                        f"pinned_public_keys = {WRONG_PIN}\npin_mode = report"))
        status, body = get(gw)
        assert status == 200, body
        line = gw.wait_log(r"pin mismatch \[report mode: allowed\].*")
        assert WRONG_PIN in line.group(0) and upstream_pki["pins"]["leaf"] in line.group(0)
        assert len(b.requests) == 1
    finally:
        b.close()


def test_pin_given_as_a_pem_file(gateway_factory, upstream_pki):
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]))
    try:
        gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"],
                                        f"pinned_public_keys = {upstream_pki['inter_pem']}"))
        assert get(gw)[0] == 200
    finally:
        b.close()


def test_global_pins_by_host_port_beat_wildcard_and_api_pins_replace_global(gateway_factory, upstream_pki):
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]))
    good = upstream_pki["pins"]["leaf"]
    security = f"""
[security]
pinned_public_keys =
    * = {WRONG_PIN}
    127.0.0.1:{b.port} = {good}
    127.0.0.1:1 = {WRONG_PIN}
"""
    try:
        cfg = api_config(b.url("https"), upstream_pki["root_pem"], security=security) + f"""
[api:own]
path = /own
upstream = {b.url("https")}
upstream_ca = {upstream_pki["root_pem"]}
pinned_public_keys = {WRONG_PIN}
"""
        gw = gateway_factory(cfg)
        assert get(gw, "/pinned/x")[0] == 200  # host:port rule (good) beats '*'
        status, body = get(gw, "/own/x")  # the API's own (wrong) pins replace the global ones
        assert status == 502 and json.loads(body)["error"] == "upstream_pin_mismatch"
    finally:
        b.close()


def test_global_wildcard_pin_applies_when_no_better_rule(gateway_factory, upstream_pki):
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]))
    security = f"""
[security]
pin_mode = enforce
pinned_public_keys =
    *.example.com = {upstream_pki["pins"]["leaf"]}
    * = {WRONG_PIN}
"""
    try:
        gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"], security=security))
        status, body = get(gw)
        assert status == 502 and json.loads(body)["error"] == "upstream_pin_mismatch"
    finally:
        b.close()


def test_correct_pin_does_not_excuse_a_hostname_mismatch(gateway_factory, upstream_pki, tmp_path):
    wrong_name = make_leaf(upstream_pki["inter"], ["other.example.org"])
    cert, key = write_pair(tmp_path, "wrongname", wrong_name)
    b = Backend(tls=(cert, key))
    try:
        gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"],
                                        f"pinned_public_keys = {pin_of(wrong_name.leaf)}"))
        status, body = get(gw)
        assert status == 502 and json.loads(body)["error"] == "upstream_tls_error"
        gw.wait_log(r"hostname mismatch")
        assert b.requests == []
    finally:
        b.close()


def test_correct_pin_does_not_excuse_an_expired_certificate(gateway_factory, upstream_pki, tmp_path):
    expired = make_leaf(upstream_pki["inter"], ["127.0.0.1"], not_before=NOW - timedelta(days=30),
                        not_after=NOW - timedelta(days=1))
    cert, key = write_pair(tmp_path, "expired", expired)
    b = Backend(tls=(cert, key))
    try:
        gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"],
                                        f"pinned_public_keys = {pin_of(expired.leaf)}"))
        status, body = get(gw)
        assert status == 502 and json.loads(body)["error"] == "upstream_tls_error"
        gw.wait_log(r"expired")
    finally:
        b.close()


def test_pin_of_an_extra_certificate_outside_the_verified_chain_is_rejected(gateway_factory, upstream_pki, tmp_path):
    stranger = make_ca("stranger CA")
    cert = tmp_path / "with-extra.pem"
    # The upstream sends leaf, intermediate, then a certificate that is not part of the path.
    cert.write_bytes(pem_chain(upstream_pki["leaf"]) + stranger.chain[0].public_bytes(serialization.Encoding.PEM))
    b = Backend(tls=(str(cert), upstream_pki["key"]))
    try:
        gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"],
                                        f"pinned_public_keys = {pin_of(stranger.chain[0])}"))
        status, body = get(gw)
        assert status == 502 and json.loads(body)["error"] == "upstream_pin_mismatch"
        assert b.requests == []
    finally:
        b.close()


def test_upstream_key_rotation_is_caught_at_the_next_connection(gateway_factory, upstream_pki, tmp_path):
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]))
    port = b.port
    gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"],
                                    f"pinned_public_keys = {upstream_pki['pins']['leaf']}"))
    try:
        assert get(gw)[0] == 200
    finally:
        b.close()
    rotated = make_leaf(upstream_pki["inter"], ["127.0.0.1"])  # same names and CA, new key
    cert, key = write_pair(tmp_path, "rotated", rotated)
    b2 = Backend(tls=(cert, key), port=port)
    try:
        status, body = get(gw)
        assert status == 502 and json.loads(body)["error"] == "upstream_pin_mismatch", body
        assert b2.requests == []
    finally:
        b2.close()


def test_upstream_that_requires_a_client_certificate(gateway_factory, upstream_pki, tmp_path):
    client_ca = make_ca("upstream client CA")
    ca_pem = tmp_path / "client-ca.pem"
    ca_pem.write_bytes(client_ca.chain[0].public_bytes(serialization.Encoding.PEM))
    good_cert, good_key = write_pair(tmp_path, "good-client", make_leaf(client_ca, ["gateway"], client=True))
    bad_cert, bad_key = write_pair(tmp_path, "bad-client", make_leaf(make_ca("rogue"), ["gateway"], client=True))
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]), client_ca=str(ca_pem))
    try:
        cfg = api_config(b.url("https"), upstream_pki["root_pem"], f"upstream_certificate = {good_cert} {good_key}")
        cfg += f"""
[api:wrongcert]
path = /wrong
upstream = {b.url("https")}
upstream_ca = {upstream_pki["root_pem"]}
upstream_certificate = {bad_cert} {bad_key}

[api:nocert]
path = /none
upstream = {b.url("https")}
upstream_ca = {upstream_pki["root_pem"]}
"""
        gw = gateway_factory(cfg)
        assert get(gw, "/pinned/x")[0] == 200
        for path in ("/wrong/x", "/none/x"):
            status, body = get(gw, path)
            assert status == 502 and json.loads(body)["error"] == "upstream_tls_error", (path, body)
        gw.wait_log(r"upstream_tls_error.*(client certificate|alert)")
        assert [r["path"] for r in b.requests] == ["/pinned/x"]
    finally:
        b.close()


def test_global_upstream_certificate_by_host_pattern(gateway_factory, upstream_pki, tmp_path):
    client_ca = make_ca("upstream client CA 2")
    ca_pem = tmp_path / "client-ca.pem"
    ca_pem.write_bytes(client_ca.chain[0].public_bytes(serialization.Encoding.PEM))
    cert, key = write_pair(tmp_path, "client", make_leaf(client_ca, ["gateway"], client=True))
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]), client_ca=str(ca_pem))
    security = f"""
[security]
upstream_certificates =
    127.0.0.1 = {cert} {key}
"""
    try:
        gw = gateway_factory(api_config(b.url("https"), upstream_pki["root_pem"], security=security))
        assert get(gw)[0] == 200
    finally:
        b.close()


def test_pins_with_verification_off_warn_loudly_and_still_enforce(gateway_factory, upstream_pki):
    b = Backend(tls=(upstream_pki["cert"], upstream_pki["key"]))
    try:
        cfg = api_config(b.url("https"), upstream_pki["root_pem"], f"pinned_public_keys = {WRONG_PIN}\nupstream_verify = off")
        gw = gateway_factory(cfg)
        gw.wait_log(r"upstream_verify: off with pins")
        status, body = get(gw)
        assert status == 502 and json.loads(body)["error"] == "upstream_pin_mismatch"
    finally:
        b.close()
