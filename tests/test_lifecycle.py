"""`txgate ca|cert|csr|selfsigned`: real files checked with real openssl, and one-line errors with exit 1."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import gateway_env, txgate_cli
from txgate import fileio
from txgate.lifecycle import LifecycleError, build_csr, generate_key, init_ca, issue_certificate, load_ca, sign_csr

NOW = datetime.now(timezone.utc)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc


def openssl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr == f"txgate: {expected}\n"
    assert "Traceback" not in proc.stderr + proc.stdout


def load_chain(path) -> list[x509.Certificate]:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


def gw_check(tmp_path, cert: str, key: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "gw.ini"
    cfg.write_text(f"[gateway]\nstate_dir = {tmp_path}/state\n[listener:main]\nbind = 127.0.0.1:0\n"
                   f"certificate = {cert} {key}\n")
    return txgate_cli("check", "--config", str(cfg), cwd=tmp_path)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lifecycle") / "ca"
    ok(txgate_cli("ca", "init", str(d), "--name", "Lifecycle Test CA"))
    return d


# --- ca init ------------------------------------------------------------------------------------


def test_ca_init_writes_a_ca_with_a_0600_key_in_a_0700_dir(tmp_path):
    d = tmp_path / "ca"
    started = datetime.now(timezone.utc)  # this test's own clock: the module's NOW is from collection time
    proc = ok(txgate_cli("ca", "init", str(d), "--name", "Acme Private CA", "--days", "30"))
    assert f"{d}/ca-key.pem (0600)" in proc.stdout
    assert mode(d) == 0o700 and mode(d / "ca-key.pem") == 0o600 and mode(d / "ca.pem") == 0o644
    cert = load_chain(d / "ca.pem")[0]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Acme Private CA"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert timedelta(days=29) < cert.not_valid_after_utc - started <= timedelta(days=30, minutes=5)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    # A root verifies against itself.
    assert openssl("verify", "-CAfile", str(d / "ca.pem"), str(d / "ca.pem")).returncode == 0


def test_ca_key_is_0600_even_under_a_permissive_umask(tmp_path):
    d = tmp_path / "ca"
    proc = subprocess.run([sys.executable, "-m", "txgate.cli", "ca", "init", str(d)], env=gateway_env(),
                          capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.umask(0))
    ok(proc)
    assert mode(d / "ca-key.pem") == 0o600 and mode(d) == 0o700


def test_private_files_are_created_0600_exclusively_never_chmod_after(tmp_path, monkeypatch):
    calls = []
    real_open = os.open

    def spy(path, flags, mode=0o777, **kw):
        calls.append((path, flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(fileio.os, "open", spy)
    fileio.write_private_file(str(tmp_path / "k.pem"), b"secret", 0o600)
    (path, flags, created_mode), = calls
    assert created_mode == 0o600 and flags & os.O_EXCL and flags & os.O_CREAT
    assert mode(tmp_path / "k.pem") == 0o600
    with pytest.raises(FileExistsError):
        fileio.write_private_file(str(tmp_path / "k.pem"), b"other", exclusive=True)
    assert (tmp_path / "k.pem").read_bytes() == b"secret"
    assert os.listdir(tmp_path) == ["k.pem"]


def test_ca_init_refuses_to_overwrite_an_existing_ca(tmp_path):
    d = tmp_path / "ca"
    ok(txgate_cli("ca", "init", str(d)))
    before = (d / "ca.pem").read_bytes(), (d / "ca-key.pem").read_bytes()
    assert_one_line_error(
        txgate_cli("ca", "init", str(d)),
        f"{d}/ca.pem: already exists; refusing to overwrite a CA (remove it or choose another directory)",
    )
    (d / "ca.pem").unlink()  # even half a CA is never replaced
    assert_one_line_error(
        txgate_cli("ca", "init", str(d)),
        f"{d}/ca-key.pem: already exists; refusing to overwrite a CA (remove it or choose another directory)",
    )
    assert (d / "ca-key.pem").read_bytes() == before[1]


def test_rsa_ca_issues_verifiable_rsa_signed_leaves(tmp_path):
    d = tmp_path / "rca"
    ok(txgate_cli("ca", "init", str(d), "--key-type", "rsa"))
    show = ok(txgate_cli("cert", "show", str(d / "ca.pem"))).stdout
    assert "RSA 3072 bits" in show
    ok(txgate_cli("cert", "issue", "--ca", str(d), "--dns", "r.example", "--out", str(tmp_path / "r")))
    assert openssl("verify", "-CAfile", str(d / "ca.pem"), str(tmp_path / "r.pem")).stdout.strip().endswith("OK")


# --- cert issue -----------------------------------------------------------------------------------


def test_cert_issue_server_certificate_verifies_and_works_in_gw_ini(ca_dir, tmp_path):
    out = tmp_path / "api"
    started = datetime.now(timezone.utc)
    proc = ok(txgate_cli("cert", "issue", "--ca", str(ca_dir), "--dns", "api.example.com", "*.api.example.com",
                         "--ip", "127.0.0.1", "--ip", "::1", "--days", "10", "--out", str(out)))
    assert "api.example.com, *.api.example.com, 127.0.0.1, ::1" in proc.stdout
    cert_path, key_path = f"{out}.pem", f"{out}-key.pem"
    assert mode(key_path) == 0o600
    v = openssl("verify", "-CAfile", str(ca_dir / "ca.pem"), "-purpose", "sslserver", cert_path)
    assert v.returncode == 0 and v.stdout.strip() == f"{cert_path}: OK", v.stderr
    chain = load_chain(cert_path)
    assert len(chain) == 2 and chain[1] == load_chain(ca_dir / "ca.pem")[0]
    leaf = chain[0]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.not_valid_after_utc - started <= timedelta(days=10, minutes=5)
    check = gw_check(tmp_path, cert_path, key_path)
    assert check.returncode == 0 and check.stdout.rstrip().endswith(": OK (1 listeners, 0 APIs)"), check.stderr


def test_cert_issue_client_certificate_has_client_auth(ca_dir, tmp_path):
    out = tmp_path / "alice"
    ok(txgate_cli("cert", "issue", "--ca", str(ca_dir), "--client", "--cn", "alice", "--out", str(out)))
    assert openssl("verify", "-CAfile", str(ca_dir / "ca.pem"), "-purpose", "sslclient", f"{out}.pem").returncode == 0
    assert openssl("verify", "-CAfile", str(ca_dir / "ca.pem"), "-purpose", "sslserver", f"{out}.pem").returncode != 0
    leaf = load_chain(f"{out}.pem")[0]
    assert leaf.subject.rfc4514_string() == "CN=alice"


# --- csr and cert sign ----------------------------------------------------------------------------


def test_csr_with_a_new_key_then_sign_copies_the_sans(ca_dir, tmp_path):
    out = tmp_path / "svc"
    proc = ok(txgate_cli("csr", "--dns", "svc.example", "www.svc.example", "--ip", "10.1.2.3", "--out", str(out)))
    assert proc.stdout.strip() == f"wrote {out}.csr and {out}-key.pem (0600)"
    assert mode(f"{out}-key.pem") == 0o600
    v = openssl("req", "-verify", "-noout", "-in", f"{out}.csr")
    assert v.returncode == 0 and "verify OK" in (v.stdout + v.stderr)
    ok(txgate_cli("cert", "sign", "--ca", str(ca_dir), f"{out}.csr", "--out", str(tmp_path / "svc-signed.pem")))
    signed = str(tmp_path / "svc-signed.pem")
    assert openssl("verify", "-CAfile", str(ca_dir / "ca.pem"), signed).returncode == 0
    leaf = load_chain(signed)[0]
    assert sorted(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)) == ["svc.example", "www.svc.example"]
    assert gw_check(tmp_path, signed, f"{out}-key.pem").returncode == 0


def test_csr_for_an_existing_key_writes_no_key(tmp_path):
    key_path = tmp_path / "existing-key.pem"
    key = generate_key("ec")
    fileio.write_private_file(str(key_path), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    out = tmp_path / "again"
    proc = ok(txgate_cli("csr", "--dns", "again.example", "--key", str(key_path), "--out", str(out)))
    assert proc.stdout.strip() == f"wrote {out}.csr for the key {key_path}"
    assert not os.path.exists(f"{out}-key.pem")
    assert openssl("req", "-verify", "-noout", "-in", f"{out}.csr").returncode == 0
    with open(f"{out}.csr", "rb") as f:
        csr = x509.load_pem_x509_csr(f.read())
    assert csr.public_key() == key.public_key()


def test_cert_sign_never_issues_a_ca_even_when_the_csr_asks(ca_dir, tmp_path):
    key = tmp_path / "evil-key.pem"
    csr = tmp_path / "evil.csr"
    proc = openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
                   "-out", str(csr), "-subj", "/CN=evil.example", "-addext", "subjectAltName=DNS:evil.example",
                   "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    assert proc.returncode == 0, proc.stderr
    ok(txgate_cli("cert", "sign", "--ca", str(ca_dir), str(csr), "--out", str(tmp_path / "evil.pem")))
    leaf = load_chain(tmp_path / "evil.pem")[0]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False
    assert openssl("verify", "-CAfile", str(ca_dir / "ca.pem"), str(tmp_path / "evil.pem")).returncode == 0


# --- selfsigned and show ---------------------------------------------------------------------------


def test_selfsigned_verifies_against_itself_and_works_in_gw_ini(tmp_path):
    out = tmp_path / "self"
    ok(txgate_cli("selfsigned", "--dns", "self.example", "--ip", "127.0.0.1", "--out", str(out)))
    assert mode(f"{out}-key.pem") == 0o600
    assert openssl("verify", "-CAfile", f"{out}.pem", f"{out}.pem").returncode == 0
    cert = load_chain(f"{out}.pem")[0]
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert gw_check(tmp_path, f"{out}.pem", f"{out}-key.pem").returncode == 0


def test_cert_show_prints_names_validity_key_fingerprint_and_pin(ca_dir, tmp_path):
    out = tmp_path / "shown"
    ok(txgate_cli("cert", "issue", "--ca", str(ca_dir), "--dns", "shown.example", "--ip", "192.0.2.7",
                  "--out", str(out)))
    text = ok(txgate_cli("cert", "show", f"{out}.pem")).stdout
    leaf = load_chain(f"{out}.pem")[0]
    fp = leaf.fingerprint(hashes.SHA256()).hex().upper()
    pin_line = ok(txgate_cli("pin", f"{out}.pem")).stdout.splitlines()[0]
    block = text.split("\n\n")[0]
    assert block.startswith("certificate 1 of 2 (leaf)\n")
    assert "subject:             CN=shown.example" in block
    assert "issuer:              CN=Lifecycle Test CA" in block
    assert "SANs:                shown.example, 192.0.2.7" in block
    assert "key:                 EC P-256 (256 bits)" in block
    assert "SHA-256 fingerprint: " + ":".join(fp[i:i + 2] for i in range(0, 64, 2)) in block
    assert f"SPKI pin:            {pin_line.split()[0]}" in block
    assert "not after:           " + leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ") in block
    # DER is accepted too.
    der = tmp_path / "leaf.der"
    der.write_bytes(leaf.public_bytes(serialization.Encoding.DER))
    assert "certificate 1 of 1\n" in ok(txgate_cli("cert", "show", str(der))).stdout


# --- one-line errors --------------------------------------------------------------------------------


def _tampered_csr(tmp_path) -> str:
    key = generate_key("ec")
    csr = build_csr(key, dns=["tamper.example"])
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    i = der.find(b"tamper.example")
    der[i] = ord("T")  # subject CN changes, the signature no longer covers it
    path = tmp_path / "tampered.csr"
    x509.load_der_x509_csr(bytes(der))  # still parses
    path.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\n"
                     + __import__("base64").encodebytes(bytes(der))
                     + b"-----END CERTIFICATE REQUEST-----\n")
    return str(path)


def test_errors_are_one_line_and_exit_1(ca_dir, tmp_path):
    missing = tmp_path / "missing.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    # A CA directory whose key is another CA's.
    wrong = tmp_path / "wrong"
    ok(txgate_cli("ca", "init", str(wrong)))
    other = tmp_path / "other"
    ok(txgate_cli("ca", "init", str(other)))
    os.replace(other / "ca-key.pem", wrong / "ca-key.pem")
    nokey = tmp_path / "nokey"
    ok(txgate_cli("ca", "init", str(nokey)))
    (nokey / "ca-key.pem").unlink()
    tampered = _tampered_csr(tmp_path)
    out = str(tmp_path / "out")
    cases = [
        (("cert", "show", str(missing)), f"{missing}: file not found"),
        (("cert", "show", str(tmp_path)), f"{tmp_path}: is a directory, not a file"),
        (("cert", "show", str(junk)), f"{junk}: not a certificate (PEM or DER)"),
        (("cert", "issue", "--ca", str(wrong), "--dns", "x.example", "--out", out),
         f"{wrong}/ca-key.pem: private key does not match the CA certificate {wrong}/ca.pem"),
        (("cert", "issue", "--ca", str(nokey), "--dns", "x.example", "--out", out),
         f"{nokey}/ca-key.pem: file not found (the CA private key)"),
        (("cert", "issue", "--ca", str(tmp_path / "nope"), "--dns", "x.example", "--out", out),
         f"{tmp_path}/nope: not a CA directory (no such directory; create one with 'txgate ca init')"),
        (("cert", "issue", "--ca", str(ca_dir), "--dns", "x.example", "--ip", "10.0.0.300", "--out", out),
         "invalid --ip '10.0.0.300': not an IP address"),
        (("cert", "issue", "--ca", str(ca_dir), "--dns", "bad name", "--out", out),
         "invalid --dns 'bad name': not a DNS name"),
        (("cert", "issue", "--ca", str(ca_dir), "--out", out), "give at least one --dns NAME or --ip ADDR"),
        (("selfsigned", "--ip", "nope", "--out", out), "invalid --ip 'nope': not an IP address"),
        (("csr", "--dns", "a.example", "--key", str(missing), "--out", out), f"{missing}: file not found"),
        (("csr", "--dns", "a.example", "--key", str(junk), "--out", out), f"{junk}: not a PEM private key"),
        (("cert", "sign", "--ca", str(ca_dir), tampered, "--out", out), f"{tampered}: the CSR signature does not verify"),
        (("cert", "sign", "--ca", str(ca_dir), str(junk), "--out", out),
         f"{junk}: not a certificate signing request (PEM or DER)"),
        (("cert", "sign", "--ca", str(ca_dir), str(missing), "--out", out), f"{missing}: file not found"),
        (("cert", "sign", "--ca", str(wrong), tampered, "--out", out),
         f"{wrong}/ca-key.pem: private key does not match the CA certificate {wrong}/ca.pem"),
        (("selfsigned", "--dns", "a.example", "--out", str(tmp_path / "no" / "dir" / "x")),
         f"{tmp_path}/no/dir/x-key.pem: cannot write: No such file or directory"),
    ]
    for args, expected in cases:
        assert_one_line_error(txgate_cli(*args), expected)
    assert not os.path.exists(out + ".pem") and not os.path.exists(out + "-key.pem")
    # openssl agrees (3.0 prints the failure but may still exit 0)
    assert "verify failure" in openssl("req", "-verify", "-noout", "-in", tampered).stderr


# --- library ------------------------------------------------------------------------------------------


def test_leaf_validity_is_capped_at_the_ca_expiry(tmp_path):
    ca = init_ca(str(tmp_path / "ca"), days=5, now=NOW)
    ck = issue_certificate(ca, dns=["a.example"], days=365, now=NOW)
    assert ck.leaf.not_valid_after_utc == ca.not_after


def test_load_ca_rejects_a_leaf_posing_as_a_ca(tmp_path, ca_dir):
    ck = issue_certificate(load_ca(str(ca_dir), now=NOW), dns=["a.example"], now=NOW)
    d = tmp_path / "fake"
    d.mkdir()
    (d / "ca.pem").write_bytes(ck.leaf.public_bytes(serialization.Encoding.PEM))
    fileio.write_private_file(str(d / "ca-key.pem"), ck.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(LifecycleError, match="not a CA certificate"):
        load_ca(str(d), now=NOW)


def test_sign_csr_refuses_a_csr_without_a_valid_signature(tmp_path, ca_dir):
    from txgate.lifecycle import load_csr

    with pytest.raises(LifecycleError, match="the CSR signature does not verify"):
        load_csr(open(_tampered_csr(tmp_path), "rb").read(), "x.csr")
    csr = build_csr(generate_key(), dns=["b.example"])
    cert = sign_csr(load_ca(str(ca_dir), now=NOW), csr, now=NOW)
    assert cert.public_key() == csr.public_key()
