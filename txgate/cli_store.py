# -*- test-case-name: tests.test_cli_admin,tests.test_store -*-
"""``txgate store list|rollback|put``: the certificate store of a gw.ini, offline or through the admin API."""
from __future__ import annotations

import sys
from urllib.parse import quote

from txgate.cli_admin import UNREACHABLE, AdminUnreachable, add_admin_client_options, admin_request, load_config
from txgate.cli_help import add_command, add_config_option, add_group

RELOAD_HINT = "reload the running gateway to serve it: txgate reload, kill -HUP <pid>, or POST /reload on the admin API"


def _open_store(args, *, create: bool = False):
    """The store of the gw.ini in --config (or the embedded defaults), or (cfg, None) after one line."""
    from txgate import config as _config
    from txgate.plan.files import check_files
    from txgate.plan.store import open_gateway_store

    try:
        cfg = _config.load(args.config) if args.config else _config.default_config()
        check_files(cfg)
        store = open_gateway_store(cfg, create=create)
    except _config.ConfigError as e:
        for line in e.lines():
            print(f"txgate store: configuration error: {line}", file=sys.stderr)
        return None, None
    if store is None:
        print(f"txgate store: no store yet under {cfg.gateway.state_dir} (it is created on the gateway's first start)",
              file=sys.stderr)
    return cfg, store


def cmd_store_list(args) -> int:
    """List the store's entries: current versions of names, then unnamed entries."""
    from txgate.store import StoreError
    from txgate.tls.certs import format_time

    cfg, store = _open_store(args)
    if store is None:
        return 1
    try:
        infos = store.list()
        for info in infos:
            label = f"{info.name}@{info.version}" if info.name else "-"
            versions = f"  versions={','.join(map(str, info.versions))}" if info.name else ""
            print(f"{label}  id={info.id}  not_after={format_time(info.not_after)}  key={'yes' if info.has_key else 'no'}"
                  f"{versions}  subject={info.subject}")
        for name in store.pending_names():
            print(f"{name}  (pending key: waiting for its signed certificate)")
    except StoreError as e:
        print(f"txgate store: {e.code}: {e.reason}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def cmd_store_rollback(args) -> int:
    """Make the previous version of NAME current again (history is kept)."""
    return _write_store(args, "txgate store rollback", lambda store: store.rollback(args.name),
                        "reload the running gateway to serve it: kill -HUP <pid>, or POST /reload on the admin API")


def _write_store(args, prog: str, write, hint: str, *, create: bool = False) -> int:
    """Open the store, ``write(store) -> Entry``, say which version is current (and, for a directory
    store, that a running gateway needs a reload: it notifies only within one process)."""
    from txgate.store import StoreError

    cfg, store = _open_store(args, create=create)
    if store is None:
        return 1
    try:
        entry = write(store)
    except StoreError as e:
        print(f"{prog}: {e.code}: {e.reason}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{entry.name}: version {entry.version} is current (id {entry.id})")
    if cfg.gateway.store == "dir":
        print(hint)
    return 0


def _read_pem(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        print(f"txgate store put: {path}: {e.strerror or e}", file=sys.stderr)
        return None


def cmd_store_put(args) -> int:
    """Store CERT (a PEM chain, leaf first) and KEY as the new current version of NAME."""
    chain = _read_pem(args.cert_file)
    key = _read_pem(args.key_file)
    if chain is None or key is None:
        return 1
    if not args.offline:
        cfg = load_config(args, "txgate store put")
        if cfg is None:
            return 1
        try:
            reply = admin_request(cfg, "POST", f"/certs?name={quote(args.name, safe='')}", chain.rstrip(b"\n") + b"\n" + key,
                                  "application/x-pem-file", cert=args.cert, key=args.key)
        except AdminUnreachable:
            reply = None  # no gateway running: write the store directly
        if reply is not None:
            if reply.status == 201:
                print(f"{reply.body['name']}: version {reply.body['version']} is current (id {reply.body['id']}), "
                      "stored through the running gateway's admin API")
                return 0
            print(f"txgate store put: {reply.body.get('error', reply.status)}: {reply.body.get('message', '')}",
                  file=sys.stderr)
            return 1
    return _write_store(args, "txgate store put", lambda store: store.put(args.name, chain, key), RELOAD_HINT,
                        create=True)


def register_store_commands(sub) -> None:
    """Add ``txgate store list|rollback|put``."""
    st = add_group(sub, "store", dest="store_command", summary="the certificate store of a gw.ini: list, put, rollback",
                   description="""
                       The certificate store named by [gateway] store (a directory under state_dir, or
                       Redis): certificates referred to as store:NAME in gw.ini.""")
    p = add_command(
        st, "list", func=cmd_store_list,
        summary="list the entries (current versions, then unnamed entries)",
        description="List every name with its current version, expiry and versions, then unnamed entries and "
                    "names waiting for a signed certificate. Reads the store directly (offline).",
        exits={0: "listed", 1: "configuration or store error (one line says which)"},
        examples=("txgate store list -c /etc/txgate/gw.ini",),
    )
    add_config_option(p)
    p = add_command(
        st, "rollback", func=cmd_store_rollback,
        summary="make the previous version of NAME current again",
        description="Make the previous version of NAME current again (history is kept). A directory store tells "
                    "only its own process: reload a running gateway afterwards.",
        exits={0: "rolled back", 1: "no such name, no previous version, or a configuration error"},
        examples=("txgate store rollback -c gw.ini web",),
    )
    p.add_argument("name", metavar="NAME", help="the store name (as in certificate = store:NAME)")
    add_config_option(p)
    p = add_command(
        st, "put", func=cmd_store_put,
        summary="store CERT and KEY as the new current version of NAME",
        description="""
            Store a certificate chain (PEM, leaf first) and its private key as the new current version
            of NAME. When the gateway of this gw.ini runs, through its admin API (POST /certs?name=NAME),
            so it serves the new version at once; otherwise (or with --offline) directly into the store,
            where the gateway finds it on its next start or reload.""",
        exits={0: "stored", 1: "refused (expired, key mismatch, malformed PEM, bad name) or a configuration error"},
        examples=("txgate store put -c /etc/txgate/gw.ini web web.pem web-key.pem",),
    )
    p.add_argument("name", metavar="NAME", help="the store name (as in certificate = store:NAME)")
    p.add_argument("cert_file", metavar="CERT", help="PEM certificate chain, leaf first")
    p.add_argument("key_file", metavar="KEY", help="PEM private key of the leaf")
    p.add_argument("--offline", action="store_true", help="write the store directly, never through the admin API")
    add_admin_client_options(p)
