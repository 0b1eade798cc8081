"""Graceful shutdown for real: SIGTERM stops accepting, lets in-flight requests finish, exits 0."""
from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time

from backends import H2Client
from conftest import ADMIN_EPHEMERAL, curl, poll


def config(backend, shutdown_timeout):
    return (
        ADMIN_EPHEMERAL + f"[gateway]\nshutdown_timeout = {shutdown_timeout}\n\n"
        "[listener:main]\nbind = 127.0.0.1:0\n\n"
        f"[api:be]\npath = /\nupstream = {backend.url()}\n"
    )


def refuses(port):
    def check():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            return False  # caught in the backlog while the port closed: ask again until it is refused
        return False

    return check


def start_slow(gw, path):
    return subprocess.Popen(["curl", "-sS", "--cacert", gw.ca, "-w", "\n%{http_code}", gw.url(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigterm_lets_in_flight_request_finish_and_exits_0(gateway_factory, backend):
    gw = gateway_factory(config(backend, 10))
    p = start_slow(gw, "/sleep/2")
    poll(lambda: any(r["path"] == "/sleep/2" for r in backend.requests), what="request in flight")
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    poll(refuses(gw.port), timeout=5, what="new connections refused")
    out, err = p.communicate(timeout=15)
    body, _, code = out.decode().rpartition("\n")
    assert code == "200", err
    assert json.loads(body)["path"] == "/sleep/2"
    assert gw.proc.wait(15) == 0
    assert time.monotonic() - t0 < 10
    assert "txgate stopped" in gw.output()


def test_request_longer_than_shutdown_timeout_is_cut_and_exit_is_0(gateway_factory, backend):
    gw = gateway_factory(config(backend, 1))
    p = start_slow(gw, "/sleep/6")
    poll(lambda: any(r["path"] == "/sleep/6" for r in backend.requests), what="request in flight")
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - t0 < 4
    out, err = p.communicate(timeout=10)
    # "then closes what is left" (docs/configuration.md): the client gets no response at all.
    assert p.returncode != 0, (out, err)
    assert out.endswith(b"\n000"), (out, err)
    gw.wait_log(r"shutdown_timeout reached: closing 1 connections")


def test_idle_h1_keep_alive_connection_closed_at_once(gateway_factory, backend):
    gw = gateway_factory(config(backend, 10))
    ctx = ssl.create_default_context(cafile=gw.ca)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port)), server_hostname="localhost")
    s.settimeout(8)
    s.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    assert s.recv(65536) == b""  # close_notify from the gateway, not the shutdown deadline
    s.close()
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - t0 < 3


def test_idle_h2_connection_gets_goaway_and_is_closed_at_once(h2_engine, gateway_factory, backend):
    gw = gateway_factory(config(backend, 10))
    c = H2Client(gw.port, gw.ca)
    c.wait(c.request("/x"))
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while c.pump(0.1):
        assert time.monotonic() < deadline, "h2 connection not closed within 5s of SIGTERM"
    c.close()
    assert gw.proc.wait(15) == 0
    assert time.monotonic() - t0 < 5


def test_h2_in_flight_stream_finishes_on_sigterm(h2_engine, gateway_factory, backend):
    # curl, not python-h2: python-h2 refuses frames of running streams after a GOAWAY.
    gw = gateway_factory(config(backend, 10))
    p = subprocess.Popen(["curl", "-sS", "--http2", "--cacert", gw.ca, "-w", "\n%{http_code} %{http_version}",
                          gw.url("/sleep/1.5")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    poll(lambda: any(r["path"] == "/sleep/1.5" for r in backend.requests), what="request in flight")
    gw.signal(signal.SIGTERM)
    poll(refuses(gw.port), timeout=5, what="new connections refused")
    out, err = p.communicate(timeout=15)
    body, _, tail = out.decode().rpartition("\n")
    assert tail == "200 2", err
    assert json.loads(body)["path"] == "/sleep/1.5"
    assert gw.proc.wait(15) == 0
