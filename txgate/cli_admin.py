# -*- test-case-name: tests.test_cli_admin -*-
"""The `txgate` command's client of a running gateway's admin API (``txgate reload``, ``store put``).

The address, token and TLS trust come from the same gw.ini the gateway runs on: ``[admin] bind``,
``token_file``, and (with ``client_ca``) ``state_dir/ca.pem`` plus the client certificate given
with ``--cert``/``--key``. Blocking ``http.client``: the CLI never runs the reactor.
"""
from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
from dataclasses import dataclass

from txgate.cli_help import add_command, add_config_option

# Exit status when the admin API cannot be reached (the gateway is not running, or its admin API is off).
UNREACHABLE = 3


class AdminUnreachable(Exception):
    """The admin API of the gw.ini's gateway does not answer (or is off)."""


@dataclass
class AdminReply:
    status: int
    body: dict


def admin_address(cfg) -> tuple[str, int]:
    """Where to connect for ``[admin] bind``: a wildcard bind is reached on loopback."""
    host = cfg.admin.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, cfg.admin.port


def admin_request(cfg, method: str, path: str, body: bytes | None = None, content_type: str | None = None, *,
                  cert: str | None = None, key: str | None = None, timeout: float = 60.0) -> AdminReply:
    """One request to the admin API of ``cfg``'s gateway; AdminUnreachable when nothing answers."""
    from txgate.admin.config import AdminConfigError, read_token

    adm = cfg.admin
    if not adm.enabled:
        raise AdminUnreachable("the admin API is off ([admin] bind = off)")
    host, port = admin_address(cfg)
    if adm.tls:
        ctx = ssl.create_default_context(cafile=os.path.join(cfg.gateway.state_dir, "ca.pem"))
        if cert:
            ctx.load_cert_chain(cert, key)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {}
    if adm.token_file:
        try:
            headers["Authorization"] = "Bearer " + read_token(adm.token_file).decode("ascii")
        except AdminConfigError as e:
            raise AdminUnreachable(f"[admin] token_file: {e}") from None
    if content_type:
        headers["Content-Type"] = content_type
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except (ConnectionRefusedError, FileNotFoundError) as e:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise AdminUnreachable(f"no admin API on {where} ({e.strerror or e}): is the gateway running?") from None
    except (OSError, http.client.HTTPException) as e:
        raise AdminUnreachable(f"admin API: {e.__class__.__name__}: {e}") from None
    finally:
        conn.close()
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {"error": "invalid_response", "message": raw[:200].decode("utf-8", "replace")}
    return AdminReply(resp.status, doc if isinstance(doc, dict) else {"value": doc})


def load_config(args, prog: str):
    """The Config of ``--config`` (or the embedded defaults), or None after one line on stderr."""
    from txgate import config as _config

    try:
        return _config.load(args.config) if args.config else _config.default_config()
    except _config.ConfigError as e:
        for line in e.lines():
            print(f"{prog}: configuration error: {line}", file=sys.stderr)
        return None


def cmd_reload(args) -> int:
    """POST /reload on the running gateway's admin API."""
    cfg = load_config(args, "txgate reload")
    if cfg is None:
        return 1
    try:
        reply = admin_request(cfg, "POST", "/reload", cert=args.cert, key=args.key)
    except AdminUnreachable as e:
        print(f"txgate reload: {e}; or send SIGHUP to the gateway's process", file=sys.stderr)
        return UNREACHABLE
    if reply.status == 200:
        print(f"reloaded: {reply.body.get('message', '')}".rstrip())
        return 0
    print(f"txgate reload: {reply.body.get('error', reply.status)}: {reply.body.get('message', '')}", file=sys.stderr)
    return 1


def add_admin_client_options(p) -> None:
    """--config, and the client certificate an admin API with ``client_ca`` asks for."""
    add_config_option(p)
    p.add_argument("--cert", metavar="CERT.pem", help="client certificate for an admin API with client_ca (mTLS)")
    p.add_argument("--key", metavar="KEY.pem", help="the key of --cert (default: in CERT.pem)")


def register_admin_commands(sub) -> None:
    """Add ``txgate reload``."""
    p = add_command(
        sub, "reload", func=cmd_reload,
        summary="reload the running gateway (config file and store) through its admin API",
        description="""
            Ask the gateway running on this gw.ini to re-read it and its certificate store, like
            SIGHUP does: the admin API's POST /reload at [admin] bind, with the token from
            [admin] token_file. A configuration with mistakes is refused and the running one kept.
            Run `txgate check -c gw.ini` first to see every mistake at once.""",
        exits={0: "reloaded", 1: "the reload was refused (the message says why; the old config keeps running)",
               UNREACHABLE: "no gateway answers on the admin API (not running, or [admin] bind = off)"},
        examples=("txgate reload -c /etc/txgate/gw.ini",),
    )
    add_admin_client_options(p)
