"""``txgate acme status`` and the status file: offline (from the config and the store) and written by AcmeService."""
# -*- test-case-name: tests.test_acme_status -*-
from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone

from conftest import txgate_cli
from txgate.acme.status import format_entry, read_status, status_path, write_status

CONFIG = """
[gateway]
state_dir = ./state

[admin]
bind = off

[acme]
directory = https://127.0.0.1:1/dir
agree_tos = yes

[listener:https]
bind = 127.0.0.1:0
certificate = acme:www.status-test.example api.status-test.example
"""


def test_status_file_is_private_and_round_trips(tmp_path):
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    entries = [{"names": ["a.example"], "slot": "acme/a.example", "failures": 2, "last_error": "connection: refused"}]
    write_status(str(tmp_path), entries, now)
    assert stat.S_IMODE(os.stat(status_path(str(tmp_path))).st_mode) == 0o600
    doc = read_status(str(tmp_path))
    assert doc["updated"] == "2026-01-02T03:04:05Z" and doc["certificates"] == entries
    assert read_status(str(tmp_path / "nowhere")) is None


def test_format_entry_names_every_field():
    line = format_entry({"names": ["a.example", "b.example"], "slot": "acme/a.example", "issuer": "CN=Pebble",
                         "not_after": "2026-01-01T00:00:00Z", "next_renewal": "2025-12-01T00:00:00Z",
                         "renewal_reason": "ari", "next_check": "2025-11-01T00:00:00Z", "failures": 1,
                         "last_error": "badNonce: retry"})
    assert line.startswith("a.example b.example  slot=acme/a.example  issuer=CN=Pebble")
    assert "expires=2026-01-01T00:00:00Z" in line and "next_renewal=2025-12-01T00:00:00Z (ari)" in line
    assert "next_attempt=2025-11-01T00:00:00Z" in line and "last_error=badNonce: retry" in line


def test_cli_before_the_first_start_shows_the_configured_names(tmp_path):
    (tmp_path / "gw.ini").write_text(CONFIG)
    r = txgate_cli("acme", "status", "--config", "gw.ini", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no ACME state written yet" in r.stdout
    assert "www.status-test.example api.status-test.example  slot=acme/www.status-test.example" in r.stdout
    assert "next_renewal=- (missing)" in r.stdout


def test_cli_reads_the_status_file_and_adds_names_it_does_not_know(tmp_path):
    (tmp_path / "gw.ini").write_text(CONFIG.replace("[listener:https]", """[listener:other]
bind = 127.0.0.1:0
certificate = acme:old.status-test.example

[listener:https]"""))
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    write_status(str(tmp_path / "state"), [{"names": ["old.status-test.example"], "slot": "acme/old.status-test.example",
                                           "issuer": "CN=Pebble", "failures": 3, "last_error": "connection: refused",
                                           "next_check": when.strftime("%Y-%m-%dT%H:%M:%SZ")}],
                 datetime.now(timezone.utc))
    r = txgate_cli("acme", "status", "--config", "gw.ini", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "state written" in r.stdout
    assert "failures=3  last_error=connection: refused" in r.stdout
    assert "www.status-test.example api.status-test.example" in r.stdout
    r = txgate_cli("acme", "status", "--json", "--config", "gw.ini", cwd=tmp_path)
    doc = json.loads(r.stdout)
    assert [e["names"][0] for e in doc["certificates"]] == ["old.status-test.example", "www.status-test.example"]


def test_cli_configuration_error_exits_1(tmp_path):
    (tmp_path / "gw.ini").write_text("[nonsense\n")
    r = txgate_cli("acme", "status", "--config", "gw.ini", cwd=tmp_path)
    assert r.returncode == 1 and "configuration error" in r.stderr
