"""Config mistakes against the real process: `twistd txgate` and `txgate check` print one exact line, exit 1."""
from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta

import pytest

from certs_helpers import NOW
from conftest import ADMIN_EPHEMERAL, TWISTD, gateway_env, run_gateway_once, txgate_cli

L = "[listener:main]\nbind = 127.0.0.1:0\n"
STAMP = "%Y-%m-%dT%H:%M:%SZ"


def _cases(certs, tmp_path):
    cert, key = certs.leaf("e2e-good", ["localhost"])
    _, other_key = certs.leaf("e2e-other", ["localhost"])
    expired_at = NOW - timedelta(days=2)
    old_cert, old_key = certs.leaf("e2e-expired", ["localhost"], not_before=NOW - timedelta(days=60),
                                   not_after=expired_at)
    bad_pem = tmp_path / "bad.pem"
    bad_pem.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing.pem"
    return {
        "unknown-section": ("[gatewy]\n" + L, "[gatewy]: unknown section (did you mean 'gateway'?)"),
        "unknown-key": (L + "min_tsl = 1.2\n", "[listener:main] min_tsl: unknown key (did you mean 'min_tls'?)"),
        "bool": (L + "session_tickets = enabled\n", "[listener:main] session_tickets: expected on/off, got 'enabled'"),
        "number": (L + "[api:a]\nupstream = builtin:echo\ntimeout = 5s\n",
                   "[api:a] timeout: expected a number, got '5s'"),
        "bind": ("[listener:main]\nbind = localhost\n", "[listener:main] bind: expected HOST:PORT, got 'localhost'"),
        "tls-version": (L + "min_tls = 1.5\n",
                        "[listener:main] min_tls: expected one of 1.0, 1.1, 1.2, 1.3, got '1.5' (did you mean '1.3'?)"),
        "alpn": (L + "alpn = spdy/3\n", "[listener:main] alpn: unsupported protocol 'spdy/3' (expected h2 and/or http/1.1)"),
        "upstream-url": (L + "[api:a]\nupstream = tcp://10.0.0.1:80\n",
                         "[api:a] upstream: 'tcp://10.0.0.1:80': expected an http:// or https:// URL, or builtin:echo"),
        "missing-file": (L + f"certificate = {missing} {key}\n",
                         f"[listener:main] certificate: {missing}: file not found"),
        "unreadable-file": (L + f"certificate = {tmp_path} {key}\n",
                            f"[listener:main] certificate: {tmp_path}: not a regular file"),
        "invalid-pem": (L + f"certificate = {bad_pem} {key}\n",
                        f"[listener:main] certificate: {bad_pem}: not a PEM certificate"),
        "key-mismatch": (L + f"certificate = {cert} {other_key}\n",
                         f"[listener:main] certificate: {other_key}: private key does not match the certificate {cert}"),
        "expired": (L + f"certificate = {old_cert} {old_key}\n",
                    f"[listener:main] certificate: {old_cert}: certificate expired on {expired_at.strftime(STAMP)}"),
        "same-hosts-and-path": (L + "[api:a]\nupstream = builtin:echo\nhosts = x.example.com\npath = /v1\n"
                                "[api:b]\nupstream = builtin:echo\nhosts = x.example.com\npath = /v1/\n",
                                "[api:b] path: host 'x.example.com' and path '/v1' are already served by [api:a]"),
        "no-such-listener": (L + "[api:a]\nupstream = builtin:echo\nlisteners = public\n",
                             "[api:a] listeners: no listener named 'public'"),
        "bad-ciphers": (L + "ciphers = ECDHE+NOTACIPHER\n",
                        "[listener:main] ciphers: rejected by OpenSSL: invalid cipher list 'ECDHE+NOTACIPHER': no cipher match"),
        "bad-ciphers-with-cert": (L + f"certificate = {cert} {key}\nciphers = RC4-MD5\n",
                                  "[listener:main] ciphers: rejected by OpenSSL: invalid cipher list 'RC4-MD5': no cipher match"),
    }


CASES = ["unknown-section", "unknown-key", "bool", "number", "bind", "tls-version", "alpn", "upstream-url",
         "missing-file", "unreadable-file", "invalid-pem", "key-mismatch", "expired", "same-hosts-and-path",
         "no-such-listener", "bad-ciphers", "bad-ciphers-with-cert"]


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert proc.stderr == f"txgate: configuration error: {expected}\n", proc.stderr


@pytest.mark.parametrize("case", CASES)
def test_startup_and_check_report_the_same_line(case, certs, tmp_path):
    text, message = _cases(certs, tmp_path)[case]
    config = tmp_path / "gw.ini"
    expected = f"{config}: {message}"
    assert_one_line_error(run_gateway_once(tmp_path, text), expected)
    assert not (tmp_path / "txgate-state").exists()  # validation happens before anything is created
    check = txgate_cli("check", "--config", str(config), cwd=tmp_path)
    assert_one_line_error(check, expected)
    assert check.stdout == ""


def test_port_already_in_use(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        text = f"[listener:main]\nbind = 127.0.0.1:{port}\n[api:e]\nupstream = builtin:echo\n"
        expected = f"{tmp_path / 'gw.ini'}: [listener:main] bind: 127.0.0.1:{port}: address already in use"
        assert_one_line_error(run_gateway_once(tmp_path, text), expected)
        assert_one_line_error(txgate_cli("check", "--config", str(tmp_path / "gw.ini"), cwd=tmp_path), expected)
        # Nothing was created before the port check failed.
        assert not (tmp_path / "txgate-state").exists()
    finally:
        busy.close()


def test_two_listeners_colliding_on_one_port(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    text = f"[listener:a]\nbind = 0.0.0.0:{port}\n[listener:b]\nbind = 127.0.0.1:{port}\n"
    expected = f"{tmp_path / 'gw.ini'}: [listener:b] bind: 127.0.0.1:{port}: address already in use"
    assert_one_line_error(run_gateway_once(tmp_path, text), expected)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.ini"
    proc = subprocess.run([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "txgate", "--config", str(missing)],
                          cwd=tmp_path, env=gateway_env(), capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert_one_line_error(proc, f"{missing}: file not found")
    assert_one_line_error(txgate_cli("check", "--config", str(missing), cwd=tmp_path), f"{missing}: file not found")


def test_check_ok_writes_nothing(tmp_path, certs):
    cert, key = certs.leaf("check-ok", ["localhost", "a.example.com"])
    config = tmp_path / "gw.ini"
    config.write_text(L + f"sni =\n  a.example.com = {cert} {key}\n"
                      "[listener:plain]\nbind = 127.0.0.1:0\ntls = off\n[api:e]\nupstream = builtin:echo\n")
    proc = txgate_cli("check", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{config}: OK (2 listeners, 1 APIs)\n"
    assert proc.stderr == ""
    assert not (tmp_path / "txgate-state").exists()


def test_check_embedded_defaults(tmp_path, monkeypatch, capsys):
    # `txgate check` without --config checks the embedded defaults. They bind 127.0.0.1:8443, which
    # check probes: in-process with that port turned to 0, so the outcome does not depend on the host.
    from txgate import cli, config

    home = sys.modules[config.default_config.__module__]  # where default_config() reads DEFAULT_CONFIG
    assert home.DEFAULT_CONFIG.count("127.0.0.1:8443") == 1
    monkeypatch.setattr(home, "DEFAULT_CONFIG", home.DEFAULT_CONFIG.replace("127.0.0.1:8443", "127.0.0.1:0"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["check"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("<embedded defaults>: OK (1 listeners, 1 APIs)\n", "")
    assert list(tmp_path.iterdir()) == []  # check writes nothing (no txgate-state)


def test_warnings_do_not_stop_the_gateway(certs, tmp_path, gateway_factory):
    soon = NOW + timedelta(days=3, hours=1)
    cert, key = certs.leaf("warn-soon", ["localhost"], not_after=soon)
    other_cert, other_key = certs.leaf("warn-other", ["b.example.com"])
    text = (L + f"certificate = {cert} {key}\nmin_tls = 1.1\n"
            f"sni =\n  a.example.com = {other_cert} {other_key}\n[api:e]\nupstream = builtin:echo\n")
    gw = gateway_factory(ADMIN_EPHEMERAL + text)
    config = gw.config_path
    warnings = [
        f"{config}: [listener:main] certificate: certificate {cert} expires on {soon.strftime(STAMP)} (in 3 days)",
        f"{config}: [listener:main] sni: certificate {other_cert} does not cover 'a.example.com' "
        "(its names: b.example.com)",
        f"{config}: [listener:main] min_tls: TLS 1.1 is deprecated and insecure; 1.2 is the minimum recommended",
    ]
    out = gw.output()
    for w in warnings:
        assert f"[txgate.service#warn] {w}\n" in out, out
    assert "Traceback" not in out + gw.errors()
    proc = txgate_cli("check", "--config", str(config), cwd=gw.workdir)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stderr.splitlines()) == sorted(f"txgate: warning: {w}" for w in warnings)
    assert gw.stop() == 0
