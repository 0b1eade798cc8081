# -*- test-case-name: tests.test_signals_e2e,tests.test_config_e2e,tests.test_cli_admin -*-
"""twistd glue: `twistd txgate --config gw.ini`: options, help, daemon-mode defaults, signal handlers."""
from __future__ import annotations

import os
import sys

from twisted.python import usage

from txgate.runtime.signals import CleanExitOnSignals, ReloadOnSignal, ReopenOnSignal, handle_signals

__all__ = ["CleanExitOnSignals", "Options", "ReloadOnSignal", "ReopenOnSignal", "makeService"]

HELP = """
Running it:
  twistd -n txgate -c gw.ini       in the foreground (systemd, containers, a terminal): logs and the
                                   access log (access_log = -) go to stdout
  twistd txgate -c gw.ini          as a daemon: logs go to STATE_DIR/txgate.log unless --logfile or
                                   --syslog says otherwise, and access_log = - means STATE_DIR/access.log
  --pidfile=PATH                   twistd's pid file; without it STATE_DIR/twistd.pid ([gateway]
                                   state_dir), so gateways with their own state_dir start side by side;
                                   --pidfile= (empty) writes none (what systemd units use with -n)

Signals:
  SIGHUP           reload gw.ini and the certificate store (as `txgate reload` and POST /reload);
                   a configuration with mistakes is refused and the running one kept
  SIGUSR1          reopen the access log and txgate's log file (after logrotate moved them)
  SIGTERM, SIGINT  stop accepting, finish requests in flight (up to shutdown_timeout), exit 0
  With worker processes ([gateway] workers, --workers) signal the supervisor (the pid file's
  process): it validates a reload once and hands it to every worker, and has every worker reopen
  its access log on SIGUSR1.

Check a configuration first with `txgate check -c gw.ini`; `txgate --help` lists the other commands.
"""


def _load_quietly(path: str | None):
    """The Config, or None when it does not parse (makeService then reports why)."""
    from txgate import config as _config

    try:
        return _config.load(path) if path else _config.default_config()
    except _config.ConfigError:
        return None


class Options(usage.Options):
    synopsis = "[twistd options] txgate [--config gw.ini] [--workers auto|N]"
    optParameters = [
        ["config", "c", None, "path to gw.ini (default: the embedded defaults)"],
        ["workers", "w", None, "worker processes: auto or N, overriding [gateway] workers"],
    ]

    def getUsage(self, width=None) -> str:
        return super().getUsage(width) + HELP

    def postOptions(self) -> None:
        w = self["workers"]
        if w is not None and w != "auto" and not (w.isdigit() and int(w) >= 1):
            raise usage.UsageError(f"--workers: expected auto or an integer >= 1, got '{w}'")
        parent = getattr(self, "parent", None)
        if parent is None:
            return
        cfg = _load_quietly(self["config"])
        if cfg is None:
            return
        state_dir = cfg.gateway.state_dir
        # Defaults that keep a gateway's files with its state (twistd's own: ./twistd.pid, ./twistd.log).
        if parent.get("pidfile") == "twistd.pid":
            parent["pidfile"] = os.path.abspath(os.path.join(state_dir, "twistd.pid"))
        if not parent.get("nodaemon") and not parent.get("logfile") and not parent.get("syslog"):
            parent["logfile"] = os.path.abspath(os.path.join(state_dir, "txgate.log"))
        self.daemon = not parent.get("nodaemon")
        self.state_dir = state_dir
        if cfg.gateway.log_format == "json" and not parent.get("logger"):
            from txgate.runtime.logs import use_json_for_twistd

            parent["logger"] = use_json_for_twistd(parent.get("logfile"))


def makeService(options):
    """Validate the configuration (one line per mistake on stderr and exit 1) and build the service."""
    from txgate import config as _config
    from txgate.runtime.assemble import makeService as _make
    from txgate.runtime.logs import daemon_access_log
    from txgate.runtime.workers import resolve_workers

    path = options["config"]
    load = (lambda: _config.load(path)) if path else _config.default_config
    if getattr(options, "daemon", False):
        # stdout is closed in daemon mode: `access_log = -` goes to state_dir/access.log instead
        # (for worker processes too: they get the configs this loader returns).
        os.makedirs(options.state_dir, mode=0o700, exist_ok=True)

        def loader():
            return daemon_access_log(load())
    else:
        loader = load
    if options["workers"] is not None:
        loader = _with_workers(loader, None if options["workers"] == "auto" else int(options["workers"]))
    try:
        cfg = loader()
        count = resolve_workers(cfg.gateway.workers)
        if count > 1:
            from txgate.runtime.supervised import make_supervised_service

            top = make_supervised_service(cfg, count, loader=loader)
        else:
            top = _make(cfg, loader=loader)
    except _config.ConfigError as e:
        sys.stderr.write("".join(f"txgate: configuration error: {line}\n" for line in e.lines()))
        sys.stderr.flush()
        raise SystemExit(1)
    handle_signals(top)
    return top


def _with_workers(loader, workers):
    """A loader whose configs carry the command line's --workers instead of gw.ini's."""
    import dataclasses

    def load():
        cfg = loader()
        return dataclasses.replace(cfg, gateway=dataclasses.replace(cfg.gateway, workers=workers))

    return load

