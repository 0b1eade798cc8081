"""`txgate pin`: agrees with the openssl pipeline, reads certs/keys/CSRs, and reads a live server's chain."""
from __future__ import annotations

import base64
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certs_helpers import make_ca, make_leaf, write_pair
from conftest import ADMIN_EPHEMERAL, txgate_cli


def openssl_pin(cert_path: str) -> str:
    pub = subprocess.run(["openssl", "x509", "-in", cert_path, "-pubkey", "-noout"], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True, check=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=der, capture_output=True, check=True).stdout
    return "sha256/" + base64.b64encode(digest).decode()


def test_pin_of_certificates_matches_openssl(tmp_path):
    for key_type in ("ec", "rsa"):
        ck = make_leaf(make_ca(key_type=key_type), ["pin.example.com"], key_type=key_type)
        cert, _key = write_pair(tmp_path, f"leaf-{key_type}", ck)
        single = tmp_path / f"single-{key_type}.pem"
        single.write_bytes(ck.leaf.public_bytes(serialization.Encoding.PEM))
        r = txgate_cli("pin", str(single))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == openssl_pin(str(single))
        assert "subject=pin.example.com" in r.stdout


def test_pin_of_public_key_and_csr_equals_the_certificate_pin(tmp_path):
    ck = make_leaf(make_ca(), ["csr.example.com"])
    cert_pem = tmp_path / "c.pem"
    cert_pem.write_bytes(ck.leaf.public_bytes(serialization.Encoding.PEM))
    pub = tmp_path / "pub.pem"
    pub.write_bytes(ck.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    csr = tmp_path / "req.csr"
    csr.write_bytes(
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr.example.com")]))
        .sign(ck.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    outs = [txgate_cli("pin", str(p)) for p in (cert_pem, pub, csr)]
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    pins = {o.stdout.split()[0] for o in outs}
    assert pins == {openssl_pin(str(cert_pem))}


def test_pin_of_a_bad_file_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not pem at all\n")
    r = txgate_cli("pin", str(bad))
    assert r.returncode == 1
    assert r.stderr.strip() == f"txgate pin: {bad}: no PEM block (expected a certificate, public key or CSR)"
    assert "Traceback" not in r.stderr


def test_pin_connect_prints_every_presented_certificate(gateway_factory):
    gw = gateway_factory(ADMIN_EPHEMERAL + "[gateway]\nstate_dir = ./state\n[listener:main]\nbind = 127.0.0.1:0\n[api:e]\nupstream = builtin:echo\n")
    r = txgate_cli("pin", "--connect", f"127.0.0.1:{gw.port}", "--servername", "localhost")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2  # leaf + local CA
    assert "depth=0 subject=localhost" in lines[0]
    ca_pin = txgate_cli("pin", str(gw.workdir / "state" / "ca.pem")).stdout.split()[0]
    assert lines[1].split()[0] == ca_pin == openssl_pin(str(gw.workdir / "state" / "ca.pem"))


def test_pin_connect_refused_is_one_line(tmp_path):
    from conftest import free_port

    r = txgate_cli("pin", "--connect", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "ConnectionRefusedError" in r.stderr and "Traceback" not in r.stderr
