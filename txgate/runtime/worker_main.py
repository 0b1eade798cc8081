# -*- test-case-name: tests.test_workers_e2e -*-
"""A worker process: ``python -m txgate.runtime.worker_main`` as spawned by the supervisor (never by hand).

It loads the Config the supervisor validated (``--config``, a pickle), prepares it (TLS contexts,
upstream trust: per process, they cannot cross a process boundary), adopts the inherited listening
sockets (``--listen FD:FAMILY:NAME``) and serves them with a GatewayService in the ``worker`` role.
Commands arrive on stdin (``reload ID PATH REASON``, ``reopen ID``); end of file means the supervisor
is gone. Answers go to fd 3 (``ready``, ``reloaded ID ok|failed TEXT``, ``reopened ID``). SIGTERM
drains (shutdown_timeout) and exits 0; SIGINT and SIGHUP are ignored (a terminal's Ctrl-C and reloads
reach the supervisor, which tells us); SIGUSR1 reopens the access log.
"""
from __future__ import annotations

import argparse
import os
import pickle
import signal
import sys
import threading

STATUS_FD = 3


class Worker:
    """The worker's state: its config file, its gateway, its status pipe."""

    def __init__(self, slot: int, config_path: str, listen: dict, reactor) -> None:
        self.slot = slot
        self.config_path = config_path
        self.listen = listen
        self.reactor = reactor
        self.gateway = None
        self.metrics = None

    def load(self):
        with open(self.config_path, "rb") as f:
            return pickle.load(f)

    def tell(self, line: str) -> None:
        """One line to the supervisor (small: atomic on the pipe)."""
        try:
            os.write(STATUS_FD, line.replace("\n", " ").encode("utf-8", "replace")[:3000] + b"\n")
        except OSError:
            pass

    def start(self) -> None:
        from twisted.internet import task

        from txgate.metrics_multiprocess import FLUSH, WorkerMetrics
        from txgate.plan import prepare
        from txgate.plan.store import open_gateway_store
        from txgate.runtime.facade import ServiceFacade
        from txgate.runtime.gateway import GatewayService

        cfg = self.load()
        store = open_gateway_store(cfg, create=False)
        plan = prepare(cfg, check_ports=False, store=store)
        self.metrics = WorkerMetrics()
        self.gateway = GatewayService(plan, self.reactor, loader=self.load, store=store, metrics=self.metrics,
                                      role="worker", listen_fds=self.listen)
        self.metrics.attach(ServiceFacade(self.gateway))
        self.gateway.startService()
        loop = task.LoopingCall(self.metrics.flush)
        loop.clock = self.reactor
        loop.start(FLUSH, now=False)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop, loop)
        self.tell("ready")

    def stop(self, loop):
        from twisted.internet import defer

        if loop.running:
            loop.stop()
        from twisted.logger import Logger

        d = defer.maybeDeferred(self.gateway.stopService)
        d.addErrback(lambda f: Logger().failure("worker {slot}: stopping failed", f, slot=self.slot))
        d.addBoth(lambda _: self.metrics.flush())
        return d

    def command(self, line: str) -> None:
        """One line from the supervisor."""
        word, _, rest = line.strip().partition(" ")
        if word == "reopen":
            self.reopen_logs()
            self.tell(f"reopened {rest}")
            return
        if word != "reload":
            return
        ident, _, rest = rest.partition(" ")
        self.config_path, _, reason = rest.partition(" ")

        def done(result):
            self.tell(f"reloaded {ident} {'ok' if result.ok else 'failed'} {result.message}")

        self.gateway.reload(reason or "supervisor").addCallback(done)

    def reopen_logs(self) -> None:
        """Reopen the access log (the supervisor got SIGUSR1, or this worker did)."""
        if self.gateway is not None:
            self.gateway.reopen_logs("supervisor", announce=False)

    def shut_down(self) -> None:
        """Drain and exit (SIGTERM, or the supervisor is gone); a second request changes nothing."""
        from twisted.internet.error import ReactorNotRunning

        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass


def _read_commands(worker: Worker) -> None:
    """Thread: stdin lines -> the reactor (the stdin pipe is ours alone; stdout is shared, left blocking)."""
    buf = b""
    while True:
        try:
            data = os.read(0, 4096)  # unbuffered: nothing to lock at interpreter exit
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            worker.reactor.callFromThread(worker.command, line.decode("utf-8", "replace"))
    worker.reactor.callFromThread(worker.shut_down)


def _observer(slot: int, log_format: str = "text"):
    """Log lines to stdout (the supervisor's): JSON lines with a ``worker`` field under ``log_format = json``."""
    if log_format == "json":
        from txgate.runtime.logs import json_observer

        out_json = json_observer(sys.stdout)
        return lambda event: out_json(dict(event, worker=slot))
    from twisted.logger import textFileLogObserver

    out = textFileLogObserver(sys.stdout)
    name = f"worker {slot}"

    def observe(event):
        if event.get("log_system", "-") == "-":
            level = event.get("log_level")
            where = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
            event = dict(event, log_system=f"{where} {name}")
        out(event)

    return observe


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="txgate worker")
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--listen", action="append", default=[], help="FD:FAMILY:NAME of an inherited listening socket")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from txgate.runtime.workers import set_title

    set_title(f"txgate: worker {args.slot}")
    listen = {}
    for spec in args.listen:
        fd, family, name = spec.split(":", 2)
        listen[name] = (int(fd), int(family))
    from twisted.internet import reactor
    from twisted.logger import Logger, globalLogBeginner

    worker = Worker(args.slot, args.config, listen, reactor)
    try:
        log_format = worker.load().gateway.log_format
    except Exception:  # reported by start() below
        log_format = "text"
    globalLogBeginner.beginLoggingTo([_observer(args.slot, log_format)], redirectStandardIO=False)
    log = Logger()
    failed = []

    def start():
        from txgate.config import ConfigError

        try:
            worker.start()
        except ConfigError as e:
            log.error("worker {slot} cannot start: {error}", slot=args.slot, error=str(e))
            failed.append(1)
            reactor.stop()
        except Exception:
            log.failure("worker {slot} cannot start", slot=args.slot)
            failed.append(1)
            reactor.stop()
        else:
            for fd, _family in listen.values():
                os.close(fd)  # adopted ports hold their own copies
            threading.Thread(target=_read_commands, args=(worker,), daemon=True).start()

    def on_term(signum, frame):
        # Our own handler, kept after the reactor stops: a process manager that signals the whole
        # group (systemd's control-group kill) and the supervisor's own SIGTERM both arrive.
        reactor.callFromThread(worker.shut_down)

    signal.signal(signal.SIGTERM, on_term)
    # Reloads come from the supervisor (validated once); a SIGUSR1 sent to the whole process group
    # (or to this worker) reopens the access log instead of killing the worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(worker.reopen_logs))
    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
