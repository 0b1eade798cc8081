"""The config room's pure rules: wildcards, IPs, host:port text, pin words; the file checks in txgate.plan.files."""
from __future__ import annotations

import pytest

from txgate.config import AdminConfig, AdminConfigError, ConfigError, parse_text
from txgate.config.hostnames import host_port, is_ip, is_loopback, wildcard_matches, wildcard_ok, wildcard_parent
from txgate.config.tokens import FILE, FINGERPRINT, PIN, token_kind
from txgate.plan.files import check_files

L = "[listener:main]\nbind = 127.0.0.1:0\n"


@pytest.mark.parametrize("name, ok", [("example.com", True), ("*.example.com", True), ("*", False),
                                      ("a.*.com", False), ("*.*.com", False), ("*x.example.com", False)])
def test_wildcard_syntax_is_a_whole_first_label(name, ok):
    assert wildcard_ok(name) is ok


@pytest.mark.parametrize("pattern, host, covers", [
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", False),   # one label only
    ("*.example.com", "example.com", False),
    ("*.example.com", ".example.com", False),      # the label must not be empty
    ("example.com", "example.com", False),          # not a wildcard: exact matches are the caller's
])
def test_one_label_wildcard(pattern, host, covers):
    assert wildcard_matches(pattern, host) is covers


def test_wildcard_parent():
    assert wildcard_parent("a.b.c") == "b.c"
    assert wildcard_parent("localhost") is None and wildcard_parent(".b.c") is None


def test_ip_loopback_and_host_port_text():
    assert is_ip("::1") and is_ip("10.0.0.1") and not is_ip("[::1]") and not is_ip("example.com")
    assert is_loopback(" [::1] ") and is_loopback("LOCALHOST") and not is_loopback("0.0.0.0")
    assert host_port("::1", 443) == "[::1]:443" and host_port("example.com", 80) == "example.com:80"


@pytest.mark.parametrize("word, kind", [("sha256/AAAA", PIN), ("SHA256/AAAA", PIN), ("ab" * 32, FINGERPRINT),
                                        ("AB" * 32, FINGERPRINT), ("ab" * 31 + "zz", FILE), ("/etc/ca.pem", FILE)])
def test_token_kind(word, kind):
    assert token_kind(word) == kind


def test_parsing_reads_no_files_and_check_files_reports_every_file_in_section_order(tmp_path):
    text = (f"[security]\nclient_certificates = {tmp_path}/sec.pem\n" + L
            + f"certificate = {tmp_path}/c.pem {tmp_path}/k.pem\nclient_ca = {tmp_path}/ca.pem\n")
    cfg = parse_text(text, "gw.ini")  # no file exists, parsing is syntax only
    with pytest.raises(ConfigError) as info:
        check_files(cfg)
    assert (info.value.section, info.value.key, info.value.message) == (
        "security", "client_certificates", f"{tmp_path}/sec.pem: file not found")
    (tmp_path / "sec.pem").write_text("x")
    with pytest.raises(ConfigError) as info:
        check_files(cfg)
    # Every unreadable file is reported (issue 15), the first in section order first.
    assert info.value.lines() == [f"gw.ini: [listener:main] certificate: {tmp_path}/c.pem: file not found",
                                  f"gw.ini: [listener:main] certificate: {tmp_path}/k.pem: file not found",
                                  f"gw.ini: [listener:main] client_ca: {tmp_path}/ca.pem: file not found"]


def test_pins_and_fingerprints_are_not_files():
    cfg = parse_text(L + "[api:a]\nupstream = https://x.example\npinned_public_keys = sha256/AAAA " + "ab" * 32
                     + "\n", "gw.ini")
    check_files(cfg)


def test_one_admin_config_from_gw_ini_carries_state_dir_and_validates_once_more_the_same_way():
    cfg = parse_text("[gateway]\nstate_dir = /srv/gw\n[admin]\nbind = 127.0.0.1:9000\nallowed_hosts = A.example\n" + L,
                     "gw.ini")
    adm = cfg.admin
    assert isinstance(adm, AdminConfig) and adm.state_dir == "/srv/gw" and adm.allowed_hosts == ("a.example",)
    assert (adm.host, adm.port, adm.bind_host, adm.bind_port, adm.auth, adm.tls) == (
        "127.0.0.1", 9000, "127.0.0.1", 9000, "none", False)
    with pytest.raises(AdminConfigError) as info:
        AdminConfig(bind_host="::", bind_port=9901)
    assert info.value.key == "bind" and str(info.value) == (
        "[::]:9901 is not a loopback address: protect the admin API with client_ca (mTLS) or token_file "
        "(bearer token), or bind it to 127.0.0.1")
