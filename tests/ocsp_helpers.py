"""OCSP test helpers: certificates with an AIA responder URL, responses built with cryptography, and a real
`openssl ocsp` responder process on a free port."""
from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from txgate.tls.certs import CertifiedKey

NOW = datetime.now(timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(issuer: CertifiedKey | None, cn: str, *, ca: bool = False, names=(), ocsp_url: str | None = None,
              must_staple: bool = False, eku=None, client: bool = False) -> CertifiedKey:
    """A certificate signed by ``issuer`` (self-signed without), with an AIA OCSP URL when given."""
    key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(_name(cn))
         .issuer_name(issuer.leaf.subject if issuer else _name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=90))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        usages = eku if eku is not None else [ExtendedKeyUsageOID.CLIENT_AUTH if client
                                               else ExtendedKeyUsageOID.SERVER_AUTH]
        if usages:
            b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if names:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    if ocsp_url:
        b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
    if must_staple:
        b = b.add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
    cert = b.sign(issuer.key if issuer else key, hashes.SHA256())
    chain = (cert,) + (issuer.chain if issuer and not ca else ((issuer.leaf,) if issuer else ()))
    return CertifiedKey(chain=chain, key=key)


def build_response(cert, issuer: CertifiedKey, *, signer: CertifiedKey | None = None, status="good",
                   this_update=None, next_update=timedelta(days=1), serial=None, include_signer=True) -> bytes:
    """A DER OCSP response for ``cert`` signed by ``signer`` (default: the issuer)."""
    signer = signer or issuer
    this_update = this_update or NOW - timedelta(minutes=1)
    st = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
          "unknown": ocsp.OCSPCertStatus.UNKNOWN}[status]
    target = cert
    if serial is not None:  # answer for another serial of the same issuer
        target = make_cert(issuer, "other").leaf
    b = ocsp.OCSPResponseBuilder().add_response(
        cert=target, issuer=issuer.leaf, algorithm=hashes.SHA1(), cert_status=st, this_update=this_update,
        next_update=this_update + next_update if next_update is not None else None,
        revocation_time=NOW - timedelta(days=1) if status == "revoked" else None, revocation_reason=None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, signer.leaf)
    if include_signer and signer is not issuer:
        b = b.certificates([signer.leaf])
    return b.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def write_pem(path: Path, *certs) -> str:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return str(path)


def write_key(path: Path, ck: CertifiedKey) -> str:
    path.write_bytes(ck.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return str(path)


def index_line(cert: x509.Certificate, revoked: bool = False) -> str:
    """One line of an `openssl ca` index.txt for ``cert``."""
    exp = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    serial = f"{cert.serial_number:X}"
    serial = "0" * (len(serial) % 2) + serial
    rev = (NOW - timedelta(hours=1)).strftime("%y%m%d%H%M%SZ") if revoked else ""
    subject = "/" + cert.subject.rfc4514_string().replace(",", "/")
    return "\t".join(["R" if revoked else "V", exp, rev, serial, "unknown", subject]) + "\n"


class Responder:
    """`openssl ocsp` serving an index on 127.0.0.1:port, signing with ``signer`` (issuer or delegated)."""

    def __init__(self, workdir: Path, issuer: CertifiedKey, signer: CertifiedKey, port: int) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.index = self.dir / "index.txt"
        self.index.write_text("")
        self.ca = write_pem(self.dir / "ca.pem", issuer.leaf)
        self.rsigner = write_pem(self.dir / "rsigner.pem", signer.leaf)
        self.rkey = write_key(self.dir / "rkey.pem", signer)
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "responder.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_index(self, good=(), revoked=()) -> None:
        self.index.write_text("".join([index_line(c) for c in good] + [index_line(c, True) for c in revoked]))

    def start(self) -> Responder:
        self.log.write_text("")
        self.proc = subprocess.Popen(
            ["openssl", "ocsp", "-index", str(self.index), "-port", str(self.port), "-CA", self.ca,
             "-rsigner", self.rsigner, "-rkey", self.rkey, "-ndays", "1"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # Wait for its "waiting for OCSP client connections" line: a probe connection would wedge it
        # (it serves one connection at a time and reads the probe's request forever).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"openssl ocsp exited: {self.log.read_text()}")
            if "waiting for OCSP client connections" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.02)
        raise AssertionError("openssl ocsp did not listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
