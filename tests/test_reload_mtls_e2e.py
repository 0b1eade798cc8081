"""A client removed from an allowlist loses access on its already-open connection after a reload."""
from __future__ import annotations

import json
import signal
import socket
import ssl

from cryptography.hazmat.primitives import serialization

from certs_helpers import make_ca, make_leaf, write_pair
from conftest import curl, poll
from rawhttp import read_response
from txgate.pins import format_pin, spki_sha256


def _pin(ck) -> str:
    return format_pin(spki_sha256(ck.leaf.public_bytes(serialization.Encoding.DER)))


CONFIG = """
[gateway]
state_dir = ./state

[listener:main]
bind = 127.0.0.1:{port}
client_auth = optional
client_ca = {ca}

[api:private]
path = /private
upstream = builtin:echo
mtls = require
client_certificates = {pins}

[admin]
bind = off
"""


def _request(sock) -> int:
    sock.sendall(b"GET /private/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return read_response(sock)[0]


def _closed(sock) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(65536) == b""
    except socket.timeout:
        return False
    except (ssl.SSLError, ConnectionError, OSError):
        return True


def test_removed_client_loses_its_open_connection_on_reload(gateway_factory, tmp_path):
    ca = make_ca("reload client CA")
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.chain[0].public_bytes(serialization.Encoding.PEM))
    alice = make_leaf(ca, ["alice"], client=True)
    bob = make_leaf(ca, ["bob"], client=True)
    a_cert, a_key = write_pair(tmp_path, "alice", alice)
    gw = gateway_factory(CONFIG.format(port=0, ca=ca_pem, pins=f"{_pin(alice)} {_pin(bob)}"))

    ctx = ssl.create_default_context(cafile=gw.workdir / "state" / "ca.pem")
    ctx.load_cert_chain(a_cert, a_key)
    ctx.set_alpn_protocols(["http/1.1"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port)), server_hostname="localhost")
    try:
        assert _request(sock) == 200
        # The operator removes alice and reloads (the bind is unchanged: the listener keeps its socket).
        gw.config_path.write_text(CONFIG.format(port=0, ca=ca_pem, pins=_pin(bob)))
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"listener main: client certificate policy changed; draining 1 open connections")
        poll(lambda: _closed(sock), 5, what="alice's open connection closed")
    finally:
        sock.close()
    r = curl("--cacert", str(gw.workdir / "state" / "ca.pem"), "--cert", a_cert, "--key", a_key,
             gw.url("/private/x"), "-w", "\n%{http_code}")
    body, _, status = r.stdout.decode().rpartition("\n")
    assert status == "403" and json.loads(body)["error"] == "client_certificate_not_allowed"


def test_reload_without_policy_change_keeps_the_open_connection(gateway_factory, tmp_path):
    ca = make_ca("reload client CA 2")
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.chain[0].public_bytes(serialization.Encoding.PEM))
    alice = make_leaf(ca, ["alice"], client=True)
    a_cert, a_key = write_pair(tmp_path, "alice", alice)
    gw = gateway_factory(CONFIG.format(port=0, ca=ca_pem, pins=_pin(alice)))
    ctx = ssl.create_default_context(cafile=gw.workdir / "state" / "ca.pem")
    ctx.load_cert_chain(a_cert, a_key)
    ctx.set_alpn_protocols(["http/1.1"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port)), server_hostname="localhost")
    try:
        assert _request(sock) == 200
        gw.config_path.write_text(CONFIG.format(port=0, ca=ca_pem, pins=_pin(alice)) + "\n[api:more]\npath = /more\nupstream = builtin:echo\n")
        gw.signal(signal.SIGHUP)
        # The drain decision (and its "policy changed" line) is made in the swap, before "reloaded" is
        # logged: after that line a wrong drain would already have closed this socket.
        gw.wait_log(r"reloaded \(SIGHUP\): 1 listeners, 2 APIs")
        assert _request(sock) == 200
    finally:
        sock.close()
    assert "policy changed" not in gw.output()
