"""A real ACME server for tests: Debian's pebble (+ pebble-challtestsrv answering every name with 127.0.0.1).

``Pebble(workdir, http_port=..., tls_port=...)`` writes its config and its own TLS certificate (made
here), starts both processes on free ports with PEBBLE_VA_NOSLEEP=1 and PEBBLE_AUTHZREUSE=0, and
points the validator's httpPort/tlsPort at the ports given (the gateway's test listeners).
"""
from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

from certs_helpers import make_ca, make_leaf, write_ca, write_pair
from conftest import free_port, poll


def pebble_available() -> bool:
    return bool(shutil.which("pebble") and shutil.which("pebble-challtestsrv"))


class Pebble:
    """pebble + pebble-challtestsrv, stopped by ``stop()``."""

    def __init__(self, workdir: Path, *, http_port: int, tls_port: int, validity: int | None = None,
                 env: dict | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = make_ca("pebble listener test CA")
        self.ca_bundle = write_ca(self.workdir, "pebble-listener-ca", ca)
        cert, key = write_pair(self.workdir, "pebble-listener", make_leaf(ca, ["localhost", "127.0.0.1"]))
        self.port, self.mgmt_port, self.dns_port, self.cts_mgmt = (free_port() for _ in range(4))
        conf = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": cert, "privateKey": key, "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}
        if validity is not None:
            conf["pebble"]["certificateValidityPeriod"] = validity
        (self.workdir / "pebble.json").write_text(json.dumps(conf))
        self.env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0", **(env or {})}
        self.procs: list[subprocess.Popen] = []

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        log = open(self.workdir / "challtestsrv.log", "wb")
        self.procs.append(subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{self.cts_mgmt}", "-defaultIPv6", ""],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        log = open(self.workdir / "pebble.log", "wb")
        self.procs.append(subprocess.Popen(
            ["pebble", "-config", str(self.workdir / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env))
        poll(self._up, 20, 0.05, "pebble's directory")
        return self

    def _get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cafile=self.ca_bundle)
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            return r.read()

    def _up(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise AssertionError(f"pebble exited: {self.log()}")
        try:
            self._get(self.directory)
            return True
        except OSError:
            return False

    def root_pem(self) -> bytes:
        """The root that signs pebble's certificates (regenerated at each start)."""
        return self._get(f"https://127.0.0.1:{self.mgmt_port}/roots/0")

    def log(self) -> str:
        p = self.workdir / "pebble.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
