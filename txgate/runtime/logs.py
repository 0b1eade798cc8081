# -*- test-case-name: tests.test_signals_e2e -*-
"""txgate's service log: JSON lines (``log_format = json``), reopenable log files, daemon-mode defaults.

With ``log_format = json`` every line the process writes is one JSON object: access log lines
(``txgate.accesslog``) and service log lines alike (``json_observer``: time, level, namespace,
text, and the event's own fields). Log files are reopened on SIGUSR1 (``reopen_all``).
"""
from __future__ import annotations

import json
import os
import sys
import time

from twisted.logger import formatEvent

_REOPENABLE: list = []


class ReopenableFile:
    """An append-mode text file that can be reopened by path (after logrotate moved it)."""

    def __init__(self, path: str, mode: int = 0o640) -> None:
        self.path = path
        self.mode = mode
        self.file = self._open()
        _REOPENABLE.append(self)

    def _open(self):
        return open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.mode), "a", encoding="utf-8")

    def write(self, text: str) -> None:
        self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def reopen(self) -> None:
        """Open the path again; the old file is closed once the new one is open."""
        new = self._open()
        old, self.file = self.file, new
        try:
            old.close()
        except OSError:
            pass

    def close(self) -> None:
        if self in _REOPENABLE:
            _REOPENABLE.remove(self)
        self.file.close()


def reopen_all() -> None:
    """Reopen every ReopenableFile (txgate's own log file in daemon mode)."""
    for f in list(_REOPENABLE):
        f.reopen()


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def event_as_json_line(event: dict) -> str:
    """One log event as one JSON line: time, level, namespace, text, then the event's own fields."""
    level = event.get("log_level")
    doc = {
        "time": _stamp(event.get("log_time") or time.time()),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        doc["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in doc and not key.startswith("_"):
            doc[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return json.dumps(doc, separators=(",", ":")) + "\n"


def json_observer(out):
    """A log observer writing every event to ``out`` as a JSON line (``log_format = json``)."""

    def observe(event: dict) -> None:
        try:
            out.write(event_as_json_line(event))
            out.flush()
        except Exception:  # a log observer must never raise into the logging system
            pass

    return observe


# twistd's ``logger`` option names a factory without arguments: where it writes is set here first.
TWISTD_JSON_LOGGER = "txgate.runtime.logs.twistd_json_observer"
_twistd_logfile: str | None = None


def use_json_for_twistd(logfile: str | None) -> str:
    """Make ``twistd_json_observer`` write to ``logfile`` (None or ``-``: stdout); returns its dotted name."""
    global _twistd_logfile
    _twistd_logfile = logfile
    return TWISTD_JSON_LOGGER


def twistd_json_observer():
    """twistd's log observer with ``log_format = json``: JSON lines to the log file (reopenable) or stdout."""
    if _twistd_logfile and _twistd_logfile != "-":
        return json_observer(ReopenableFile(_twistd_logfile))
    # fd 1 itself: twistd redirects sys.stdout into the log system once logging starts.
    return json_observer(open(os.dup(sys.__stdout__.fileno() if sys.__stdout__ else 1), "a", encoding="utf-8"))


DAEMON_ACCESS_LOG = "access.log"


def daemon_access_log(config):
    """In daemon mode stdout is closed: ``access_log = -`` then means ``state_dir/access.log``."""
    import dataclasses

    gw = config.gateway
    if gw.access_log != "-":
        return config
    target = os.path.join(gw.state_dir, DAEMON_ACCESS_LOG)
    return dataclasses.replace(config, gateway=dataclasses.replace(gw, access_log=target))
