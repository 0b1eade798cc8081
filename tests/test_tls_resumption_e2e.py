"""ServerTLS on a real loopback port: `openssl s_client -sess_out` then `-sess_in` reports "Reused"."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from typing import Any, Iterator

import pytest

from tests.certs_helpers import make_ca, make_leaf, write_ca, write_pair

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timezone
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.interfaces import IHandshakeListener
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from zope.interface import implementer
    from txgate.tls.certs import load_certified_key
    from txgate.tls.server import ServerTLS

    cert, key, sni_cert, sni_key, tickets = sys.argv[1:6]
    now = datetime.now(timezone.utc)
    creator = ServerTLS(
        default=load_certified_key(cert, key, now=now),
        sni=[("*.example.com", load_certified_key(sni_cert, sni_key, now=now))],
        session_tickets=tickets == "1",
    )

    @implementer(IHandshakeListener)
    class Hello(Protocol):
        def handshakeCompleted(self):
            self.transport.write(b"hello\\n")
            self.transport.loseConnection()

    port = reactor.listenTCP(0, TLSMemoryBIOFactory(creator, False, Factory.forProtocol(Hello)),
                             interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()
    """
)


@pytest.fixture(scope="module")
def pair_paths(tmp_path_factory: Any) -> dict[str, str]:
    d = tmp_path_factory.mktemp("resume")
    ca = make_ca("Resume CA")
    cert, key = write_pair(d, "default", make_leaf(ca, ["localhost"]))
    sni_cert, sni_key = write_pair(d, "wild", make_leaf(ca, ["*.example.com"]))
    return {"dir": str(d), "cert": cert, "key": key, "sni_cert": sni_cert, "sni_key": sni_key,
            "ca": write_ca(d, "ca", ca)}


def _start(paths: dict[str, str], tickets: bool) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, paths["cert"], paths["key"], paths["sni_cert"], paths["sni_key"],
         "1" if tickets else "0"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise AssertionError(f"server did not start: {line!r}")
    return proc, int(line)


@pytest.fixture(params=[True, False], ids=["tickets", "no-tickets"])
def server(request: Any, pair_paths: dict[str, str]) -> Iterator[tuple[int, bool]]:
    proc, port = _start(pair_paths, request.param)
    try:
        yield port, request.param
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _s_client(port: int, *args: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
        )
        text = out.stdout + out.stderr
        if "hello" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)  # the listener is up (port printed); this only retries a refused race


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("servername", ["localhost", "api.example.com"])
def test_openssl_s_client_resumes(
    server: tuple[int, bool], pair_paths: dict[str, str], tmp_path: Any, version: str, servername: str
) -> None:
    port, tickets = server
    # Without tickets TLS 1.2 resumes by session id and TLS 1.3 by stateful tickets (OP_NO_TICKET).
    sess = str(tmp_path / "sess.pem")
    common = [version, "-servername", servername, "-CAfile", pair_paths["ca"]]
    first = _s_client(port, *common, "-sess_out", sess)
    assert "New, " in first and "hello" in first, first
    assert os.path.getsize(sess) > 0
    second = _s_client(port, *common, "-sess_in", sess)
    assert "Reused, " in second, second
    assert "hello" in second
    # The resumed session keeps the certificate chosen by SNI.
    assert ("s:CN = localhost" if servername == "localhost" else "s:CN = *.example.com") in first
