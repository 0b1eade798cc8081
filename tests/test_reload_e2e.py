"""Hot reload with real processes: SIGHUP, broken configs, listeners and APIs added, load, and the store (dir, Redis)."""
from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certs_helpers import make_leaf, pem_chain, pem_key
from conftest import ADMIN_EPHEMERAL, Gateway, poll, txgate_cli
from txgate.store import open_store

SECRET = b"reload-test-secret-0123456789abcdef"


def served_fingerprint(port: int, servername: str = "localhost") -> str:
    """The SHA-256 fingerprint of the leaf `openssl s_client` receives from 127.0.0.1:port."""
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", servername],
        input=b"", capture_output=True, timeout=20,
    )
    m = re.search(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", proc.stdout, re.S)
    assert m, proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    return x509.load_pem_x509_certificate(m.group(0)).fingerprint(hashes.SHA256()).hex()


def fingerprint(ck) -> str:
    return ck.leaf.fingerprint(hashes.SHA256()).hex()


def client_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path, headers={"Host": "localhost"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def reloads(gw: Gateway) -> int:
    return len(re.findall(r"reloaded \(", gw.output()))


def hup_and_wait(gw: Gateway, pattern: str = r"reloaded \(SIGHUP\)", timeout: float = 15.0) -> None:
    before = len(re.findall(pattern, gw.output()))
    gw.signal(signal.SIGHUP)
    poll(lambda: len(re.findall(pattern, gw.output())) > before, timeout, what=f"log /{pattern}/ after SIGHUP")


def write_pair(directory, ck) -> None:
    """Replace cert.pem and key.pem (each atomically, as a deploy tool would)."""
    for name, data in (("key.pem", pem_key(ck)), ("cert.pem", pem_chain(ck))):
        tmp = os.path.join(directory, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, name))


@pytest.fixture
def gateways(gateway_factory):
    return gateway_factory


def file_config(workdir) -> str:
    return (ADMIN_EPHEMERAL + f"[listener:main]\nbind = 127.0.0.1:0\ncertificate = {workdir}/cert.pem {workdir}/key.pem\n"
            "[api:echo]\npath = /echo\nupstream = builtin:echo\n")


def test_sighup_serves_a_replaced_certificate_and_keeps_established_connections(gateways, certs, tmp_path):
    workdir = tmp_path / "gw"
    workdir.mkdir()
    old, new = make_leaf(certs.intermediate, ["localhost", "127.0.0.1"]), make_leaf(certs.intermediate, ["localhost", "127.0.0.1"])
    write_pair(workdir, old)
    gw = gateways(file_config(workdir))
    assert served_fingerprint(gw.port) == fingerprint(old)
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=client_context(certs.root_pem), timeout=10)
    assert get(conn, "/echo/a")[0] == 200
    peer_before = conn.sock.getpeercert(binary_form=True)

    write_pair(workdir, new)
    hup_and_wait(gw)
    assert served_fingerprint(gw.port) == fingerprint(new)
    # The keep-alive connection made before the reload carries on, with the certificate it had.
    status, body = get(conn, "/echo/b")
    assert status == 200 and b"/echo/b" in body
    assert conn.sock.getpeercert(binary_form=True) == peer_before
    conn.close()
    assert "Traceback" not in gw.output() + gw.errors()


def test_broken_config_keeps_the_running_one_and_says_why_in_one_line(gateways, certs, tmp_path):
    workdir = tmp_path / "gw"
    workdir.mkdir()
    ck = make_leaf(certs.intermediate, ["localhost", "127.0.0.1"])
    write_pair(workdir, ck)
    gw = gateways(file_config(workdir))
    gw.config_path.write_text(gw.config_path.read_text() + "colour = blue\n")
    hup_and_wait(gw, r"reload \(SIGHUP\) failed")
    lines = [line for line in gw.output().splitlines() if "colour" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        f"reload (SIGHUP) failed, keeping the running configuration: {gw.config_path}: [api:echo] colour: unknown key")
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=client_context(certs.root_pem), timeout=10)
    assert get(conn, "/echo/still")[0] == 200
    assert served_fingerprint(gw.port) == fingerprint(ck)

    # A certificate that fails validation (key of another certificate) is refused the same way.
    other = make_leaf(certs.intermediate, ["localhost", "127.0.0.1"])
    gw.config_path.write_text(file_config(workdir))
    (workdir / "key.pem").write_bytes(pem_key(other))
    hup_and_wait(gw, r"reload \(SIGHUP\) failed")
    assert re.search(r"reload \(SIGHUP\) failed, keeping the running configuration: .*\[listener:main\] certificate: "
                     r".*key\.pem: private key does not match the certificate", gw.output()), gw.output()
    assert served_fingerprint(gw.port) == fingerprint(ck)
    assert get(conn, "/echo/again")[0] == 200
    conn.close()


def test_added_api_and_listener_route_after_sighup_and_a_moved_listener_rebinds(gateways, certs, tmp_path, backend):
    workdir = tmp_path / "gw"
    workdir.mkdir()
    write_pair(workdir, make_leaf(certs.intermediate, ["localhost", "127.0.0.1"]))
    gw = gateways(file_config(workdir))
    ctx = client_context(certs.root_pem)
    assert get(http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=10), "/new/x")[0] == 404
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=10)
    assert get(conn, "/echo/x")[0] == 200
    sock = conn.sock
    port = gw.port

    text = file_config(workdir) + f"[api:new]\npath = /new\nupstream = {backend.url()}\n"
    text += f"[listener:extra]\nbind = 127.0.0.1:0\ncertificate = {workdir}/cert.pem {workdir}/key.pem\n"
    gw.config_path.write_text(text)
    hup_and_wait(gw)
    assert get(conn, "/echo/y")[0] == 200 and conn.sock is sock  # established: still served
    fresh = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    assert get(fresh, "/new/x")[0] == 200
    extra = int(gw.wait_log(r"listener extra on https://127\.0\.0\.1:(\d+) ").group(1))
    assert get(http.client.HTTPSConnection("127.0.0.1", extra, context=ctx, timeout=10), "/echo/e")[0] == 200

    # Move main to another port: the new one serves, the old one is closed; removing extra stops it.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    moved = s.getsockname()[1]
    s.close()
    text = text.replace("[listener:main]\nbind = 127.0.0.1:0", f"[listener:main]\nbind = 127.0.0.1:{moved}")
    text = text[: text.index("[listener:extra]")]
    gw.config_path.write_text(text)
    hup_and_wait(gw)
    assert get(http.client.HTTPSConnection("127.0.0.1", moved, context=ctx, timeout=10), "/new/y")[0] == 200
    def refused(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return True
        return False

    for gone in (port, extra):
        poll(lambda: refused(gone), 5, what=f"port {gone} closed")
    # Established connections outlive the listener they came from.
    assert get(fresh, "/new/z")[0] == 200
    assert get(conn, "/echo/z")[0] == 200 and conn.sock is sock


def test_ten_reloads_under_continuous_load_fail_no_request(gateways, certs, tmp_path, backend):
    workdir = tmp_path / "gw"
    workdir.mkdir()
    pairs = [make_leaf(certs.intermediate, ["localhost", "127.0.0.1"]) for _ in range(2)]
    write_pair(workdir, pairs[0])
    gw = gateways(file_config(workdir) + f"[api:up]\npath = /up\nupstream = {backend.url()}\n")
    ctx = client_context(certs.root_pem)
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def worker(keep_alive: bool, path: str) -> None:
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=10)
                status, _ = get(conn, path)
                ok = status == 200
                if not ok:
                    errors.append(f"{path}: status {status}")
            except Exception as e:  # any failure counts
                ok = False
                errors.append(f"{path}: {e.__class__.__name__}: {e}")
                conn = None
            with lock:
                counts["ok" if ok else "failed"] += 1
            if not keep_alive and conn is not None:
                conn.close()
                conn = None

    threads = [threading.Thread(target=worker, args=args, daemon=True)
               for args in ((True, "/up/ka"), (False, "/up/new"), (True, "/echo/ka"), (False, "/echo/new"))]
    for t in threads:
        t.start()
    try:
        poll(lambda: counts["ok"] > 50, 20, what="requests flowing")
        for i in range(10):
            write_pair(workdir, pairs[(i + 1) % 2])
            at = counts["ok"]
            hup_and_wait(gw)
            poll(lambda: counts["ok"] > at + 20, 20, what="requests after the reload")
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert reloads(gw) == 10
    assert counts["failed"] == 0, errors[:10]
    assert counts["ok"] > 200
    assert served_fingerprint(gw.port) == fingerprint(pairs[10 % 2])


# -- certificates from the store -------------------------------------------------------------------


def store_config(state_dir, secret_file, store: str = "dir") -> str:
    return (ADMIN_EPHEMERAL + f"[gateway]\nstate_dir = {state_dir}\nstore = {store}\nstore_secret_file = {secret_file}\n"
            "[listener:main]\nbind = 127.0.0.1:0\ncertificate = store:web\n"
            "[api:echo]\npath = /echo\nupstream = builtin:echo\n")


def test_store_referenced_listener_follows_dir_store_writes_on_sighup(gateways, certs, tmp_path):
    state = tmp_path / "state"
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    v1, v2 = make_leaf(certs.intermediate, ["localhost", "127.0.0.1"]), make_leaf(certs.intermediate, ["localhost", "127.0.0.1"])
    store = open_store("dir", str(state), SECRET)
    store.put("web", pem_chain(v1), pem_key(v1))
    gw = gateways(store_config(state, secret))
    assert served_fingerprint(gw.port) == fingerprint(v1)

    store.put("web", pem_chain(v2), pem_key(v2))  # another process: the dir backend does not notify it
    hup_and_wait(gw)
    assert served_fingerprint(gw.port) == fingerprint(v2)

    proc = txgate_cli("store", "rollback", "web", "--config", str(gw.config_path), cwd=gw.workdir)
    assert proc.returncode == 0, proc.stderr
    hup_and_wait(gw)
    assert served_fingerprint(gw.port) == fingerprint(v1)

    store.delete("web")  # a reference that no longer resolves: the running certificate stays
    hup_and_wait(gw, r"reload \(SIGHUP\) failed")
    assert f"{gw.config_path}: [listener:main] certificate: store:web: no store entry named 'web'" in gw.output()
    assert served_fingerprint(gw.port) == fingerprint(v1)
    store.close()


@pytest.fixture
def redis_url(tmp_path):
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("redis")
    from test_store_redis import RedisServer

    server = RedisServer(tmp_path).start()
    yield server.url(5)
    server.stop()


def test_two_gateways_sharing_redis_serve_a_new_certificate_within_two_seconds(gateways, certs, tmp_path, redis_url):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    v1, v2 = make_leaf(certs.intermediate, ["localhost", "127.0.0.1"]), make_leaf(certs.intermediate, ["localhost", "127.0.0.1"])
    store = open_store(redis_url, str(tmp_path / "unused"), SECRET)
    store.put("web", pem_chain(v1), pem_key(v1))
    a = gateways(store_config(tmp_path / "a-state", secret, redis_url), name="a")
    b = gateways(store_config(tmp_path / "b-state", secret, redis_url), name="b")
    for gw in (a, b):
        assert served_fingerprint(gw.port) == fingerprint(v1)

    # An unrelated name changes nothing (no reload).
    other = make_leaf(certs.intermediate, ["other.example"])
    store.put("other", pem_chain(other), pem_key(other))

    started = time.monotonic()
    store.put("web", pem_chain(v2), pem_key(v2))
    for gw in (a, b):
        poll(lambda: served_fingerprint(gw.port) == fingerprint(v2), 2.0 - (time.monotonic() - started) + 0.05,
             interval=0.05, what="the new certificate served")
    assert time.monotonic() - started < 2.0
    for gw in (a, b):
        assert re.search(r"reloaded \(store change: web\)", gw.output()), gw.output()
        assert "store change: other" not in gw.output()
        assert reloads(gw) == 1
    store.close()


def admin(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/x-pem-file"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, (json.loads(data) if data[:1] in (b"{", b"[") else {"raw": data.decode(errors="replace")})


def test_admin_api_upload_is_served_without_sighup_and_reload_works(gateways, certs, tmp_path):
    state = tmp_path / "state"
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    v1, v2 = make_leaf(certs.intermediate, ["localhost", "127.0.0.1"]), make_leaf(certs.intermediate, ["localhost", "127.0.0.1"])
    store = open_store("dir", str(state), SECRET)
    e1 = store.put("web", pem_chain(v1), pem_key(v1))
    store.close()
    gw = gateways(store_config(state, secret))
    port = gw.admin_port
    assert served_fingerprint(gw.port) == fingerprint(v1)

    status, listing = admin(port, "GET", "/certs")
    assert status == 200, listing
    web = next(c for c in listing["certificates"] if c["name"] == "web")
    assert web["used_by"] == ["listener:main"]
    status, body = admin(port, "DELETE", "/certs/web")
    assert status == 409, body

    # Through this gateway's admin API: the store notifies the gateway itself (no SIGHUP).
    status, body = admin(port, "POST", "/certs?name=web", pem_chain(v2) + pem_key(v2))
    assert status == 201 and body["version"] == 2, body
    poll(lambda: served_fingerprint(gw.port) == fingerprint(v2), 5, interval=0.05, what="the uploaded certificate")
    gw.wait_log(r"reloaded \(store change: web\)")
    status, body = admin(port, "POST", "/certs/web/rollback")
    assert status == 200, body
    poll(lambda: served_fingerprint(gw.port) == fingerprint(v1), 5, interval=0.05, what="the rolled-back certificate")

    status, body = admin(port, "POST", "/reload")
    assert (status, body["ok"]) == (200, True), body
    gw.wait_log(r"reloaded \(admin API\): 1 listeners, 1 APIs")
    gw.config_path.write_text(gw.config_path.read_text() + "colour = blue\n")
    status, body = admin(port, "POST", "/reload")
    assert status == 422, body
    assert f"{gw.config_path}: [api:echo] colour: unknown key" in str(body)
    assert served_fingerprint(gw.port) == fingerprint(v1)
    status, body = admin(port, "GET", f"/certs/{e1.id}")
    assert status == 200 and "listener:main" in str(body), body
