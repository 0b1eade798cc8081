"""gw.ini validation without sockets: parse_text / load / prepare, exact one-line messages."""
from __future__ import annotations

import os
from datetime import timedelta

import pytest

from certs_helpers import NOW
from conftest import unprivileged
from txgate.config import (
    ApiConfig,
    CertSpec,
    ConfigError,
    GatewayConfig,
    ListenerConfig,
    Target,
    default_config,
    load,
    parse_text,
)
from txgate.plan.files import check_files
from txgate.service import prepare

L = "[listener:main]\nbind = 127.0.0.1:0\n"


def error(text: str, path: str = "gw.ini") -> str:
    with pytest.raises(ConfigError) as info:
        check_files(parse_text(text, path))
    message = str(info.value)
    assert "\n" not in message
    return message


def prepared_error(text: str, **kw) -> str:
    cfg = parse_text(text, "gw.ini")
    with pytest.raises(ConfigError) as info:
        prepare(cfg, check_ports=False, create_state=False, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- defaults --------------------------------------------------------------------------------


def test_defaults_are_secure_and_documented():
    cfg = parse_text(L + "[api:a]\nupstream = https://example.com\n", "gw.ini")
    assert cfg.gateway == GatewayConfig(state_dir="./txgate-state", access_log="-", log_format="text",
                                        shutdown_timeout=30.0)
    (ln,) = cfg.listeners
    assert ln == ListenerConfig(name="main", host="127.0.0.1", port=0)
    assert (ln.tls, ln.certificate, ln.min_tls, ln.max_tls) == (True, CertSpec(local=True), "1.2", "1.3")
    assert (ln.ciphers, ln.tls13_ciphersuites, ln.alpn, ln.session_tickets) == (None, None, ("h2", "http/1.1"), True)
    assert (ln.max_header_bytes, ln.header_timeout, ln.idle_timeout, ln.max_connections) == (65536, 10.0, 60.0, 10000)
    assert ln.groups is None  # txgate.tls.server.DEFAULT_GROUPS
    assert ln.client_crl_missing == "refuse"
    (api,) = cfg.apis
    assert api.upstreams == (Target("https", "example.com", 443, ""),)
    assert api.upstream_verify is True and api.upstream_ca is None and api.upstream_server_name is None
    assert (api.listeners, api.hosts, api.path, api.strip_path, api.preserve_host) == (None, (), "/", False, False)
    assert (api.connect_timeout, api.timeout, api.max_body_bytes) == (5.0, 30.0, 0)
    assert (api.max_connections, api.max_pending) == (64, 1024)
    assert api.max_response_header_bytes == 65536
    assert cfg.warnings == ()


def test_embedded_default_config():
    cfg = default_config()
    assert [(ln.name, ln.host, ln.port) for ln in cfg.listeners] == [("main", "127.0.0.1", 8443)]
    assert cfg.apis[0].echo and cfg.apis[0].path == "/echo"


def test_full_config_values():
    cfg = parse_text(
        """
[gateway]
state_dir = /var/lib/txgate
access_log = off
log_format = json
shutdown_timeout = 2.5

[listener:public]
bind = [::1]:8443
tls = on
min_tls = 1.3
max_tls = 1.3
ciphers = ECDHE-ECDSA-CHACHA20-POLY1305
tls13_ciphersuites = TLS_AES_128_GCM_SHA256
alpn = http/1.1
session_tickets = off
max_header_bytes = 8192
header_timeout = 2
idle_timeout = 30
max_connections = 5

[listener:plain]
bind = 127.0.0.1:8080
tls = off

[api:users]
listeners = public plain
hosts = API.example.com *.example.org example.net.
path = /users/
strip_path = yes
upstream = http://10.0.0.1:8080/base/ https://[::1]:9443
upstream_server_name = users.internal
upstream_verify = on
preserve_host = true
connect_timeout = 1.5
timeout = 60
max_body_bytes = 1048576
max_connections = 8
max_pending = 0
""",
        "gw.ini",
    )
    assert cfg.gateway == GatewayConfig("/var/lib/txgate", "off", "json", 2.5)
    public, plain = cfg.listeners
    assert (public.host, public.port, public.min_tls, public.max_tls) == ("::1", 8443, "1.3", "1.3")
    assert public.alpn == ("http/1.1",) and public.session_tickets is False
    assert (public.max_header_bytes, public.header_timeout, public.max_connections) == (8192, 2.0, 5)
    assert plain.tls is False
    (api,) = cfg.apis
    assert api.listeners == ("public", "plain")
    assert api.hosts == ("api.example.com", "*.example.org", "example.net")
    assert api.path == "/users" and api.strip_path and api.preserve_host
    assert api.upstreams == (Target("http", "10.0.0.1", 8080, "/base"), Target("https", "::1", 9443, ""))
    assert api.upstreams[1].label == "https://[::1]:9443"
    assert (api.max_body_bytes, api.max_connections, api.max_pending) == (1048576, 8, 0)
    assert cfg.apis_for("plain") == (api,)


def test_echo_upstream():
    cfg = parse_text(L + "[api:e]\nupstream = builtin:echo\n", "gw.ini")
    assert cfg.apis[0] == ApiConfig(name="e", echo=True)


# -- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("[gatewy]\n" + L, "gw.ini: [gatewy]: unknown section (did you mean 'gateway'?)"),
        ("[listenr:main]\nbind = 127.0.0.1:0\n", "gw.ini: [listenr:main]: unknown section (did you mean 'listener:main'?)"),
        (L + "[apis:x]\nupstream = builtin:echo\n", "gw.ini: [apis:x]: unknown section (did you mean 'api:x'?)"),
        (L + "[frontend]\n", "gw.ini: [frontend]: unknown section (expected one of gateway, security, admin, listener:NAME, api:NAME)"),
        ("[DEFAULT]\ntimeout = 5\n" + L,
         "gw.ini: [DEFAULT]: unknown section (expected one of gateway, security, admin, listener:NAME, api:NAME)"),
        ("[gateway]\nacces_log = -\n" + L, "gw.ini: [gateway] acces_log: unknown key (did you mean 'access_log'?)"),
        (L + "cipher = HIGH\n", "gw.ini: [listener:main] cipher: unknown key (did you mean 'ciphers'?)"),
        (L + "Bind = 1\n", "gw.ini: [listener:main] Bind: unknown key (did you mean 'bind'?)"),
        (L + "[api:a]\nupstream = builtin:echo\nupstreams_ca = x\n",
         "gw.ini: [api:a] upstreams_ca: unknown key (did you mean 'upstream_ca'?)"),
        (L + "[api:a]\nupstream = builtin:echo\nfrobnicate = 1\n", "gw.ini: [api:a] frobnicate: unknown key"),
        ("[gateway]\n", "gw.ini: no [listener:NAME] section: nothing to serve"),
        ("bind = 1\n" + L, "gw.ini: line 1: text before the first [section]"),
        (L + "[gateway]\n[gateway]\n", "gw.ini: [gateway]: duplicate section (line 4)"),
        (L + "bind = 127.0.0.1:1\n", "gw.ini: [listener:main] bind: duplicate key (line 3)"),
        (L + "just words\n", "gw.ini: line 3: cannot parse this line"),
    ],
)
def test_structure_errors(text, message):
    assert error(text) == message


# -- malformed values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ("tls = maybe", "[listener:main] tls: expected on/off, got 'maybe'"),
        ("session_tickets = 2", "[listener:main] session_tickets: expected on/off, got '2'"),
        ("max_connections = many", "[listener:main] max_connections: expected an integer, got 'many'"),
        ("max_connections = 1.5", "[listener:main] max_connections: expected an integer, got '1.5'"),
        ("max_connections = 0", "[listener:main] max_connections: must be at least 1, got 0"),
        ("max_header_bytes = 100", "[listener:main] max_header_bytes: must be at least 1024, got 100"),
        ("header_timeout = soon", "[listener:main] header_timeout: expected a number, got 'soon'"),
        ("header_timeout = nan", "[listener:main] header_timeout: expected a finite number, got 'nan'"),
        ("idle_timeout = inf", "[listener:main] idle_timeout: expected a finite number, got 'inf'"),
        ("idle_timeout = 0", "[listener:main] idle_timeout: must be at least 0.001, got 0"),
        ("min_tls = 1.4", "[listener:main] min_tls: expected one of 1.0, 1.1, 1.2, 1.3, got '1.4' (did you mean '1.3'?)"),
        ("min_tls = TLSv1.2",
         "[listener:main] min_tls: expected one of 1.0, 1.1, 1.2, 1.3, got 'TLSv1.2' (did you mean '1.2'?)"),
        ("max_tls = 1.2\nmin_tls = 1.3", "[listener:main] max_tls: max_tls 1.2 is below min_tls 1.3"),
        ("alpn = h3", "[listener:main] alpn: unsupported protocol 'h3' (expected h2 and/or http/1.1)"),
        ("alpn = h2,http/1.1", "[listener:main] alpn: unsupported protocol 'h2,http/1.1' (expected h2 and/or http/1.1)"),
        ("ciphers =", "[listener:main] ciphers: empty value"),
        ("groups =", "[listener:main] groups: empty value"),
        ("client_crl = a.crl\nclient_crl_missing = maybe",
         "[listener:main] client_crl_missing: expected one of refuse, allow, got 'maybe'"),
        ("client_crl_missing = allow", "[listener:main] client_crl_missing: has no effect without client_crl"),
        ("certificate = a.pem", "[listener:main] certificate: expected 'local', 'CERT.pem KEY.pem' or 'store:NAME', got 'a.pem'"),
        ("sni =\n  example.com", "[listener:main] sni: expected 'NAME = CERT.pem KEY.pem', got 'example.com'"),
        ("sni =\n  a.*.com = local",
         "[listener:main] sni: 'a.*.com': wildcards are only allowed as the first label ('*.example.com')"),
    ],
)
def test_listener_value_errors(extra, message):
    assert error(L + extra + "\n") == "gw.ini: " + message


@pytest.mark.parametrize(
    "bind, message",
    [
        ("8443", "expected HOST:PORT, got '8443'"),
        (":8443", "expected HOST:PORT, got ':8443'"),
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:70000", "port 70000 is out of range"),
        ("::1:8443", "IPv6 addresses need brackets: '[::1]:8443'"),
        ("[::1:8443", "expected [IPv6]:PORT, got '[::1:8443'"),
        ("[nothost]:8443", "'nothost' is not an IPv6 address"),
        ("", "empty value"),
    ],
)
def test_bind_errors(bind, message):
    assert error(f"[listener:main]\nbind = {bind}\n") == f"gw.ini: [listener:main] bind: {message}"


def test_missing_bind():
    assert error("[listener:main]\ntls = off\n") == "gw.ini: [listener:main] bind: missing (expected HOST:PORT)"


def test_duplicate_bind_between_listeners():
    text = "[listener:a]\nbind = 127.0.0.1:8443\n[listener:b]\nbind = 127.0.0.1:8443\n"
    assert error(text) == "gw.ini: [listener:b] bind: 127.0.0.1:8443 is already used by [listener:a]"


@pytest.mark.parametrize(
    "extra, message",
    [
        ("", "upstream: missing (one or more http(s):// URLs, or builtin:echo)"),
        ("upstream = ftp://files.example.com", "upstream: 'ftp://files.example.com': expected an http:// or https:// URL, or builtin:echo"),
        ("upstream = example.com:8080", "upstream: 'example.com:8080': expected an http:// or https:// URL, or builtin:echo"),
        ("upstream = http://", "upstream: 'http://': no host"),
        ("upstream = http://h:99999", "upstream: 'http://h:99999': invalid port (expected a number from 1 to 65535)"),
        ("upstream = http://h:abc", "upstream: 'http://h:abc': invalid port (expected a number from 1 to 65535)"),
        ("upstream = http://h:0", "upstream: 'http://h:0': invalid port (expected a number from 1 to 65535)"),
        ("upstream = http://u:p@h", "upstream: 'http://u:p@h': query, fragment and credentials are not allowed"),
        ("upstream = http://h/?q=1", "upstream: 'http://h/?q=1': query, fragment and credentials are not allowed"),
        ("upstream = builtin:echo http://h", "upstream: builtin:echo cannot be mixed with URLs"),
        ("upstream = builtin:echo\nstrip_path = sometimes", "strip_path: expected on/off, got 'sometimes'"),
        ("upstream = builtin:echo\nupstream_verify = nope", "upstream_verify: expected on/off, got 'nope'"),
        ("upstream = builtin:echo\npath = api", "path: must start with '/', got 'api'"),
        ("upstream = builtin:echo\nlisteners = mian", "listeners: no listener named 'mian' (did you mean 'main'?)"),
        ("upstream = builtin:echo\nlisteners = other", "listeners: no listener named 'other'"),
        ("upstream = builtin:echo\nhosts = a.*.example.com",
         "hosts: 'a.*.example.com': wildcards are only allowed as the first label ('*.example.com')"),
        ("upstream = builtin:echo\nhosts = example.com:8443", "hosts: 'example.com:8443': a host name without a port is expected"),
        ("upstream = builtin:echo\nhosts = exa/mple.com", "hosts: 'exa/mple.com': not a valid host name"),
        ("upstream = builtin:echo\ntimeout = -1", "timeout: must be at least 0.001, got -1"),
        ("upstream = builtin:echo\nmax_body_bytes = -1", "max_body_bytes: must be at least 0, got -1"),
        ("upstream = builtin:echo\nmax_body_bytes = 1e6", "max_body_bytes: expected an integer, got '1e6'"),
        ("upstream = builtin:echo\nmax_pending = lots", "max_pending: expected an integer, got 'lots'"),
        ("upstream = http://h\nmax_response_header_bytes = 100",
         "max_response_header_bytes: must be at least 1024, got 100"),
        ("upstream = http://h\nmax_response_header_bytes = 64k",
         "max_response_header_bytes: expected an integer, got '64k'"),
    ],
)
def test_api_value_errors(extra, message):
    assert error(L + "[api:a]\n" + extra + "\n") == "gw.ini: [api:a] " + message


@pytest.mark.parametrize(
    "extra, message",
    [
        ("log_format = xml", "[gateway] log_format: expected one of text, json, got 'xml'"),
        ("log_format = jsn", "[gateway] log_format: expected one of text, json, got 'jsn' (did you mean 'json'?)"),
        ("shutdown_timeout = later", "[gateway] shutdown_timeout: expected a number, got 'later'"),
        ("shutdown_timeout = -1", "[gateway] shutdown_timeout: must be at least 0, got -1"),
        ("state_dir =", "[gateway] state_dir: empty value"),
        ("h2_engine = nghttp2", "[gateway] h2_engine: expected one of auto, native, python, got 'nghttp2'"),
        ("h2_engine = pyton", "[gateway] h2_engine: expected one of auto, native, python, got 'pyton' (did you mean 'python'?)"),
    ],
)
def test_gateway_value_errors(extra, message):
    assert error("[gateway]\n" + extra + "\n" + L) == "gw.ini: " + message


@pytest.mark.parametrize("value", ["auto", "native", "python"])
def test_gateway_h2_engine_choices(value):
    assert parse_text("[gateway]\nh2_engine = " + value + "\n" + L, "gw.ini").gateway.h2_engine == value


def test_gateway_h2_engine_native_without_the_module_is_refused(monkeypatch):
    import txgate.http.h2engine as h2engine
    from txgate.plan import checks
    from txgate.plan.model import Plan

    monkeypatch.setattr(h2engine, "_native", lambda: (None, "txgate._nghttp2 not importable: gone"))
    cfg = parse_text("[gateway]\nh2_engine = native\n" + L, "gw.ini")
    with pytest.raises(ConfigError) as e:
        checks.check_h2_engine(cfg, Plan(config=cfg))
    assert str(e.value) == ("gw.ini: [gateway] h2_engine: h2_engine = native, but txgate._nghttp2 not importable: gone")
    auto = parse_text(L, "gw.ini")
    plan = Plan(config=auto)
    checks.check_h2_engine(auto, plan)
    assert plan.h2_engine.name == "python"


@pytest.mark.parametrize(
    "apis, message",
    [
        ("[api:a]\nupstream = builtin:echo\n[api:b]\nupstream = builtin:echo\n",
         "gw.ini: [api:b] path: host '*' and path '/' are already served by [api:a]"),
        ("[api:a]\nupstream = builtin:echo\npath = /x/\nhosts = A.example.com\n"
         "[api:b]\nupstream = builtin:echo\npath = /x\nhosts = b.example.com a.example.com\n",
         "gw.ini: [api:b] path: host 'a.example.com' and path '/x' are already served by [api:a]"),
    ],
)
def test_two_apis_with_same_hosts_and_path(apis, message):
    assert error(L + apis) == message


def test_same_path_on_different_hosts_or_listeners_is_fine():
    text = ("[listener:a]\nbind = 127.0.0.1:0\n[listener:b]\nbind = 127.0.0.1:0\n"
            "[api:x]\nupstream = builtin:echo\nlisteners = a\n[api:y]\nupstream = builtin:echo\nlisteners = b\n"
            "[api:z]\nupstream = builtin:echo\nlisteners = a\nhosts = z.example.com\n")
    assert len(parse_text(text, "gw.ini").apis) == 3


# -- files -----------------------------------------------------------------------------------


def test_load_missing_file(tmp_path):
    p = str(tmp_path / "nope.ini")
    with pytest.raises(ConfigError) as info:
        load(p)
    assert str(info.value) == f"{p}: file not found"


def test_load_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: is a directory, not a file"


def test_load_not_utf8(tmp_path):
    p = tmp_path / "gw.ini"
    p.write_bytes(b"[gateway]\nstate_dir = \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load(str(p))
    assert str(info.value) == f"{p}: not UTF-8 text"


def test_load_unreadable(open_tmp):
    p = open_tmp / "gw.ini"
    p.write_text(L)
    p.chmod(0)

    def attempt():
        with pytest.raises(ConfigError) as info:
            load(str(p))
        return str(info.value)

    assert unprivileged(attempt) == f"{p}: permission denied"  # root reads any file


def test_load_names_the_file(tmp_path):
    p = tmp_path / "gw.ini"
    p.write_text(L + "tls = sure\n")
    with pytest.raises(ConfigError) as info:
        load(str(p))
    assert str(info.value) == f"{p}: [listener:main] tls: expected on/off, got 'sure'"
    assert (info.value.path, info.value.section, info.value.key) == (str(p), "listener:main", "tls")


def test_certificate_file_missing(tmp_path):
    missing = tmp_path / "missing.pem"
    assert error(L + f"certificate = {missing} {missing}\n") == (
        f"gw.ini: [listener:main] certificate: {missing}: file not found"
    )


def test_certificate_is_a_directory(tmp_path, certs):
    cert, key = certs.leaf("dir-case", ["localhost"])
    assert error(L + f"certificate = {tmp_path} {key}\n") == (
        f"gw.ini: [listener:main] certificate: {tmp_path}: not a regular file"
    )


def test_certificate_unreadable(open_tmp, certs):
    cert, key = certs.leaf("unreadable", ["localhost"])
    readable = open_tmp / "cert.pem"  # the certificate where an unprivileged user can read it
    readable.write_bytes(open(cert, "rb").read())
    readable.chmod(0o644)
    locked = open_tmp / "locked-key.pem"
    locked.write_bytes(open(key, "rb").read())
    locked.chmod(0)
    assert unprivileged(lambda: error(L + f"certificate = {readable} {locked}\n")) == (  # root reads any file
        f"gw.ini: [listener:main] certificate: {locked}: permission denied"
    )


def test_sni_file_missing(tmp_path):
    missing = tmp_path / "missing.pem"
    assert error(L + f"sni =\n  a.example.com = {missing} {missing}\n") == (
        f"gw.ini: [listener:main] sni: {missing}: file not found"
    )


def test_upstream_ca_missing(tmp_path):
    missing = tmp_path / "ca.pem"
    assert error(L + f"[api:a]\nupstream = https://h\nupstream_ca = {missing}\n") == (
        f"gw.ini: [api:a] upstream_ca: {missing}: file not found"
    )


# -- prepare: certificates and TLS settings --------------------------------------------------


def test_invalid_pem_certificate(tmp_path, certs):
    _, key = certs.leaf("pem-ok", ["localhost"])
    bad = tmp_path / "bad.pem"
    bad.write_text("hello, I am not a certificate\n")
    assert prepared_error(L + f"certificate = {bad} {key}\n") == (
        f"gw.ini: [listener:main] certificate: {bad}: not a PEM certificate"
    )


def test_invalid_pem_key(tmp_path, certs):
    cert, _ = certs.leaf("pem-ok2", ["localhost"])
    bad = tmp_path / "bad-key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert prepared_error(L + f"certificate = {cert} {bad}\n") == (
        f"gw.ini: [listener:main] certificate: {bad}: not a PEM private key"
    )


def test_truncated_pem_certificate(tmp_path, certs):
    cert, key = certs.leaf("truncated", ["localhost"])
    bad = tmp_path / "truncated.pem"
    bad.write_text(open(cert).read()[:200])
    assert prepared_error(L + f"certificate = {bad} {key}\n") == (
        f"gw.ini: [listener:main] certificate: {bad}: not a PEM certificate"
    )


def test_key_does_not_match_certificate(certs):
    cert, _ = certs.leaf("mismatch-a", ["localhost"])
    _, other_key = certs.leaf("mismatch-b", ["localhost"])
    assert prepared_error(L + f"certificate = {cert} {other_key}\n") == (
        f"gw.ini: [listener:main] certificate: {other_key}: private key does not match the certificate {cert}"
    )


def test_expired_certificate(certs):
    cert, key = certs.leaf("expired", ["localhost"], not_before=NOW - timedelta(days=30),
                           not_after=NOW - timedelta(days=1))
    stamp = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert prepared_error(L + f"certificate = {cert} {key}\n") == (
        f"gw.ini: [listener:main] certificate: {cert}: certificate expired on {stamp}"
    )


def test_not_yet_valid_certificate(certs):
    cert, key = certs.leaf("future", ["localhost"], not_before=NOW + timedelta(days=2))
    stamp = (NOW + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert prepared_error(L + f"certificate = {cert} {key}\n") == (
        f"gw.ini: [listener:main] certificate: {cert}: certificate not valid before {stamp}"
    )


def test_expired_sni_certificate(certs):
    cert, key = certs.leaf("expired-sni", ["a.example.com"], not_before=NOW - timedelta(days=30),
                           not_after=NOW - timedelta(days=1))
    message = prepared_error(L + f"sni =\n  a.example.com = {cert} {key}\n")
    assert message.startswith(f"gw.ini: [listener:main] sni: {cert}: certificate expired on ")


def test_invalid_upstream_ca(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("nope\n")
    assert prepared_error(L + f"[api:a]\nupstream = https://h\nupstream_ca = {bad}\n") == (
        f"gw.ini: [api:a] upstream_ca: {bad}: not a PEM certificate"
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        ("ciphers = NOPE-CIPHER",
         "[listener:main] ciphers: rejected by OpenSSL: invalid cipher list 'NOPE-CIPHER': no cipher match"),
        ("ciphers = TLS_AES_128_GCM_SHA256",
         "[listener:main] ciphers: rejected by OpenSSL: invalid cipher list 'TLS_AES_128_GCM_SHA256': no cipher match"),
        ("tls13_ciphersuites = TLS_NOPE",
         "[listener:main] tls13_ciphersuites: rejected by OpenSSL: invalid TLS 1.3 ciphersuites 'TLS_NOPE': no cipher match"),
        ("groups = X25519 P-999",
         "[listener:main] groups: rejected by OpenSSL: invalid groups list 'X25519:P-999'"),
    ],
)
def test_bad_cipher_strings(extra, message, certs):
    # Checked with the local CA (nothing written in check mode) and with a certificate file.
    assert prepared_error(L + extra + "\n") == "gw.ini: " + message
    cert, key = certs.leaf("ciphers", ["localhost"])
    assert prepared_error(L + f"certificate = {cert} {key}\n" + extra + "\n") == "gw.ini: " + message


def test_check_mode_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = prepare(parse_text(L + "sni =\n  a.example.com = local\n", "gw.ini"), check_ports=False, create_state=False)
    assert p.server_tls == {} and p.local_ca_path is None
    assert not (tmp_path / "txgate-state").exists()


def test_local_ca_created_in_relative_state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = prepare(parse_text(L, "gw.ini"), check_ports=False)
    assert os.path.samefile(p.local_ca_path, tmp_path / "txgate-state" / "ca.pem")
    assert "main" in p.server_tls


def test_unusable_state_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = parse_text(f"[gateway]\nstate_dir = {blocker}/state\n" + L, "gw.ini")
    with pytest.raises(ConfigError) as info:
        prepare(cfg, check_ports=False)
    assert str(info.value).startswith("gw.ini: [gateway] state_dir: ")
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "log, message",
    [
        ("{d}/no/such/dir/access.log", "{d}/no/such/dir/access.log: directory {d}/no/such/dir does not exist"),
        ("{d}", "{d}: is a directory, not a file"),
    ],
)
def test_access_log_path_errors(tmp_path, log, message):
    d = str(tmp_path)
    assert prepared_error(f"[gateway]\naccess_log = {log.format(d=d)}\n" + L) == (
        f"gw.ini: [gateway] access_log: {message.format(d=d)}"
    )


# -- warnings --------------------------------------------------------------------------------


def test_warning_certificate_expiring_soon(certs):
    cert, key = certs.leaf("soon", ["localhost"], not_after=NOW + timedelta(days=5, hours=1))
    p = prepare(parse_text(L + f"certificate = {cert} {key}\n", "gw.ini"), check_ports=False, create_state=False)
    stamp = (NOW + timedelta(days=5, hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert p.warnings == [f"gw.ini: [listener:main] certificate: certificate {cert} expires on {stamp} (in 5 days)"]
    assert "main" in p.server_tls


def test_no_warning_for_certificate_valid_beyond_14_days(certs):
    cert, key = certs.leaf("later", ["localhost"], not_after=NOW + timedelta(days=15))
    p = prepare(parse_text(L + f"certificate = {cert} {key}\n", "gw.ini"), check_ports=False, create_state=False)
    assert p.warnings == []


def test_warning_sni_name_not_covered(certs):
    cert, key = certs.leaf("other-names", ["b.example.com", "127.0.0.2"])
    p = prepare(parse_text(L + f"sni =\n  a.example.com = {cert} {key}\n", "gw.ini"),
                check_ports=False, create_state=False)
    assert p.warnings == [
        f"gw.ini: [listener:main] sni: certificate {cert} does not cover 'a.example.com' "
        "(its names: b.example.com, 127.0.0.2)"
    ]


def test_sni_wildcard_covered_by_wildcard_cert(certs):
    cert, key = certs.leaf("wild", ["*.example.com"])
    p = prepare(parse_text(L + f"sni =\n  *.example.com = {cert} {key}\n  x.example.com = {cert} {key}\n", "gw.ini"),
                check_ports=False, create_state=False)
    assert p.warnings == []


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_warning_old_min_tls(version):
    cfg = parse_text(L + f"min_tls = {version}\n", "gw.ini")
    assert cfg.warnings == (
        f"gw.ini: [listener:main] min_tls: TLS {version} is deprecated and insecure; 1.2 is the minimum recommended",
    )
    assert prepare(cfg, check_ports=False, create_state=False).warnings == list(cfg.warnings)


def test_warning_upstream_verify_off():
    p = prepare(parse_text(L + "[api:a]\nupstream = https://h\nupstream_verify = off\n", "gw.ini"),
                check_ports=False, create_state=False)
    assert p.warnings == ["gw.ini: [api:a] upstream_verify: off - upstream certificates are NOT verified"]
