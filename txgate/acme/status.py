"""The ACME status file: what AcmeService last knew per certificate, for ``txgate acme status`` and ``GET /acme``.

The running service writes ``state_dir/acme/status.json`` (mode 0600) on every change, so the CLI reads
it whether or not the gateway runs; with no file yet, the CLI derives what it can from the config and
the store (``offline_status``).
"""
# -*- test-case-name: tests.test_acme_status -*-
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

STATUS_FILE = "status.json"


def status_path(state_dir: str) -> str:
    return os.path.join(state_dir, "acme", STATUS_FILE)


def fmt_time(t: datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def write_status(state_dir: str, certificates: list[dict], now: datetime) -> None:
    """Replace the status file (atomically, 0600)."""
    from txgate.fileio import make_private_dir, write_private_file

    make_private_dir(os.path.join(state_dir, "acme"))
    doc = {"updated": fmt_time(now), "pid": os.getpid(), "certificates": certificates}
    write_private_file(status_path(state_dir), json.dumps(doc, indent=1).encode())


def read_status(state_dir: str) -> dict | None:
    """The status file's document, or None when there is none (the service never ran here)."""
    try:
        with open(status_path(state_dir), "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    return doc if isinstance(doc, dict) else None


def offline_status(cfg, store, now: datetime | None = None) -> list[dict]:
    """Per configured ACME certificate, what the store shows (no service has looked at it yet)."""
    from txgate.acme import schedule
    from txgate.store import StoreError

    now = now or datetime.now(timezone.utc)
    out = []
    for names in cfg.acme_certificates():
        slot = f"acme/{names[0]}"
        entry = {"names": list(names), "slot": slot, "issuer": None, "not_after": None, "next_renewal": None,
                 "renewal_reason": "missing", "next_check": None, "failures": 0, "last_error": None, "orders": 0}
        got = None
        if store is not None:
            try:
                got = store.get(slot)
            except StoreError as e:
                if e.code != "not_found":
                    raise
        if got is not None:
            d = schedule.decide(now, names, got.info, cfg.acme.renew_ratio)
            entry.update(issuer=got.info.issuer, not_after=fmt_time(got.info.not_after),
                         next_renewal=fmt_time(d.renew_at), renewal_reason=d.reason)
        out.append(entry)
    return out


def format_entry(e: dict) -> str:
    """One line of ``txgate acme status``."""
    def v(x):
        return "-" if x in (None, "") else str(x)

    renewal = v(e.get("next_renewal"))
    if e.get("renewal_reason"):
        renewal += f" ({e['renewal_reason']})"
    return (f"{' '.join(e.get('names') or [])}  slot={v(e.get('slot'))}  issuer={v(e.get('issuer'))}  "
            f"expires={v(e.get('not_after'))}  next_renewal={renewal}  next_attempt={v(e.get('next_check'))}  "
            f"failures={e.get('failures', 0)}  last_error={v(e.get('last_error'))}")
