"""Peers: the same job done by a tool users know, measured beside txgate.

nginx as a TLS-terminating reverse proxy (one worker, pinned to the gateway's CPU): HTTPS with HTTP/1.1
and HTTP/2 (ALPN), an ECDSA P-256 certificate like txgate's local one, TLS 1.2-1.3, keep-alive
connections to the same backend (``proxy_http_version 1.1`` with an upstream ``keepalive`` pool), no
access log, TLS session tickets on and no session cache (as txgate's listeners by default); with a client
CA, a second server that requires client certificates (scenario 3m). It offers the same surface the scenarios use (``port``, ``cpu()``, ``alive()``, no profile).
"""
from __future__ import annotations

import datetime
import os

from . import procs as _procs
from .backend import NGINX_HEAD

NGINX_PROXY_CONF = NGINX_HEAD + """\
    http2_max_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets on;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
    server {{
        listen 127.0.0.1:{mtls_port} ssl backlog=4096;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets on;
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


class Peer:
    """A running peer proxy, measured like the gateway (its worker process's CPU)."""

    def __init__(self, name: str, proc, port: int, tmp: str, mtls_port: int | None = None) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.mtls_port = mtls_port  # the server that requires a client certificate (scenario 3m)
        self.tmp = tmp

    def cpu_times(self) -> tuple[float, float]:
        """(utime, stime) of the peer's worker process(es)."""
        times = [_procs.cpu_times(k) for k in _procs.children(self.pid) or [self.pid]]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    def cpu(self) -> float:
        """utime + stime of the peer's worker process(es)."""
        return sum(self.cpu_times())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        with open(os.path.join(self.tmp, "nginx-error.log"), errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def profile_start(self) -> None:
        pass

    def profile_stop(self):
        return None


def write_certificate(d: str) -> None:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost (cert.pem, key.pem in ``d``)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    with open(os.path.join(d, "cert.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(os.path.join(d, "key.pem"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def write_client_pki(d: str) -> tuple[str, str, str]:
    """A CA and a client certificate it issued (ECDSA P-256) in ``d``: (ca.pem, client.pem, client-key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench client CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench client")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(d, n) for n in ("ca.pem", "client.pem", "client-key.pem"))
    for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM),
                                  leaf.public_bytes(serialization.Encoding.PEM),
                                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        with open(path, "wb") as f:
            f.write(data)
    return paths


def start_nginx_proxy(pm: _procs.Procs, tmp: str, upstream_port: int, cpu, client_ca: str | None = None) -> Peer:
    """nginx terminating TLS in front of the backend on ``upstream_port``; raises if nginx is missing.

    ``client_ca``: also a server requiring client certificates issued by it (``Peer.mtls_port``)."""
    from .backend import nginx_path

    nginx = nginx_path()
    if not nginx:
        raise RuntimeError("the nginx peer needs nginx (apt-get install nginx-light)")
    d = os.path.join(tmp, "nginx-proxy")
    os.makedirs(d)
    write_certificate(d)
    port = _procs.free_port()
    mtls_port = _procs.free_port() if client_ca else None
    text = NGINX_PROXY_CONF.format(user="user root;\n" if os.geteuid() == 0 else "", dir=d, port=port,
                                   upstream_port=upstream_port, mtls_port=mtls_port, client_ca=client_ca)
    if not client_ca:  # drop the mTLS server
        text = text[:text.index("    server {", text.index("ssl_session_tickets"))] + "}\n"
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(text)
    out = open(os.path.join(d, "nginx.out"), "wb")
    p = pm.popen([nginx, "-c", conf, "-p", d], stdout=out, stderr=out, preexec_fn=_procs.pin(cpu))
    _procs.wait_port(port, proc=p)
    if mtls_port:
        _procs.wait_port(mtls_port, proc=p)
    return Peer("nginx proxy", p, port, d, mtls_port)
