"""TLS listeners of the real gateway seen by real clients: openssl s_client and curl."""
from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid

import pytest

from conftest import ADMIN_EPHEMERAL, H2_ENGINES, Gateway, curl, poll

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("curl") is None,
                                reason="needs openssl and curl")

ECHO = "[api:echo]\npath = /echo\nupstream = builtin:echo\n"


def s_client(port: int, *args: str, host: str = "127.0.0.1", request: str | None = "localhost",
             stdin_first: str | None = None, timeout: float = 10) -> tuple[int | None, str]:
    """Run openssl s_client; send one GET /echo request (Host: ``request``) and wait for the answer.

    Returns (exit status, stdout+stderr). The client closes its side itself once the response is
    in, so the test never depends on the server closing first.
    """
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    proc = subprocess.Popen(["openssl", "s_client", "-connect", target, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def text() -> str:
        return "".join(list(lines))

    try:
        handshake_done = lambda: proc.poll() is not None or "Verify return code" in text()  # noqa: E731
        poll(handshake_done, timeout, what="s_client handshake")
        if proc.poll() is None:
            if stdin_first is not None:
                proc.stdin.write(stdin_first)
                proc.stdin.flush()
                poll(lambda: proc.poll() is not None, timeout, what="s_client exit")
            elif request is not None:
                proc.stdin.write(f"GET /echo/{uuid.uuid4().hex} HTTP/1.1\r\nHost: {request}\r\n\r\n")
                proc.stdin.flush()
                poll(lambda: proc.poll() is not None or '"body_bytes"' in text(), timeout, what="response")
        if proc.poll() is None:
            proc.stdin.close()
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout)
    return proc.returncode, text()


def subject_cn(output: str) -> str:
    m = re.search(r"^subject=.*?CN ?= ?([^,\n]+)$", output, re.M)
    assert m, output
    return m.group(1).strip()


def negotiated(output: str) -> tuple[str, str]:
    m = re.search(r"^New, (TLSv[\d.]+), Cipher is (\S+)$", output, re.M)
    assert m, output
    return m.group(1), m.group(2)


@pytest.fixture(scope="module")
def pki(certs):
    return {
        "default": certs.leaf("lst-default", ["localhost", "127.0.0.1", "::1"]),
        "exact": certs.leaf("lst-exact", ["api.example.com"]),
        "wild": certs.leaf("lst-wild", ["*.example.com"]),
    }


@pytest.fixture(scope="module")
def gw(request, pki, tmp_path_factory):
    """One gateway with a listener per TLS policy under test."""
    d, e, w = pki["default"], pki["exact"], pki["wild"]
    tls = f"certificate = {d[0]} {d[1]}\n"
    config = (
        ADMIN_EPHEMERAL + "[gateway]\naccess_log = -\n"
        f"[listener:main]\nbind = 127.0.0.1:0\n{tls}"
        f"sni =\n  api.example.com = {e[0]} {e[1]}\n  *.example.com = {w[0]} {w[1]}\n"
        f"[listener:strict]\nbind = 127.0.0.1:0\n{tls}min_tls = 1.3\n"
        f"[listener:chacha]\nbind = 127.0.0.1:0\n{tls}ciphers = ECDHE-ECDSA-CHACHA20-POLY1305\n"
        f"[listener:h1only]\nbind = 127.0.0.1:0\n{tls}alpn = http/1.1\n"
        "[listener:plain]\nbind = 127.0.0.1:0\ntls = off\n"
        f"[listener:short]\nbind = 127.0.0.1:0\n{tls}idle_timeout = 0.5\n"
        "[listener:shortplain]\nbind = 127.0.0.1:0\ntls = off\nidle_timeout = 0.5\n" + ECHO
    )
    gateway = Gateway(tmp_path_factory.mktemp("listeners"), config, h2_engine=getattr(request, "param", None)).start()
    yield gateway
    assert gateway.stop() == 0


# -- SNI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "servername, expected",
    [("api.example.com", "api.example.com"), ("API.Example.COM", "api.example.com"),
     ("shop.example.com", "*.example.com"), ("a.b.example.com", "localhost"), ("other.test", "localhost"),
     (None, "localhost")],
)
def test_sni_selects_exact_then_wildcard_then_default(gw, certs, servername, expected):
    args = ["-servername", servername] if servername else ["-noservername"]
    code, out = s_client(gw.ports["main"], *args, "-CAfile", certs.root_pem, request=servername or "localhost")
    assert code == 0, out
    assert subject_cn(out) == expected
    assert "Verify return code: 0 (ok)" in out  # leaf + intermediate are served, the root is enough


@pytest.mark.parametrize("name", ["api.example.com", "shop.example.com"])
def test_curl_verifies_sni_certificate(gw, certs, name):
    port = gw.ports["main"]
    path = f"/echo/{uuid.uuid4().hex}"
    r = curl("--resolve", f"{name}:{port}:127.0.0.1", "--cacert", certs.root_pem, f"https://{name}:{port}{path}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == path
    gw.wait_log(rf"main 127\.0\.0\.1:\d+ sni={re.escape(name)} tls=TLSv1\.3 cipher=TLS_\S+ alpn=h2 "
                rf'"GET {re.escape(name)}:{port} {path} HTTP/2" 200 ')


# -- versions, ciphers, renegotiation, compression --------------------------------------------


def test_tls11_refused_at_the_default(gw):
    # SECLEVEL=0 so the client really offers TLS 1.1 (OpenSSL 3 refuses to otherwise).
    code, out = s_client(gw.ports["main"], "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert code != 0, out
    # The server answers the TLS 1.1 ClientHello with a protocol_version alert (70); nothing is negotiated.
    assert "alert protocol version" in out and "SSL alert number 70" in out, out
    assert "Cipher is (NONE)" in out, out
    gw.wait_log(r"TLS handshake with 127\.0\.0\.1 on main failed: .*(unsupported protocol|version)")


@pytest.mark.parametrize("flag, version", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls12_and_tls13_accepted_without_compression(gw, flag, version):
    code, out = s_client(gw.ports["main"], flag)
    assert code == 0, out
    got, cipher = negotiated(out)
    assert got == version
    if version == "TLSv1.2":
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    assert "Compression: NONE" in out
    assert '"body_bytes": 0' in out


def test_min_tls_13_refuses_tls12(gw):
    code, out = s_client(gw.ports["strict"], "-tls1_2")
    assert code != 0 and "Cipher is (NONE)" in out, out
    gw.wait_log(r"TLS handshake with 127\.0\.0\.1 on strict failed")
    code, out = s_client(gw.ports["strict"], "-tls1_3")
    assert code == 0 and negotiated(out)[0] == "TLSv1.3", out


def test_cipher_restriction(gw):
    code, out = s_client(gw.ports["chacha"], "-tls1_2")
    assert code == 0, out
    assert negotiated(out) == ("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305")
    code, out = s_client(gw.ports["chacha"], "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
    assert code != 0 and "Cipher is (NONE)" in out, out
    gw.wait_log(r"TLS handshake with 127\.0\.0\.1 on chacha failed: .*no shared cipher")


def test_renegotiation_refused(gw):
    code, out = s_client(gw.ports["main"], "-tls1_2", stdin_first="R\n")
    assert "RENEGOTIATING" in out, out
    assert "no renegotiation" in out, out
    assert code != 0
    # The listener keeps serving.
    assert s_client(gw.ports["main"], "-tls1_2")[0] == 0


# -- ALPN ------------------------------------------------------------------------------------


def test_alpn_prefers_h2(gw):
    code, out = s_client(gw.ports["main"], "-alpn", "h2,http/1.1", request=None)
    assert code == 0, out
    assert "ALPN protocol: h2" in out


def test_alpn_http11_only_listener(gw):
    code, out = s_client(gw.ports["h1only"], "-alpn", "h2,http/1.1")
    assert code == 0, out
    assert "ALPN protocol: http/1.1" in out
    r = curl("--http2", "-k", f"https://localhost:{gw.ports['h1only']}/echo/h1", "-o", "/dev/null",
             "-w", "%{http_version}")
    assert r.returncode == 0 and r.stdout == b"1.1", r.stderr


# -- resumption ------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_session_resumption(gw, tmp_path, flag):
    sess = str(tmp_path / "session.pem")
    code, first = s_client(gw.ports["main"], flag, "-servername", "api.example.com", "-sess_out", sess,
                           request="api.example.com")
    assert code == 0 and "New, " in first, first
    code, second = s_client(gw.ports["main"], flag, "-servername", "api.example.com", "-sess_in", sess,
                            request="api.example.com")
    assert code == 0, second
    assert "Reused, " in second, second
    assert '"body_bytes": 0' in second


# -- plain HTTP and IPv6 ---------------------------------------------------------------------


def test_tls_off_listener_serves_plain_http11(gw):
    path = f"/echo/{uuid.uuid4().hex}"
    r = curl("--http1.1", f"http://127.0.0.1:{gw.ports['plain']}{path}", "-w", "\n%{http_version}")
    assert r.returncode == 0, r.stderr
    body, _, version = r.stdout.decode().rpartition("\n")
    assert version == "1.1"
    assert json.loads(body)["headers"]["x-forwarded-proto"] == "http"
    gw.wait_log(rf'plain 127\.0\.0\.1:\d+ sni=- tls=- cipher=- alpn=- "GET 127\.0\.0\.1:\d+ {path} HTTP/1\.1" 200 ')


def _ipv6_available() -> bool:
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_available(), reason="::1 is not available")
def test_ipv6_listener(gateway_factory):
    gw6 = gateway_factory(ADMIN_EPHEMERAL + "[listener:v6]\nbind = [::1]:0\n" + ECHO)
    path = f"/echo/{uuid.uuid4().hex}"
    r = curl("-g", "--cacert", gw6.ca, f"https://[::1]:{gw6.port}{path}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["headers"]["x-forwarded-for"] == "::1"
    gw6.wait_log(rf"listener v6 on https://\[::1\]:{gw6.port} ")
    gw6.wait_log(rf"v6 ::1:\d+ sni=- tls=TLSv1\.3 .*{path}")


# -- access log ------------------------------------------------------------------------------


def test_text_access_log_carries_tls_facts(gw):
    code, out = s_client(gw.ports["chacha"], "-tls1_2", "-servername", "localhost", "-alpn", "http/1.1")
    assert code == 0, out
    path = re.search(r'"path": "(/echo/[0-9a-f]+)"', out).group(1)
    gw.wait_log(rf"(?m)^\S+Z chacha 127\.0\.0\.1:\d+ sni=localhost tls=TLSv1\.2 cipher=ECDHE-ECDSA-CHACHA20-POLY1305 "
                rf'alpn=http/1\.1 "GET localhost {path} HTTP/1\.1" 200 in=0 out=\d+ api=echo upstream=builtin:echo '
                r"\d+\.\d+ms id=[0-9a-f]{18,}$")  # the request ID closes the line (issue 15)


def test_json_access_log_to_file(gateway_factory, tmp_path):
    log_path = tmp_path / "logs" / "access.jsonl"
    log_path.parent.mkdir()
    gwj = gateway_factory(ADMIN_EPHEMERAL + f"[gateway]\naccess_log = {log_path}\nlog_format = json\n"
                          "[listener:main]\nbind = 127.0.0.1:0\n" + ECHO)
    paths = [f"/echo/{uuid.uuid4().hex}" for _ in range(3)]
    for flag, p in zip(("--http1.1", "--http2", "--http2"), paths):
        r = curl(flag, "--cacert", gwj.ca, gwj.url(p))
        assert r.returncode == 0, r.stderr

    def records():
        if not log_path.exists():
            return None
        lines = log_path.read_text().splitlines()
        return [json.loads(line) for line in lines] if len(lines) >= 3 else None

    got = poll(records, what="three JSON access log lines")
    assert [g["path"] for g in got] == paths
    first, second = got[0], got[1]
    assert first["alpn"] == "http/1.1" and second["alpn"] == "h2"
    for rec in got:
        assert rec["listener"] == "main" and rec["status"] == 200 and rec["method"] == "GET"
        assert rec["sni"] == "localhost" and rec["tls_version"] == "TLSv1.3"
        assert rec["cipher"].startswith("TLS_") and rec["upstream"] == "builtin:echo"
        assert set(rec) >= {"time", "client", "authority", "bytes_in", "bytes_out", "duration_ms"}
    assert "GET" not in gwj.output().split("listener main on")[1]  # nothing on stdout
    assert gwj.stop() == 0


def test_access_log_off(gateway_factory):
    gwo = gateway_factory(ADMIN_EPHEMERAL + "[gateway]\naccess_log = off\n[listener:main]\nbind = 127.0.0.1:0\n" + ECHO)
    r = curl("--cacert", gwo.ca, gwo.url("/echo/quiet"))
    assert r.returncode == 0, r.stderr
    assert gwo.stop() == 0  # stopping flushes the access log: any line would be out now
    assert "/echo/quiet" not in gwo.output()


# -- the server closes its side (TLS too: close_notify, then FIN) ----------------------------


def _open(port: int, tls: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    return sock


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Read until EOF (close_notify or FIN); False if the server keeps the connection past the deadline."""
    end = time.monotonic() + deadline
    try:
        while time.monotonic() < end:
            sock.settimeout(max(0.01, end - time.monotonic()))
            if not sock.recv(65536):
                return True
    except socket.timeout:
        return False
    except (ssl.SSLError, ConnectionError):
        return True
    return False


@pytest.mark.parametrize("listener", ["plain", "main"])
def test_connection_close_response_closes_the_connection(gw, listener):
    sock = _open(gw.ports[listener], tls=listener != "plain")
    try:
        sock.sendall(b"GET /echo/close HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert _closed_by_server(sock, 3.0)
    finally:
        sock.close()


@pytest.mark.parametrize("listener", ["shortplain", "short"])
def test_idle_timeout_closes_keepalive_connection(gw, listener):
    sock = _open(gw.ports[listener], tls=listener == "short")
    try:
        sock.sendall(b"GET /echo/idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert _closed_by_server(sock, 3.0)  # idle_timeout = 0.5
    finally:
        sock.close()


@pytest.mark.parametrize("gw", H2_ENGINES, indirect=True)
def test_h2_idle_timeout_closes_the_connection(gw):
    import h2.config
    import h2.connection

    sock = socket.create_connection(("127.0.0.1", gw.ports["short"]), timeout=5)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(sock, server_hostname="localhost")
    try:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        assert _closed_by_server(sock, 3.0)  # idle_timeout = 0.5
    finally:
        sock.close()
