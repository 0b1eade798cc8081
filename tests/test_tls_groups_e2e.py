"""Key-exchange groups of a listener, checked with a real gateway and `openssl s_client -groups`."""
from __future__ import annotations

import re
import subprocess

from txgate.tls.server import DEFAULT_GROUPS

GW = """
[gateway]
state_dir = ./txgate-state

[listener:main]
bind = 127.0.0.1:0
certificate = local
{extra}

[api:echo]
path = /
upstream = builtin:echo

[admin]
bind = off
"""


def handshake(port: int, groups: str, tls: str = "-tls1_3") -> str | None:
    """The key exchange `openssl s_client` offering only these groups got ("X25519", "ECDH, prime256v1"...),
    or None when the handshake failed."""
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", tls,
         "-groups", groups, "-brief"],
        input=b"", capture_output=True, timeout=20,
    )
    out = (r.stdout + r.stderr).decode(errors="replace")
    if "CONNECTION ESTABLISHED" not in out:
        return None
    m = re.search(r"(?:Server|Peer) Temp Key: (.*?), \d+ bits", out)
    return m.group(1) if m else "?"


def test_default_listener_offers_only_x25519_p256_p384(gateway_factory):
    gw = gateway_factory(GW.format(extra=""))
    assert handshake(gw.port, "X25519") == "X25519"
    assert handshake(gw.port, "P-256") == "ECDH, prime256v1"
    assert handshake(gw.port, "P-384") == "ECDH, secp384r1"
    for group in ("X448", "P-521", "ffdhe2048", "ffdhe3072"):
        assert handshake(gw.port, group) is None, group


def test_tls12_ecdhe_never_picks_a_group_outside_the_list(gateway_factory):
    # TLS 1.2 ties the client's groups to the certificate's curve too (the local CA's leaf is P-256).
    gw = gateway_factory(GW.format(extra=""))
    assert handshake(gw.port, "P-521:X448:P-256", "-tls1_2") == "ECDH, prime256v1"
    assert handshake(gw.port, "X25519:P-256", "-tls1_2") == "X25519"


def test_default_groups_lead_with_the_hybrid_where_openssl_has_it():
    assert DEFAULT_GROUPS.split(":")[-3:] == ["X25519", "P-256", "P-384"]
    assert DEFAULT_GROUPS.split(":")[0] in ("X25519MLKEM768", "X25519")


def test_groups_key_narrows_the_listener(gateway_factory):
    gw = gateway_factory(GW.format(extra="groups = P-384 P-256"))
    assert handshake(gw.port, "P-384") == "ECDH, secp384r1"
    assert handshake(gw.port, "X25519:P-256") == "ECDH, prime256v1"
    assert handshake(gw.port, "X25519") is None
