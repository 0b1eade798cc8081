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


def server_handshake_us(ck, n: int = 400, warmup: int = 20) -> dict:
    """Median and mean server-side CPU microseconds of ``n`` full TLS handshakes with ``ck``."""
    from OpenSSL import SSL

    from txgate.tls.server import ServerTLS

    server = ServerTLS(default=ck)
    # The client: the system OpenSSL through the ssl module, as openssl s_time (same library, same
    # default groups and key shares), no verification, no ALPN, no session.
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    clock = time.thread_time
    samples = []
    version = None
    for i in range(n + warmup):
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
        version = s.get_protocol_version_name()
        t0 = clock()
        del s
        spent += clock() - t0
        if i >= warmup:
            samples.append(spent * 1e6)
    samples.sort()
    return {"median_us": round(samples[len(samples) // 2], 1), "mean_us": round(sum(samples) / len(samples), 1),
            "handshakes": n, "version": version, "key": type(ck.key).__name__}
