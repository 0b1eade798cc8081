"""The README quick start, for real: the gateway on its embedded defaults, curl over h1 and h2."""
from __future__ import annotations

import json
import os
import stat

from conftest import curl

QUICKSTART = """
[gateway]
state_dir = ./txgate-state

[listener:main]
bind = 127.0.0.1:0

[api:echo]
path = /echo
upstream = builtin:echo
"""


def test_local_ca_echo_over_http1_and_http2(gateway_factory):
    gw = gateway_factory(QUICKSTART)
    for flag, version in (("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2")):
        r = curl(flag, "--cacert", gw.ca, gw.url("/echo/hello?x=1"), "-w", "\n%{http_version}")
        assert r.returncode == 0, r.stderr
        body, _, got_version = r.stdout.decode().rpartition("\n")
        assert got_version == {"HTTP/1.1": "1.1", "HTTP/2": "2"}[version]
        echo = json.loads(body)
        assert echo["method"] == "GET"
        assert echo["path"] == "/echo/hello"
        assert echo["query"] == "x=1"
        assert echo["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert echo["body_bytes"] == 0
    key = os.stat(os.path.join(gw.workdir, "txgate-state", "ca-key.pem"))
    assert stat.S_IMODE(key.st_mode) == 0o600
    gw.wait_log(r"local CA certificate: \S*ca\.pem")
    gw.wait_log(r'"GET localhost:\d+ /echo/hello\?x=1 HTTP/2" 200')
    assert gw.stop() == 0
