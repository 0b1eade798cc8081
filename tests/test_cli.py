"""The `txgate` command outside of config validation (covered in test_config_e2e.py)."""
from __future__ import annotations

from conftest import txgate_cli


def test_version_names_the_libraries():
    proc = txgate_cli("version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("txgate ")
    assert "twisted" in lines[1] and "pyOpenSSL" in lines[1] and "h2" in lines[1]
    assert lines[2].startswith("OpenSSL (pyOpenSSL): OpenSSL ")
    engine = [ln for ln in lines if ln.startswith("HTTP/2 engine: ")]
    assert engine and ("native (libnghttp2 " in engine[0] or "python (hyper-h2 " in engine[0])


def test_usage_errors_exit_2_without_traceback():
    proc = txgate_cli()
    assert proc.returncode == 2 and "usage: txgate" in proc.stderr and "Traceback" not in proc.stderr
    proc = txgate_cli("chek")
    assert proc.returncode == 2 and "invalid choice: 'chek'" in proc.stderr
