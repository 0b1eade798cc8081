"""Shared fixtures: certificates (built once per session), a real gateway process, real backends."""
from __future__ import annotations

import configparser
import os
import pickle
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from certs_helpers import make_ca, make_intermediate, make_leaf, write_ca, write_pair  # noqa: E402

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
LISTEN_RE = re.compile(r"listener (\S+) on (https?)://(\S+):(\d+) ")
ADMIN_RE = r"admin API on (https?)://(\S+):(\d+) \(auth: "
# Test gateways never bind the admin API's default 127.0.0.1:9901 (other gateways on the host may hold it):
# put this (or `bind = off`) in every config; the port is read from the startup line (Gateway.admin_port).
ADMIN_EPHEMERAL = "[admin]\nbind = 127.0.0.1:0\n"
STOP_TIMEOUT = 15.0


def admin_on_default_address(config_text: str) -> bool:
    """True when the config leaves the admin API on its fixed default address (no `[admin] bind`)."""
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        cp.read_string(config_text)
    except configparser.Error:
        return False  # not an INI the gateway would start with: it fails before binding anything
    return not (cp.has_section("admin") and cp.has_option("admin", "bind"))


def poll(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Wait for predicate() to be truthy, with a deadline (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _built_h2_engines() -> list[str]:
    from txgate.http.h2engine import available_engines

    return sorted(available_engines())


# The HTTP/2 engines built here ("native" when txgate._nghttp2 is, always "python"): h2 end-to-end
# tests run on each (the `h2_engine` fixture, or indirect parametrization of a module's gateway).
H2_ENGINES = _built_h2_engines()
# Set by the `h2_engine` fixture: every Gateway started meanwhile gets `[gateway] h2_engine = ...`.
h2_engine_override: str | None = None


def with_h2_engine(config_text: str, engine: str | None) -> str:
    """The config with `[gateway] h2_engine = ENGINE` (a [gateway] section added when there is none)."""
    if not engine:
        return config_text
    line = f"h2_engine = {engine}\n"
    if re.search(r"^h2_engine\s*=", config_text, re.M):
        return re.sub(r"^h2_engine\s*=.*$", line.rstrip("\n"), config_text, flags=re.M)
    if re.search(r"^\[gateway\]\s*$", config_text, re.M):
        return re.sub(r"^\[gateway\]\s*$", "[gateway]\n" + line.rstrip("\n"), config_text, count=1, flags=re.M)
    return "[gateway]\n" + line + "\n" + config_text


@pytest.fixture(params=H2_ENGINES)
def h2_engine(request, monkeypatch):
    """Run the test once per HTTP/2 engine: gateways it starts use that engine."""
    monkeypatch.setattr(sys.modules[__name__], "h2_engine_override", request.param)
    return request.param


NOBODY = 65534


def unprivileged(fn):
    """Return fn() computed by an unprivileged user, so permission checks hold for root too (CI runs as root).

    Not root: fn() here. Root: a forked child drops to nobody and sends fn()'s (picklable) result back;
    an exception in the child fails the test with its text.
    """
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                payload = pickle.dumps((True, fn()))
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                payload = pickle.dumps((False, f"{e.__class__.__name__}: {e}"))
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)
    if not ok:
        raise AssertionError(f"as an unprivileged user: {value}")
    return value


@pytest.fixture
def open_tmp():
    """A temporary directory every user can reach (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="txgate-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def gateway_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Gateway:
    """A real `twistd -n txgate --config gw.ini` process on ephemeral ports.

    Listeners and the admin API bind port 0; the ports are read from the startup log lines. A config
    that would bind the admin API's default fixed port is refused at start() (add ADMIN_EPHEMERAL).

    Tests run one process (`--workers 1`, what they assert about: one log, one reload) unless they pass
    ``workers`` ("auto", "2", or None for the gw.ini value); tests/test_workers_e2e.py runs workers.
    """

    def __init__(self, workdir: Path, config_text: str, extra_args: tuple = (), workers: str | None = "1",
                 h2_engine: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "gw.ini"
        self.config_path.write_text(with_h2_engine(config_text, h2_engine or h2_engine_override))
        self.out_path = self.workdir / "gateway.out"
        self.err_path = self.workdir / "gateway.err"
        self.extra_args = extra_args
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    def command(self) -> list[str]:
        workers = ("--workers", self.workers) if self.workers is not None else ()
        return [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txgate", "--config", str(self.config_path),
                *workers, *self.extra_args]

    def start(self, expect_listeners: int | None = None) -> Gateway:
        if admin_on_default_address(self.config_path.read_text()):
            raise AssertionError("this test gateway would bind the admin API's default 127.0.0.1:9901: "
                                 "add [admin] bind = 127.0.0.1:0 (conftest.ADMIN_EPHEMERAL) or bind = off")
        self.proc = subprocess.Popen(
            self.command(), cwd=self.workdir, env=gateway_env(), stdin=subprocess.DEVNULL,
            stdout=open(self.out_path, "wb"), stderr=open(self.err_path, "wb"),
        )
        n = expect_listeners or self.config_path.read_text().count("[listener:")

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.output()}\n{self.errors()}")
            found = LISTEN_RE.findall(self.output())
            return len(found) >= n and found

        for name, _scheme, _host, port in poll(ready, 20, what="gateway listeners"):
            self.ports[name] = int(port)
        return self

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def url(self, path: str = "/", listener: str | None = None, host: str = "localhost") -> str:
        port = self.ports[listener] if listener else self.port
        return f"https://{host}:{port}{path}"

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def errors(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        rx = re.compile(pattern)
        return poll(lambda: rx.search(self.output()), timeout, what=f"log line /{pattern}/")

    @property
    def admin_port(self) -> int:
        """The admin API's port, from its startup line (`admin API on http://127.0.0.1:PORT (auth: ...)`)."""
        return int(self.wait_log(ADMIN_RE).group(3))

    @property
    def ca(self) -> str:
        return str(self.workdir / "txgate-state" / "ca.pem")

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait until the deadline, then SIGKILL and fail: a gateway that will not stop is a bug."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"gateway in {self.workdir} did not stop within {timeout}s of SIGTERM "
                                 f"(killed):\n{self.output()[-4000:]}\n{self.errors()[-4000:]}") from None


def stop_all(gateways: list[Gateway]) -> None:
    """Stop every gateway (each gets its SIGTERM and deadline), then fail the test if any would not stop."""
    failures = []
    for gw in gateways:
        try:
            gw.stop()
        except AssertionError as e:
            failures.append(str(e))
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.fixture
def gateway_factory(tmp_path):
    """Start gateways from config text; all are stopped at the end of the test."""
    started: list[Gateway] = []

    def start(config_text: str, name: str = "gw", **kw) -> Gateway:
        gw = Gateway(tmp_path / name, config_text, **kw)
        started.append(gw)
        return gw.start()

    yield start
    stop_all(started)


def run_gateway_once(tmp_path: Path, config_text: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run twistd txgate expecting it to exit (config errors)."""
    gw = Gateway(tmp_path, config_text)
    return subprocess.run(gw.command(), cwd=tmp_path, env=gateway_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def txgate_cli(*args, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the `txgate` command (as `python -m txgate.cli`)."""
    return subprocess.run([sys.executable, "-m", "txgate.cli", *args], cwd=cwd, env=gateway_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def curl(*args, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run curl; -sS always; returns the CompletedProcess (stdout is the body)."""
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)


# -- certificates -------------------------------------------------------------------------


class CertSet:
    """Certificates for a test session, written to one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.root = make_ca("txgate test root")
        self.intermediate = make_intermediate(self.root, "txgate test intermediate")
        self.root_pem = write_ca(directory, "root-ca", self.root)
        self.other_root = make_ca("unrelated root")
        self.other_root_pem = write_ca(directory, "other-root-ca", self.other_root)

    def leaf(self, name: str, names, **kw) -> tuple[str, str]:
        """Write a leaf (signed by the intermediate unless ca= is given) and return (cert, key) paths."""
        ca = kw.pop("ca", self.intermediate)
        return write_pair(self.dir, name, make_leaf(ca, names, **kw))


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> CertSet:
    return CertSet(tmp_path_factory.mktemp("certs"))


# -- backends -----------------------------------------------------------------------------


class _BackendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "testbackend"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        server = self.server
        body = self._body()
        server.requests.append(
            {"method": self.command, "path": self.path, "headers": list(self.headers.items()), "body": body,
             "client_port": self.client_address[1]}
        )
        path = self.path
        if path.startswith("/status/"):
            code = int(path.split("/")[2].split("?")[0])
            payload = b'{"status": %d}' % code
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if path.startswith("/sleep/"):
            time.sleep(float(path.split("/")[2]))
        if path.startswith("/close"):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = (
            b'{"method": "%s", "path": "%s", "body_bytes": %d}'
            % (self.command.encode(), self.path.encode(), len(body))
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "keep-alive, X-Hop")
        self.send_header("X-Hop", "must-be-removed")
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class _TrackingServer(ThreadingHTTPServer):
    """Remembers accepted sockets so close() ends keep-alive connections too (a real restart)."""

    def get_request(self):
        sock, addr = super().get_request()
        self.accepted.append(sock)
        return sock, addr


class Backend:
    """A real HTTP/1.1 backend on loopback (threaded), optionally TLS; records what it received."""

    def __init__(self, tls: tuple[str, str] | None = None, handler=_BackendHandler, *, port: int = 0,
                 client_ca: str | None = None) -> None:
        # client_ca: require a client certificate issued under this bundle (upstream mTLS).
        self.server = _TrackingServer(("127.0.0.1", port), handler)
        self.server.accepted = []
        self.server.daemon_threads = True
        self.server.requests = []
        self.server.connections = 0
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            if client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(client_ca)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list:
        return self.server.requests

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for sock in self.server.accepted:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.close()


def free_port() -> int:
    """A port nothing listens on (for 'connection refused')."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
