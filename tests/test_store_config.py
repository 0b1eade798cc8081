"""Store and admin configuration: [gateway] store keys, [admin] keys, store:REF certificates (exact one-line errors)."""
from __future__ import annotations

import os
import stat

import pytest

from certs_helpers import make_leaf, pem_chain, pem_key
from conftest import run_gateway_once, txgate_cli
from txgate.config import ConfigError, parse_text
from txgate.plan.files import check_files
from txgate.service import ServiceFacade, GatewayService, open_gateway_store, prepare, store_secret
from txgate.store import open_store

L = "[listener:main]\nbind = 127.0.0.1:0\n"
SECRET = b"0123456789abcdef0123456789abcdef"


def error(text: str, path: str = "gw.ini") -> str:
    with pytest.raises(ConfigError) as info:
        check_files(parse_text(text, path))
    message = str(info.value)
    assert "\n" not in message
    return message


# -- parsing -----------------------------------------------------------------------------------


def test_defaults():
    cfg = parse_text(L, "gw.ini")
    assert cfg.gateway.store == "dir"
    assert cfg.gateway.store_secret_file is None
    assert cfg.gateway.expiry_warning_days == 30
    assert (cfg.admin.enabled, cfg.admin.host, cfg.admin.port, cfg.admin.bind_explicit) == (True, "127.0.0.1", 9901, False)
    assert cfg.admin.loopback


def test_store_keys_parse(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    cfg = parse_text(f"[gateway]\nstore = redis://127.0.0.1:6379/2\nstore_secret_file = {secret}\n"
                     "expiry_warning_days = 10\n" + L, "gw.ini")
    assert cfg.gateway.store == "redis://127.0.0.1:6379/2"
    assert cfg.gateway.store_secret_file == str(secret)
    assert cfg.gateway.expiry_warning_days == 10


@pytest.mark.parametrize(
    "text, message",
    [
        ("[gateway]\nstore = s3://bucket\n" + L, "gw.ini: [gateway] store: expected 'dir' or 'redis://HOST:PORT/DB', got 's3://bucket'"),
        ("[gateway]\nstore = directory\n" + L, "gw.ini: [gateway] store: expected 'dir' or 'redis://HOST:PORT/DB', got 'directory'"),
        ("[gateway]\nstore = redis://:hunter2@127.0.0.1:6379/x\n" + L,
         "gw.ini: [gateway] store: 'redis://:***@127.0.0.1:6379/x': the database must be a number (redis://HOST:PORT/DB)"),
        ("[gateway]\nstore =\n" + L, "gw.ini: [gateway] store: empty value"),
        ("[gateway]\nstore_secret_file = /nonexistent/secret\n" + L,
         "gw.ini: [gateway] store_secret_file: /nonexistent/secret: file not found"),
        ("[gateway]\nexpiry_warning_days = 0\n" + L, "gw.ini: [gateway] expiry_warning_days: must be at least 1, got 0"),
        ("[gateway]\nexpiry_warning_days = soon\n" + L,
         "gw.ini: [gateway] expiry_warning_days: expected an integer, got 'soon'"),
        ("[gateway]\nstore_secret = x\n" + L,
         "gw.ini: [gateway] store_secret: unknown key (did you mean 'store_secret_file'?)"),
        ("[admin]\nbind = 0.0.0.0:9901\n" + L,
         "gw.ini: [admin] bind: 0.0.0.0:9901 is not a loopback address: protect the admin API with client_ca (mTLS) "
         "or token_file (bearer token), or bind it to 127.0.0.1"),
        ("[admin]\nbind = [::]:9901\n" + L,
         "gw.ini: [admin] bind: [::]:9901 is not a loopback address: protect the admin API with client_ca (mTLS) "
         "or token_file (bearer token), or bind it to 127.0.0.1"),
        ("[admin]\nbind = 9901\n" + L, "gw.ini: [admin] bind: expected HOST:PORT, got '9901'"),
        ("[admin]\ntoken_file = /nonexistent/token\n" + L, "gw.ini: [admin] token_file: /nonexistent/token: file not found"),
        ("[admin]\nclient_ca = /nonexistent/ca.pem\n" + L, "gw.ini: [admin] client_ca: /nonexistent/ca.pem: file not found"),
        ("[admin]\nbnd = 127.0.0.1:1\n" + L, "gw.ini: [admin] bnd: unknown key (did you mean 'bind'?)"),
        ("[admin]\nbind = 127.0.0.1:8443\n[listener:main]\nbind = 127.0.0.1:8443\n",
         "gw.ini: [admin] bind: 127.0.0.1:8443 is already used by [listener:main]"),
        ("[admn]\n" + L, "gw.ini: [admn]: unknown section (did you mean 'admin'?)"),
        ("[admin]\nallowed_hosts = gw1.internal gw1.internal:9901\n" + L,
         "gw.ini: [admin] allowed_hosts: 'gw1.internal:9901': expected a host name without a port "
         "(the admin API's port is accepted with or without it)"),
        ("[admin]\nallowed_hosts = *.internal\n" + L,
         "gw.ini: [admin] allowed_hosts: '*.internal': wildcards are not allowed (list each host name)"),
        ("[admin]\nallowed_hosts = [::1]\n" + L,
         "gw.ini: [admin] allowed_hosts: '[::1]': expected a host name without a port "
         "(the admin API's port is accepted with or without it)"),
        ("[admin]\nallowed_hosts = http://gw1.internal\n" + L,
         "gw.ini: [admin] allowed_hosts: 'http://gw1.internal': expected a host name without a port "
         "(the admin API's port is accepted with or without it)"),
        ("[admin]\nallowed_hosts = gw1_internal\n" + L,
         "gw.ini: [admin] allowed_hosts: 'gw1_internal': expected a host name (letters, digits, '-' and '.'; "
         "labels of 1-63 characters)"),
        ("[admin]\nallowed_hosts = gw1.internal.\n" + L,
         "gw.ini: [admin] allowed_hosts: 'gw1.internal.': expected a host name (letters, digits, '-' and '.'; "
         "labels of 1-63 characters)"),
        ("[admin]\nallowed_hosts =\n" + L, "gw.ini: [admin] allowed_hosts: empty value"),
        ("[admin]\nallowed_host = gw1.internal\n" + L,
         "gw.ini: [admin] allowed_host: unknown key (did you mean 'allowed_hosts'?)"),
        (L + "certificate = store:\n",
         "gw.ini: [listener:main] certificate: 'store:': expected store:NAME or store:ID (NAME: 1-128 of A-Z a-z 0-9 . _ -; "
         "ID: the 64 hex digits of the SHA-256 fingerprint)"),
        (L + "certificate = store:-web\n",
         "gw.ini: [listener:main] certificate: 'store:-web': expected store:NAME or store:ID (NAME: 1-128 of A-Z a-z 0-9 . _ -; "
         "ID: the 64 hex digits of the SHA-256 fingerprint)"),
        (L + "certificate = store:web key.pem\n",
         "gw.ini: [listener:main] certificate: expected one store reference (store:NAME or store:ID), got 'store:web key.pem'"),
        (L + "sni =\n  a.example.com = store:web@0\n",
         "gw.ini: [listener:main] sni: 'store:web@0': expected store:NAME or store:ID (NAME: 1-128 of A-Z a-z 0-9 . _ -; "
         "ID: the 64 hex digits of the SHA-256 fingerprint)"),
    ],
)
def test_config_errors(text, message):
    assert error(text) == message


def test_admin_non_loopback_with_token_or_client_ca_is_accepted(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    cfg = parse_text(f"[admin]\nbind = 0.0.0.0:9901\ntoken_file = {token}\n" + L, "gw.ini")
    assert (cfg.admin.host, cfg.admin.port, cfg.admin.token_file, cfg.admin.loopback) == ("0.0.0.0", 9901, str(token), False)


def test_admin_allowed_hosts():
    assert parse_text(L, "gw.ini").admin.allowed_hosts == ()
    cfg = parse_text("[admin]\nallowed_hosts = gw1.internal Admin.Example.com\n  GW1.INTERNAL 10.0.0.5\n" + L, "gw.ini")
    assert cfg.admin.allowed_hosts == ("gw1.internal", "admin.example.com", "10.0.0.5")


def test_admin_allowed_hosts_reach_the_admin_listener_config(tmp_path):
    """txgate.service hands allowed_hosts to the admin listener's AdminConfig."""
    from twisted.internet.testing import MemoryReactorClock

    from txgate.admin.service import AdminService
    from txgate.service import makeService

    state = tmp_path / "state"
    text = (f"[gateway]\nstate_dir = {state}\n[admin]\nbind = 127.0.0.1:0\nallowed_hosts = gw1.internal\n"
            "[listener:main]\nbind = 127.0.0.1:0\ncertificate = local\n")
    cfg = parse_text(text, "gw.ini")
    top = makeService(cfg, MemoryReactorClock())
    try:
        admins = [s for s in top if isinstance(s, AdminService)]
        assert [a.config.allowed_hosts for a in admins] == [("gw1.internal",)]
    finally:
        for service in top:
            store = getattr(service, "store", None)
            if store is not None and hasattr(store, "close"):
                store.close()


def test_admin_bind_off():
    cfg = parse_text("[admin]\nbind = off\n" + L, "gw.ini")
    assert not cfg.admin.enabled


def test_store_refs_everywhere(tmp_path):
    ref_id = "AB" * 32
    cfg = parse_text(
        L + "certificate = store:web\nsni =\n  a.example.com = store:web\n  b.example.com = store:" + ref_id + "\n"
        "[api:x]\nupstream = https://up.example:443\nupstream_certificate = store:client@2\n"
        "[security]\nupstream_certificates =\n  *.example = store:fleet-client\n", "gw.ini")
    assert cfg.listeners[0].certificate.store_ref == "web"
    assert cfg.store_refs() == {
        "web": ["listener:main", "listener:main sni:a.example.com"],
        ref_id.lower(): ["listener:main sni:b.example.com"],
        "client@2": ["api:x upstream_certificate"],
        "fleet-client": ["security upstream_certificates *.example"],
    }


# -- prepare: store references resolve (or name file, section and key) -----------------------------


@pytest.fixture
def dir_store(tmp_path):
    store = open_store("dir", str(tmp_path / "state"), SECRET)
    yield store
    store.close()


def _cfg(tmp_path, body: str):
    return parse_text(f"[gateway]\nstate_dir = {tmp_path / 'state'}\n" + L + body, "gw.ini")


def prepared_error(cfg, store) -> str:
    with pytest.raises(ConfigError) as info:
        prepare(cfg, check_ports=False, create_state=False, store=store)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_store_ref_not_found(tmp_path, dir_store):
    cfg = _cfg(tmp_path, "certificate = store:web\n")
    assert prepared_error(cfg, dir_store) == "gw.ini: [listener:main] certificate: store:web: no store entry named 'web'"
    cfg = _cfg(tmp_path, "sni =\n  a.example.com = store:" + "ab" * 32 + "\n")
    assert prepared_error(cfg, dir_store) == (
        f"gw.ini: [listener:main] sni: store:{'ab' * 32}: no store entry with ID {'ab' * 32}")


def test_store_ref_without_key(tmp_path, dir_store, certs):
    ck = make_leaf(certs.intermediate, ["localhost"])
    entry = dir_store.put("web", pem_chain(ck))
    cfg = _cfg(tmp_path, "certificate = store:web\n")
    assert prepared_error(cfg, dir_store) == (
        f"gw.ini: [listener:main] certificate: store:web: the store entry {entry.id} has no private key "
        "(put its key with the chain)")


def test_store_ref_with_no_store(tmp_path):
    cfg = _cfg(tmp_path, "certificate = store:web\n")
    assert prepared_error(cfg, None) == (
        "gw.ini: [listener:main] certificate: store:web: no certificate store is open "
        "(the store under [gateway] state_dir does not exist yet)")


def test_store_refs_resolve_and_facade_reports_usage(tmp_path, dir_store, certs):
    web = make_leaf(certs.intermediate, ["localhost"])
    api = make_leaf(certs.intermediate, ["a.example.com"])
    e_web = dir_store.put("web", pem_chain(web), pem_key(web))
    e_api = dir_store.put(None, pem_chain(api), pem_key(api))
    cfg = _cfg(tmp_path, f"certificate = store:web\nsni =\n  a.example.com = store:{e_api.id}\n")
    prepared = prepare(cfg, check_ports=False, create_state=False, store=dir_store)
    assert prepared.store_ids == {"web": e_web.id, e_api.id: e_api.id}
    assert prepared.server_tls["main"].context_for("a.example.com") is not prepared.server_tls["main"].default_context
    svc = GatewayService(prepared, reactor=object())
    facade = ServiceFacade(svc)
    assert facade.certificate_usage() == {
        "web": ["listener:main"], e_web.id: ["listener:main"], e_api.id: ["listener:main sni:a.example.com"]}
    held = {(h.name, h.role): h for h in facade.held_certificates()}
    assert held[("listener:main", "listener")].fingerprint == e_web.id
    assert held[("listener:main sni:a.example.com", "sni")].fingerprint == e_api.id


# -- the store secret --------------------------------------------------------------------------------


def test_dir_store_without_secret_generates_one(tmp_path, monkeypatch):
    monkeypatch.delenv("TXGATE_STORE_SECRET", raising=False)
    cfg = parse_text(f"[gateway]\nstate_dir = {tmp_path / 'state'}\n" + L, "gw.ini")
    assert store_secret(cfg, create=False) is None
    assert not (tmp_path / "state").exists()
    secret = store_secret(cfg)
    path = tmp_path / "state" / "store.secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(secret) >= 32
    assert store_secret(cfg) == secret  # kept, not regenerated


def test_secret_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TXGATE_STORE_SECRET", "x" * 20)
    cfg = parse_text(f"[gateway]\nstate_dir = {tmp_path / 'state'}\n" + L, "gw.ini")
    assert store_secret(cfg) == b"x" * 20
    assert not (tmp_path / "state" / "store.secret").exists()


def test_short_secret_names_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("TXGATE_STORE_SECRET", raising=False)
    secret = tmp_path / "secret"
    secret.write_text("short\n")
    cfg = parse_text(f"[gateway]\nstate_dir = {tmp_path / 'state'}\nstore_secret_file = {secret}\n" + L, "gw.ini")
    with pytest.raises(ConfigError) as info:
        open_gateway_store(cfg)
    assert str(info.value) == (f"gw.ini: [gateway] store_secret_file: {secret}: the store secret is too short: "
                               "at least 16 bytes are required")


def test_redis_store_without_secret_refuses_to_start(tmp_path):
    text = "[gateway]\nstore = redis://127.0.0.1:1/0\n" + L
    env_free = {k: v for k, v in os.environ.items() if k != "TXGATE_STORE_SECRET"}
    old = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env_free)
        proc = run_gateway_once(tmp_path, text)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (f"txgate: configuration error: {tmp_path / 'gw.ini'}: [gateway] store_secret_file: a Redis "
                           "store needs a secret: set store_secret_file or the TXGATE_STORE_SECRET environment variable\n")


def test_redis_store_unreachable_names_the_store_key(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    text = f"[gateway]\nstore = redis://127.0.0.1:1/0\nstore_secret_file = {secret}\n" + L
    proc = run_gateway_once(tmp_path, text)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr
    assert line.startswith(f"txgate: configuration error: {tmp_path / 'gw.ini'}: [gateway] store: Redis at "
                           "redis://127.0.0.1:1/0: ") and line.count("\n") == 1, line


def test_startup_and_check_name_an_unresolved_store_ref(tmp_path):
    text = "[gateway]\nstate_dir = state\n" + L + "certificate = store:web\n"
    (tmp_path / "state" / "store").mkdir(parents=True)
    expected = f"txgate: configuration error: {tmp_path / 'gw.ini'}: [listener:main] certificate: store:web: no store entry named 'web'\n"
    proc = run_gateway_once(tmp_path, text)
    assert (proc.returncode, proc.stderr) == (1, expected)
    proc = txgate_cli("check", "--config", str(tmp_path / "gw.ini"), cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (1, expected)


# -- the CLI: txgate store list / rollback ---------------------------------------------------------


def test_cli_store_list_and_rollback(tmp_path, certs):
    (tmp_path / "gw.ini").write_text("[gateway]\nstate_dir = state\n" + L)
    state = tmp_path / "state"
    store = open_store("dir", str(state), SECRET)
    (state / "store.secret").write_bytes(SECRET)
    v1 = make_leaf(certs.intermediate, ["localhost"])
    v2 = make_leaf(certs.intermediate, ["localhost"])
    e1 = store.put("web", pem_chain(v1), pem_key(v1))
    e2 = store.put("web", pem_chain(v2), pem_key(v2))
    store.close()
    proc = txgate_cli("store", "list", "--config", "gw.ini", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"web@2  id={e2.id}  not_after=") and "key=yes  versions=1,2" in proc.stdout
    proc = txgate_cli("store", "rollback", "web", "--config", "gw.ini", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"web: version 1 is current (id {e1.id})"
    proc = txgate_cli("store", "rollback", "web", "--config", "gw.ini", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("txgate store rollback: no_previous_version: ")
    proc = txgate_cli("store", "rollback", "nope", "--config", "gw.ini", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (1, "txgate store rollback: not_found: no store entry named 'nope'\n")


def test_a_group_readable_store_secret_file_is_warned_about(tmp_path):
    """The warning an operator sees in the log when the secret file is not private."""
    from twisted.logger import globalLogPublisher

    from txgate.config import parse_text
    from txgate.service import store_secret

    secret = tmp_path / "secret"
    secret.write_text("s" * 40 + "\n")
    secret.chmod(0o644)
    cfg = parse_text(f"[gateway]\nstate_dir = {tmp_path}/state\nstore_secret_file = {secret}\n"
                     "[listener:m]\nbind = 127.0.0.1:0\n", "gw.ini")
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        assert store_secret(cfg)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    from twisted.logger import formatEvent

    assert any("store_secret_file: " + str(secret) + " is readable by group or others" in formatEvent(e) for e in seen)
    secret.chmod(0o600)
    seen.clear()
    globalLogPublisher.addObserver(seen.append)
    try:
        store_secret(cfg)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert not any("readable by group" in formatEvent(e) for e in seen)
