"""TLS 1.3 records after the hand-over (txgate.tls.records13), with real clients over real sockets:
KeyUpdate from `openssl s_client` both ways, TLS 1.2 still on OpenSSL, h2load's h1 and h2 load, the
close_notify exchange, and `[gateway] tls_record_layer`."""
from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from conftest import ADMIN_EPHEMERAL, curl, poll, run_gateway_once

GW = ADMIN_EPHEMERAL + """
[gateway]
access_log = -
shutdown_timeout = 1
{extra}

[listener:main]
bind = 127.0.0.1:0

[api:echo]
path = /echo
upstream = builtin:echo
"""


def _read_until(proc, pattern: bytes, timeout: float = 10.0) -> bytes:
    """Read s_client's stdout until ``pattern`` shows up (fails the test after ``timeout``)."""
    import os
    import selectors

    got = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while pattern not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{pattern!r} not seen in s_client output: {got[-2000:]!r}"
        if sel.select(left):
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"s_client ended before {pattern!r}: {got[-2000:]!r}"
            got += chunk
    return got


@pytest.mark.parametrize("letter", ["K", "k"])
def test_key_update_from_openssl_s_client_both_ways(gateway_factory, letter):
    """`K`: s_client sends KeyUpdate(update_requested): the gateway must move its read key and answer
    with its own KeyUpdate; `k`: update_not_requested, no answer. Requests after it are served."""
    gw = gateway_factory(GW.format(extra=""))
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-servername", "localhost",
         "-CAfile", gw.ca, "-alpn", "http/1.1", "-tls1_3", "-crlf", "-msg"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        request = b"GET /echo/before HTTP/1.1\nHost: localhost\n\n"
        out = _read_until(proc, b"Verify return code: 0")
        proc.stdin.write(request)
        proc.stdin.flush()
        out += _read_until(proc, b'"/echo/before"')
        proc.stdin.write(letter.encode() + b"\n")
        proc.stdin.flush()
        out += _read_until(proc, b"KEYUPDATE")
        # Give the update time to cross before the next request (s_client reads stdin in chunks).
        time.sleep(0.3)
        proc.stdin.write(b"GET /echo/after HTTP/1.1\nHost: localhost\n\n")
        proc.stdin.flush()
        out += _read_until(proc, b'"/echo/after"')
        after = out[out.index(b"KEYUPDATE"):]
        answered = re.search(rb"<<< TLS 1\.3, Handshake \[length 0005\], KeyUpdate", after) is not None
        assert answered == (letter == "K"), after[-3000:]
        assert out.count(b"HTTP/1.1 200 OK") == 2
    finally:
        proc.kill()
        proc.wait()
    assert "Unhandled" not in gw.output()


def test_tls12_clients_are_served_by_openssl_records(gateway_factory):
    gw = gateway_factory(GW.format(extra=""))
    for args in (("--tls-max", "1.2", "--http1.1"), ("--tls-max", "1.2", "--http2"), ("--tlsv1.3",)):
        r = curl("-sS", "--cacert", gw.ca, *args, "-w", "%{http_code} %{http_version}", gw.url("/echo/v"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.endswith((b"200 1.1", b"200 2")), r.stdout[-200:]


@pytest.mark.parametrize("mode", ["--h1", None])
def test_h2load_requests_all_succeed(gateway_factory, mode):
    if shutil.which("h2load") is None:
        pytest.fail("h2load is not installed (tests/run.sh installs nghttp2-client)")
    gw = gateway_factory(GW.format(extra=""))
    args = ["h2load", "-n", "2000", "-c", "20", "-m", "4", "--connect-to", f"127.0.0.1:{gw.port}",
            f"https://localhost:{gw.port}/echo/load"]
    if mode:
        args.insert(1, mode)
    r = subprocess.run(args, capture_output=True, timeout=120)
    assert b"2000 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout[-2000:]
    assert b"status codes: 2000 2xx" in r.stdout, r.stdout[-2000:]


def test_close_notify_is_answered_and_a_body_larger_than_a_record_arrives_whole(gateway_factory):
    gw = gateway_factory(GW.format(extra=""))
    ctx = ssl.create_default_context(cafile=gw.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    body = b"z" * 70_000
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"POST /echo/big HTTP/1.1\r\nHost: localhost\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            got = b""
            while b'"body_bytes": 70000' not in got:
                chunk = s.recv(65536)
                assert chunk, got[-500:]
                got += chunk
            assert got.startswith(b"HTTP/1.1 200 ")
            plain = s.unwrap()  # our close_notify; returns once the gateway's has arrived
            assert plain.recv(10) == b""  # then the gateway closes TCP


def test_tls_record_layer_openssl_keeps_every_record_with_openssl(gateway_factory):
    gw = gateway_factory(GW.format(extra="tls_record_layer = openssl"))
    r = curl("-sS", "--cacert", gw.ca, "--http2", "-w", "%{http_code}", gw.url("/echo/o"))
    assert r.returncode == 0 and r.stdout.endswith(b"200"), r.stderr


def test_tls_record_layer_bad_value_names_file_section_and_key(tmp_path):
    r = run_gateway_once(tmp_path, GW.format(extra="tls_record_layer = kernel"))
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert re.search(r"gw\.ini.*\[gateway\].*tls_record_layer", err), err
    assert "Traceback" not in err


def _s_client(gw, *args: str, request: bytes = b"") -> str:
    """One `openssl s_client -tls1_3` connection sending ``request`` (Connection: close) to its end."""
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-servername", "localhost", "-CAfile", gw.ca,
         "-alpn", "http/1.1", "-tls1_3", "-ign_eof", *args],
        input=request, capture_output=True, timeout=30)
    return (r.stdout + r.stderr).decode("latin-1")


def _listener_with(line: str) -> str:
    listener = "[listener:main]\nbind = 127.0.0.1:0\n"
    return GW.format(extra="").replace(listener, listener + line + "\n")


REQUEST = b"GET /echo/%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("tickets", ["on", "off"])
def test_openssl_s_client_resumes_and_is_served_after_the_hand_over(gateway_factory, tmp_path, tickets):
    """-sess_out then -sess_in: both handshakes hand over, the second one resumed (PSK), and each
    connection's request is answered. With session_tickets = off TLS 1.3 resumes through the server's
    session cache (stateful tickets), which the hand-over must not empty."""
    gw = gateway_factory(_listener_with(f"session_tickets = {tickets}"))
    sess = str(tmp_path / "sess.pem")
    first = _s_client(gw, "-sess_out", sess, request=REQUEST % b"first")
    assert '"/echo/first"' in first and "New, TLSv1.3" in first, first[-3000:]
    second = _s_client(gw, "-sess_in", sess, request=REQUEST % b"second")
    assert "Reused, TLSv1.3" in second, second[-3000:]
    assert '"/echo/second"' in second, second[-3000:]
    assert "Unhandled" not in gw.output()


def test_hello_retry_request_then_served_after_the_hand_over(gateway_factory):
    """The client's only key share (X25519) is not a group of the listener's: a HelloRetryRequest
    (its fixed random, RFC 8446 4.1.3, in s_client's message dump), then a request is served."""
    gw = gateway_factory(_listener_with("groups = P-256"))
    out = _s_client(gw, "-groups", "X25519:P-256", "-msg", request=REQUEST % b"hrr")
    assert "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c" in re.sub(r"\s+", "", out), out[:3000]
    assert '"/echo/hrr"' in out, out[-3000:]
