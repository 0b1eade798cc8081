# -*- test-case-name: tests.test_cli_admin -*-
"""``state_dir/running.json``: the addresses a running gateway holds, so `txgate check` counts them as free.

The gateway writes it once listening and after every reload, and removes it when it stops;
``txgate check`` on the same gw.ini reads it (the `nginx -t` habit: check, then reload). A record
whose process is gone is ignored.
"""
from __future__ import annotations

import json
import os

RUNNING_FILE = "running.json"


def running_path(state_dir: str) -> str:
    return os.path.join(state_dir, RUNNING_FILE)


def write_running(state_dir: str, pid: int, binds) -> None:
    """Record ``binds`` ((host, port) pairs) as held by process ``pid`` (atomically; errors are the caller's)."""
    path = running_path(state_dir)
    tmp = f"{path}.{pid}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"pid": pid, "binds": [[h, p] for h, p in binds]}, f)
    os.replace(tmp, path)


def remove_running(state_dir: str, pid: int) -> None:
    """Remove the record if it is ``pid``'s (a newer gateway's record stays)."""
    if read_running(state_dir, alive=lambda _pid: True)[0] == pid:
        try:
            os.unlink(running_path(state_dir))
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_running(state_dir: str, alive=_alive) -> tuple[int | None, set[tuple[str, int]]]:
    """(pid, binds) of the gateway running on ``state_dir``; (None, empty) if none is (or the record is bad)."""
    try:
        with open(running_path(state_dir), encoding="utf-8") as f:
            doc = json.load(f)
        pid = int(doc["pid"])
        binds = {(str(h), int(p)) for h, p in doc["binds"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None, set()
    if not alive(pid):
        return None, set()
    return pid, binds
