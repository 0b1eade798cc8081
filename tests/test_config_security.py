"""[security] and per-API upstream trust keys: parsing, precedence, and error messages."""
from __future__ import annotations

import pytest

from txgate.config import ConfigError, parse_text, select_by_host
from txgate.plan.files import check_files
from txgate.service import prepare

BASE = "[listener:main]\nbind = 127.0.0.1:0\n"


def api(extra: str, upstream: str = "https://127.0.0.1:9443") -> str:
    return BASE + f"[api:a]\nupstream = {upstream}\n{extra}\n"


def test_most_specific_host_pattern_wins():
    rules = [("*", "any"), ("*.example.com", "wild"), ("api.example.com", "host"), ("api.example.com:8443", "port")]
    assert select_by_host(rules, "api.example.com", 8443) == "port"
    assert select_by_host(rules, "api.example.com", 443) == "host"
    assert select_by_host(rules, "web.example.com", 443) == "wild"
    assert select_by_host(rules, "a.b.example.com", 443) == "any"  # wildcards are one label deep
    assert select_by_host(rules[1:], "a.b.example.com", 443) is None


@pytest.mark.parametrize(
    "extra, message",
    [
        ("pinned_public_keys = /nope/pin.pem", "gw.ini: [api:a] pinned_public_keys: /nope/pin.pem: file not found"),
        ("pin_mode = audit", "gw.ini: [api:a] pin_mode: expected one of enforce, report, got 'audit'"),
        ("upstream_certificate = local", "gw.ini: [api:a] upstream_certificate: expected 'CERT.pem KEY.pem' ('local' is for listeners)"),
        ("upstream_min_tls = 1.4", "gw.ini: [api:a] upstream_min_tls: expected one of 1.0, 1.1, 1.2, 1.3, got '1.4' (did you mean '1.3'?)"),
    ],
)
def test_api_trust_key_errors(extra, message):
    with pytest.raises(ConfigError) as e:
        check_files(parse_text(api(extra), "gw.ini"))
    assert str(e.value) == message


@pytest.mark.parametrize(
    "body, message",
    [
        ("pinned_public_keys =\n    example.com sha256/x", "gw.ini: [security] pinned_public_keys: expected 'HOST_PATTERN = PIN [PIN ...]', got 'example.com sha256/x'"),
        ("pinned_public_keys =\n    a.*.com = sha256/x", "gw.ini: [security] pinned_public_keys: 'a.*.com': expected a host, host:port, *.example.com or *"),
        ("pinned_public_keys =\n    a.com:99999 = sha256/x", "gw.ini: [security] pinned_public_keys: 'a.com:99999': invalid port"),
        ("pin_mod = report", "gw.ini: [security] pin_mod: unknown key (did you mean 'pin_mode'?)"),
    ],
)
def test_security_section_errors(body, message):
    with pytest.raises(ConfigError) as e:
        parse_text(BASE + "[security]\n" + body + "\n", "gw.ini")
    assert str(e.value) == message


@pytest.mark.parametrize(
    "pin, fragment",
    [
        ("sha256/not*base64", "pinned_public_keys:"),
        ("sha256/AAAA", "pinned_public_keys:"),
    ],
)
def test_malformed_pins_are_config_errors_at_startup(pin, fragment, tmp_path):
    cfg = parse_text(api(f"pinned_public_keys = {pin}"), "gw.ini")
    with pytest.raises(ConfigError) as e:
        prepare(cfg, check_ports=False, create_state=False)
    assert str(e.value).startswith("gw.ini: [api:a] " + fragment)


def test_a_word_that_is_neither_pin_nor_file():
    with pytest.raises(ConfigError) as e:
        check_files(parse_text(api("pinned_public_keys = " + "ab" * 31 + "zz"), "gw.ini"))
    assert str(e.value) == ("gw.ini: [api:a] pinned_public_keys: '" + "ab" * 31 + "zz' is not a pin "
                            "(expected sha256/BASE64, 64 hex digits, or a PEM file)")


def test_bad_global_pin_names_the_security_section():
    cfg = parse_text(BASE + "[security]\npinned_public_keys =\n    * = sha256/AAAA\n[api:a]\nupstream = https://x.example\n", "gw.ini")
    with pytest.raises(ConfigError) as e:
        prepare(cfg, check_ports=False, create_state=False)
    assert str(e.value).startswith("gw.ini: [security] pinned_public_keys: ")


def test_pins_on_plain_http_upstream_warn():
    cfg = parse_text(api("pinned_public_keys = sha256/" + "A" * 43 + "=", upstream="http://127.0.0.1:9"), "gw.ini")
    prepared = prepare(cfg, check_ports=False, create_state=False)
    assert any("is plain HTTP: pins" in w for w in prepared.warnings)


def test_port_patterns_rank_after_their_host_part():
    rules = [("*", "any"), ("*:8443", "anyport"), ("*.example.com", "wild"), ("*.example.com:8443", "wildport"),
             ("api.example.com", "host"), ("api.example.com:8443", "hostport"), ("[::1]:8443", "v6port")]
    assert select_by_host(rules, "api.example.com", 8443) == "hostport"
    assert select_by_host(rules, "web.example.com", 8443) == "wildport"
    assert select_by_host(rules, "web.example.com", 443) == "wild"
    assert select_by_host(rules, "other.org", 8443) == "anyport"
    assert select_by_host(rules, "other.org", 443) == "any"
    assert select_by_host(rules, "::1", 8443) == "v6port"


def test_several_names_for_one_upstream_take_the_most_specific_rule():
    rules = [("*", "any"), ("api.internal", "byname")]
    assert select_by_host(rules, ("api.internal", "10.0.0.5"), 8443) == "byname"


def test_bracketed_ipv6_pattern_port_is_range_checked():
    with pytest.raises(ConfigError) as e:
        parse_text(BASE + "[security]\npinned_public_keys =\n    [::1]:99999 = sha256/x\n", "gw.ini")
    assert str(e.value) == "gw.ini: [security] pinned_public_keys: '[::1]:99999': invalid port"
