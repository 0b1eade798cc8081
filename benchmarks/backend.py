"""The backend: nginx (one worker, a fixed small response) or a built-in asyncio server.

``python -m benchmarks.backend PORT`` runs the built-in one in the foreground.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import sys

from . import procs as _procs

BODY = b"hello\n"

# One worker, files in DIR, no access log, long keep-alive: the start of every nginx the harness runs.
NGINX_HEAD = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000;
    keepalive_timeout 120s;
"""

NGINX_CONF = NGINX_HEAD + """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "hello\\n";
        }}
    }}
}}
"""


class Backend:
    def __init__(self, kind: str, port: int, proc, pid_for_cpu) -> None:
        self.kind = kind
        self.port = port
        self.proc = proc
        self._pid_for_cpu = pid_for_cpu

    @property
    def worker_pid(self) -> int:
        """The process doing the work (nginx's worker, not its master)."""
        return self._pid_for_cpu()


def nginx_path() -> str | None:
    """The nginx binary (on PATH or Debian's /usr/sbin/nginx), or None."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def start(pm: _procs.Procs, tmp: str, kind: str, cpu) -> Backend:
    """kind: auto | nginx | builtin."""
    port = _procs.free_port()
    nginx = nginx_path()
    if kind == "nginx" and not nginx:
        raise RuntimeError("--backend nginx: nginx is not installed (apt-get install nginx-light)")
    if kind in ("auto", "nginx") and nginx:
        d = os.path.join(tmp, "nginx")
        os.makedirs(d)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(user="user root;\n" if os.geteuid() == 0 else "", dir=d, port=port))
        log = open(os.path.join(d, "nginx.out"), "wb")
        # -g 'daemon off;' as asked; the conf already says so, and nginx rejects a duplicate.
        p = pm.popen([nginx, "-c", conf, "-p", d], stdout=log, stderr=log, preexec_fn=_procs.pin(cpu))
        _procs.wait_port(port, proc=p)

        def worker():
            kids = _procs.children(p.pid)
            return kids[0] if kids else p.pid

        return Backend("nginx", port, p, worker)
    log = open(os.path.join(tmp, "backend.out"), "wb")
    p = pm.popen([sys.executable, "-m", "benchmarks.backend", str(port)], stdout=log, stderr=log,
                 preexec_fn=_procs.pin(cpu), cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _procs.wait_port(port, proc=p)
    return Backend("builtin", port, p, lambda: p.pid)


RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: keep-alive\r\n\r\n" % len(BODY)) + BODY
CLOSE_RESPONSE = RESPONSE.replace(b"keep-alive", b"close")


class _Fixed(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET/HEAD-style requests without bodies: one fixed answer per header block."""

    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        buf = self.buf + data
        out = []
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                break
            head, buf = buf[:i], buf[i + 4:]
            if b"\nconnection: close" in head.lower():
                out.append(CLOSE_RESPONSE)
                self.t.write(b"".join(out))
                self.t.close()
                return
            out.append(RESPONSE)
        self.buf = buf
        if out:
            self.t.write(b"".join(out))


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(_Fixed, "127.0.0.1", port, backlog=4096, reuse_address=True)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    try:
        import uvloop  # optional, faster

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_serve(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
