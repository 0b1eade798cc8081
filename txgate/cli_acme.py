# -*- test-case-name: tests.test_acme_status -*-
"""``txgate acme status``: the ACME certificates of a gw.ini, from the status file the gateway keeps."""
from __future__ import annotations

import json
import sys

from txgate.cli_help import add_command, add_config_option, add_group


def _offline(cfg) -> list[dict]:
    """What the store shows for the configured certificates (no status file yet)."""
    from txgate.acme.status import offline_status
    from txgate.plan.store import open_gateway_store

    store = open_gateway_store(cfg, create=False)
    try:
        return offline_status(cfg, store)
    finally:
        if store is not None:
            store.close()


def cmd_acme_status(args) -> int:
    """Print one line per ACME certificate (or the JSON document with --json)."""
    from txgate import config as _config
    from txgate.acme.status import format_entry, read_status
    from txgate.cli_admin import load_config
    from txgate.store import StoreError

    cfg = load_config(args, "txgate acme status")
    if cfg is None:
        return 1
    try:
        doc = read_status(cfg.gateway.state_dir)
        if doc is None:
            doc = {"updated": None, "certificates": _offline(cfg)}
        else:
            known = {tuple(e.get("names") or ()) for e in doc.get("certificates", [])}
            missing = [n for n in cfg.acme_certificates() if n not in known]
            if missing:
                doc["certificates"] += [e for e in _offline(cfg) if tuple(e["names"]) in missing]
    except _config.ConfigError as e:
        for line in e.lines():
            print(f"txgate acme status: configuration error: {line}", file=sys.stderr)
        return 1
    except (OSError, ValueError, StoreError) as e:
        print(f"txgate acme status: cannot read the ACME state: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    if doc.get("updated"):
        print(f"# state written {doc['updated']} by the gateway (pid {doc.get('pid')})")
    else:
        print("# no ACME state written yet (the gateway has not run with ACME): from the config and the store")
    for entry in doc["certificates"]:
        print(format_entry(entry))
    if not doc["certificates"]:
        print("# no ACME certificates in this configuration")
    return 0


def register_acme_commands(sub) -> None:
    """Add ``txgate acme status``."""
    g = add_group(sub, "acme", dest="acme_command", summary="ACME certificates: status",
                  description="Certificates obtained and renewed from the [acme] server (certificate = acme).")
    p = add_command(
        g, "status", func=cmd_acme_status,
        summary="per ACME certificate: issuing CA, expiry, next renewal and why, last error",
        description="""
            Per ACME certificate of this gw.ini: the issuing CA, the expiry, the next renewal time and
            why (ratio: renew_ratio of the lifetime left; ari: the CA's renewalInfo window), the next
            attempt, failures in a row and the last error. Reads the status file the gateway keeps in
            state_dir/acme/status.json (so it works whether the gateway runs or not); before the
            gateway's first start with ACME, what the store shows. The admin API serves the same as
            GET /acme.""",
        exits={0: "the state was read and printed", 1: "configuration error or unreadable state (one line says which)"},
        examples=("txgate acme status -c /etc/txgate/gw.ini",),
    )
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print the JSON document (as GET /acme, plus updated/pid)")
