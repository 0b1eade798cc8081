"""The gateway under test: a real ``twistd -n txgate`` process with a generated gw.ini."""
from __future__ import annotations

import os
import re
import signal
import sys
import time

from . import procs as _procs

RUN = "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()"

# Used with --profile: cProfile switched on by SIGUSR1 and dumped by SIGUSR2, so that each profile
# covers one measured scenario only (not start-up, the local CA or the warm-up).
PROFILE_LAUNCHER = '''\
import cProfile, os, signal, sys
_prof = None
_n = [0]
_dir = os.environ["TXGATE_BENCH_PROFILE_DIR"]

def _start(signum, frame):
    global _prof
    _prof = cProfile.Profile()
    _prof.enable()

def _stop(signum, frame):
    global _prof
    if _prof is not None:
        _prof.disable()
        _n[0] += 1
        path = os.path.join(_dir, "profile-%d.prof" % _n[0])
        _prof.dump_stats(path + ".tmp")
        os.rename(path + ".tmp", path)
        _prof = None

signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
run()
'''

GW_INI = """\
[gateway]
state_dir = {state}
access_log = {access_log}
{h2_engine}
[admin]
bind = off

[listener:main]
bind = 127.0.0.1:0
certificate = local
{listener_extra}
[api:bench]
path = /
upstream = http://127.0.0.1:{upstream_port}
"""

LISTENING = re.compile(r"listener main on https://127\.0\.0\.1:(\d+) ")
LISTENING_MTLS = re.compile(r"listener mtls on https://127\.0\.0\.1:(\d+) ")

# With a client CA (scenario 3m): a second listener that requires client certificates it issued.
MTLS_LISTENER = """\
[listener:mtls]
bind = 127.0.0.1:0
certificate = local
client_auth = require
client_ca = {client_ca}

"""


class Gateway:
    def __init__(self, proc, port: int, tmp: str, profile_dir) -> None:
        self.proc = proc
        self.out_path = os.path.join(tmp, "gateway.out")
        self.state_dir = os.path.join(tmp, "state")
        self.pid = proc.pid
        self.port = port
        self.tmp = tmp
        self.profile_dir = profile_dir
        self._profiles = 0
        self.mtls_port: int | None = None  # the listener requiring client certificates (scenario 3m)

    def cpu_times(self) -> tuple[float, float]:
        """(utime, stime) of the gateway: the process and, with workers, every worker process."""
        user, system = _procs.cpu_times(self.pid)
        for child in _procs.children(self.pid):
            try:
                u, s = _procs.cpu_times(child)
            except OSError:  # exited meanwhile
                continue
            user, system = user + u, system + s
        return user, system

    def cpu(self) -> float:
        """utime + stime of the gateway: the process and, with workers, every worker process."""
        return sum(self.cpu_times())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        with open(self.out_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    # --profile
    def profile_start(self) -> None:
        if self.profile_dir:
            os.kill(self.pid, signal.SIGUSR1)

    def profile_stop(self):
        """Dump the profile of the window since profile_start(); returns its path."""
        if not self.profile_dir:
            return None
        self._profiles += 1
        path = os.path.join(self.profile_dir, f"profile-{self._profiles}.prof")
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            if time.monotonic() > deadline or not self.alive():
                return None
            time.sleep(0.05)
        return path


def _preexec(cpu, nofile):
    """Pin the gateway to ``cpu`` and raise its soft RLIMIT_NOFILE to ``nofile`` (capped by the hard one)."""
    pin = _procs.pin(cpu)
    if not nofile:
        return pin

    def run():
        _procs.raise_nofile(nofile)
        if pin is not None:
            pin()

    return run


def start(pm: _procs.Procs, tmp: str, repo: str, upstream_port: int, cpu, access_log: bool = False,
          profile: bool = False, timeout: float = 30.0, workers: int = 1, listener: dict | None = None,
          nofile: int = 0, name: str = "", h2_engine: str = "auto", wrap=(), client_ca: str | None = None) -> Gateway:
    """Start ``twistd -n txgate`` from ``repo``; ``listener``: extra [listener:main] keys (e.g. idle_timeout);
    ``wrap``: a command to run the Python interpreter under (e.g. valgrind's); ``client_ca``: also a
    listener ``mtls`` requiring client certificates issued by that CA (``Gateway.mtls_port``)."""
    d = os.path.join(tmp, name or f"gateway-{workers}w" + ("" if h2_engine == "auto" else f"-{h2_engine}"))
    os.makedirs(d)
    ini = os.path.join(d, "gw.ini")
    with open(ini, "w") as f:
        text = GW_INI.format(state=os.path.join(d, "state"), upstream_port=upstream_port,
                             access_log=os.path.join(d, "access.log") if access_log else "off",
                             h2_engine="" if h2_engine == "auto" else f"h2_engine = {h2_engine}\n",
                             listener_extra="".join(f"{k} = {v}\n" for k, v in (listener or {}).items()))
        if client_ca:
            text = text.replace("[api:bench]", MTLS_LISTENER.format(client_ca=client_ca) + "[api:bench]")
        # All load comes from 127.0.0.1: with client-address affinity it would all go to one worker.
        # Keys at their defaults (one worker, h2_engine auto) are left out, so that older trees that
        # do not know them (e.g. ad85f1a, before workers) run under this harness too (--repo).
        if workers != 1:
            text = text.replace("[gateway]\n", f"[gateway]\nworkers = {workers}\nworker_affinity = none\n", 1)
        f.write(text)
    env = dict(os.environ, PYTHONPATH=repo + (os.pathsep + os.environ["PYTHONPATH"]
                                              if os.environ.get("PYTHONPATH") else ""))
    profile_dir = None
    if profile:
        profile_dir = os.path.join(d, "profiles")
        os.makedirs(profile_dir)
        launcher = os.path.join(d, "launch_profiled.py")
        with open(launcher, "w") as f:
            f.write(PROFILE_LAUNCHER)
        env["TXGATE_BENCH_PROFILE_DIR"] = profile_dir
        head = [sys.executable, launcher]
    else:
        head = [sys.executable, "-c", RUN]
    args = list(wrap) + head + ["-n", "--pidfile=", "txgate", "--config", ini]
    out_path = os.path.join(d, "gateway.out")
    out = open(out_path, "wb")
    p = pm.popen(args, cwd=d, env=env, stdout=out, stderr=out, preexec_fn=_preexec(cpu, nofile))
    deadline = time.monotonic() + timeout
    while True:
        with open(out_path, errors="replace") as f:
            text = f.read()
        m = LISTENING.search(text)
        m2 = LISTENING_MTLS.search(text) if client_ca else None
        if m and (m2 or not client_ca):
            break
        if p.poll() is not None or time.monotonic() > deadline:
            with open(out_path, errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
            raise RuntimeError(f"the gateway did not start (status {p.poll()}):\n{tail}")
        time.sleep(0.05)
    port = int(m.group(1))
    _procs.wait_port(port, proc=p)
    gw = Gateway(p, port, d, profile_dir)
    if m2:
        gw.mtls_port = int(m2.group(1))
    return gw
