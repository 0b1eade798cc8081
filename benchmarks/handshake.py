"""OpenSSL's own cost of a server handshake for the gateway's certificate, measured in process.

A loop of full handshakes between a pyOpenSSL server ``Connection`` (a context built by txgate's
``ServerTLS`` from the gateway's own certificate and key: same options, groups, ALPN callback, session
tickets) and a client from the ``ssl`` module, i.e. the system OpenSSL as ``openssl s_time -new`` uses it
(same default groups and key shares; no verification, no ALPN, no session), joined by memory BIOs. Only the server side's calls are timed (``time.thread_time``): the
creation of its ``SSL`` object, ``do_handshake`` and the BIO reads and writes, i.e. what the gateway
cannot avoid per new connection. ``gateway CPU per connection - this`` is then the gateway's own
overhead per connection (Python, the kernel's TCP work, the proxied request), a figure that holds
across machines better than a rate does.
"""
from __future__ import annotations

import glob
import os
import ssl
import time
from datetime import datetime, timezone


def gateway_certificate(state_dir: str):
    """The CertifiedKey the gateway issued from its local CA under ``state_dir``."""
    from txgate.tls.certs import load_certified_key

    now = datetime.now(timezone.utc)
    for cert in sorted(glob.glob(os.path.join(state_dir, "local", "*.pem"))):
        if cert.endswith("-key.pem"):
            continue
        key = cert[: -len(".pem")] + "-key.pem"
        if os.path.exists(key):
            return load_certified_key(cert, key, now=now)
    raise RuntimeError(f"no local leaf certificate under {state_dir}/local")


def _client_context(alpn: str | None = None) -> ssl.SSLContext:
    # The system OpenSSL through the ssl module, as openssl s_time and the --idle clients use it (same
    # library, same default groups and key shares); no verification, no session.
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    if alpn:
        cctx.set_alpn_protocols([alpn])
    return cctx


def _handshake(server, cctx, clock):
    """One full handshake in memory: (server Connection, client SSLObject and BIOs, server CPU seconds)."""
    from OpenSSL import SSL

    t0 = clock()
    s = server.serverConnectionForTLS(None)
    s.set_accept_state()
    spent = clock() - t0
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = cctx.wrap_bio(c_in, c_out, server_side=False)
    s_done = c_done = False
    for _ in range(10):
        if not c_done:
            try:
                c.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        data = c_out.read()
        t0 = clock()
        if data:
            s.bio_write(data)
        if not s_done:
            try:
                s.do_handshake()
                s_done = True
            except SSL.WantReadError:
                pass
        try:
            out = s.bio_read(65536)
        except SSL.WantReadError:
            out = b""
        spent += clock() - t0
        if out:
            c_in.write(out)
        if s_done and c_done and not out:
            break
    if not (s_done and c_done):
        raise RuntimeError("the in-process handshake did not complete")
    return s, (c, c_in, c_out), spent


def server_handshake_us(ck, n: int = 400, warmup: int = 20) -> dict:
    """Median and mean server-side CPU microseconds of ``n`` full TLS handshakes with ``ck``."""
    from txgate.tls.server import ServerTLS

    server = ServerTLS(default=ck)
    cctx = _client_context()
    clock = time.thread_time
    samples = []
    version = None
    for i in range(n + warmup):
        s, _client, spent = _handshake(server, cctx, clock)
        version = s.get_protocol_version_name()
        t0 = clock()
        del s
        spent += clock() - t0
        if i >= warmup:
            samples.append(spent * 1e6)
    samples.sort()
    return {"median_us": round(samples[len(samples) // 2], 1), "mean_us": round(sum(samples) / len(samples), 1),
            "handshakes": n, "version": version, "key": type(ck.key).__name__}


def _malloc_in_use() -> int | None:
    """Bytes the C allocator has handed out (glibc mallinfo2), or None where it is not available."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


def server_connection_kib(ck, n: int = 2000, alpn: str = "http/1.1") -> float | None:
    """C heap (OpenSSL, pyOpenSSL's cffi objects) per established, idle server connection with ``ck``, in KiB.

    ``n`` full handshakes (with ALPN ``alpn``) and one small request/response each, the server
    connections kept: the OpenSSL part of the gateway's memory per idle connection."""
    import gc

    from txgate.tls.server import ServerTLS

    server = ServerTLS(default=ck)
    cctx = _client_context(alpn)
    clock = time.thread_time
    kept = []

    def one():
        s, (c, c_in, c_out), _ = _handshake(server, cctx, clock)
        c.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.bio_write(c_out.read())
        s.recv(65536)
        s.send(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")
        c_in.write(s.bio_read(65536))
        c.read(65536)
        return s

    for _ in range(50):
        one()
    gc.collect()
    before = _malloc_in_use()
    if before is None:
        return None
    for _ in range(n):
        kept.append(one())
    gc.collect()
    return round((_malloc_in_use() - before) / n / 1024, 2)
