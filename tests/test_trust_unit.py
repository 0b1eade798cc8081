"""Trust decisions in the handshake, in memory: key usage on both sides, CRL coverage, refusal reasons.

Certificates are built here with cryptography (key usage, name constraints, chains with an
intermediate that the client sends); the gateway runs in memory (txgate.testing).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from txgate.testing import MemoryGateway, TestPKI, gateway_ini
from txgate.tls.certs import CertifiedKey

NOW = datetime.now(timezone.utc)
ONLY_SIGN = dict(digital_signature=True)


def _ku(**on) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})


def _cert(subject: str, key, issuer: CertifiedKey | None, *, ca: bool, ku: x509.KeyUsage | None,
          eku=None, dns=(), constraints: x509.NameConstraints | None = None) -> CertifiedKey:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.leaf.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ku is not None:
        b = b.add_extension(ku, critical=True)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    if constraints is not None:
        b = b.add_extension(constraints, critical=True)
    if issuer is not None:
        ski = issuer.leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    signer = issuer.key if issuer else key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = b.sign(signer, algorithm)
    return CertifiedKey((cert,) + (issuer.chain if issuer and not issuer.leaf.issuer == issuer.leaf.subject else ()), key)


def ca(subject: str, issuer: CertifiedKey | None = None, constraints=None) -> CertifiedKey:
    return _cert(subject, ec.generate_private_key(ec.SECP256R1()), issuer, ca=True,
                 ku=_ku(key_cert_sign=True, crl_sign=True), constraints=constraints)


def leaf(subject: str, issuer: CertifiedKey, *, ku=_ku(**ONLY_SIGN), client=True, dns=(), key=None) -> CertifiedKey:
    eku = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    return _cert(subject, key or ec.generate_private_key(ec.SECP256R1()), issuer, ca=False, ku=ku, eku=eku,
                 dns=dns or ((subject,) if not client else ()))


def crl(issuer: CertifiedKey, revoked=(), next_update_days: int = 7) -> x509.CertificateRevocationList:
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.leaf.subject)
         .last_update(NOW - timedelta(days=1)).next_update(NOW + timedelta(days=next_update_days)))
    for c in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.leaf.serial_number)
                                      .revocation_date(NOW - timedelta(hours=1)).build())
    return b.sign(issuer.key, hashes.SHA256())


def pem(*certs: CertifiedKey) -> bytes:
    return b"".join(c.leaf.public_bytes(serialization.Encoding.PEM) for c in certs)


@implementer(IOpenSSLClientConnectionCreator)
class ClientWithChain:
    """A TLS client that sends its leaf and the intermediates after it (and trusts any server)."""

    def __init__(self, ck: CertifiedKey, max_tls: int = SSL.TLS1_3_VERSION) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_max_proto_version(max_tls)
        ctx.use_certificate(ck.leaf)
        for c in ck.chain[1:]:
            ctx.add_extra_chain_cert(c)
        ctx.use_privatekey(ck.key)
        ctx.set_alpn_protos([b"http/1.1"])
        self.ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol):
        conn = SSL.Connection(self.ctx, None)
        conn.set_connect_state()
        conn.set_tlsext_host_name(b"localhost")
        return conn


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    root = ca("trust root")
    inter = ca("trust intermediate", root)
    nc_root = ca("constrained root", constraints=x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None))
    files = {}
    for name, data in {
        "root.pem": pem(root), "nc-root.pem": pem(nc_root), "both.pem": pem(root, nc_root),
        "root.crl": crl(root).public_bytes(serialization.Encoding.PEM),
        "inter.crl": crl(inter).public_bytes(serialization.Encoding.PEM),
        "inter-expired.crl": crl(inter, next_update_days=-1).public_bytes(serialization.Encoding.PEM),
    }.items():
        (d / name).write_bytes(data)
        files[name] = str(d / name)
    return {"root": root, "inter": inter, "nc_root": nc_root, "files": files, "pki": TestPKI(d / "server")}


def gateway(world, listener: str, api: str = "mtls = require\n") -> MemoryGateway:
    pki = world["pki"]
    return MemoryGateway(gateway_ini(pki.issue("localhost"), f"[api:a]\npath = /\nupstream = builtin:echo\n{api}",
                                     listener=listener), pki=pki)


def upstream_gateway(world, url: str, ca_file: str) -> MemoryGateway:
    """A gateway whose API `a` proxies to url, trusting the CA in world's file ca_file."""
    pki = world["pki"]
    return MemoryGateway(gateway_ini(pki.issue("localhost"), f"[api:a]\npath = /\nupstream = {url}\n"
                                     f"upstream_ca = {world['files'][ca_file]}\n"), pki=pki)


def attempt(gw, ck: CertifiedKey, max_tls: int = SSL.TLS1_3_VERSION):
    """(status or None, the refusal log lines) of one request with this client certificate."""
    client = gw.client(creator=ClientWithChain(ck, max_tls))
    try:
        status = client.get("/x").status
    except ConnectionError:  # the handshake was refused
        status = None
    gw.flush()
    return status, gw.logs.matching(r"TLS handshake with .* (refused|failed)")


TLS_VERSIONS = {"tls1.3": SSL.TLS1_3_VERSION, "tls1.2": SSL.TLS1_2_VERSION}


# -- item: key usage must allow digitalSignature (client certificates) --------------------------------
BAD_USAGE = {
    "keyAgreement only": _ku(key_agreement=True),
    "keyEncipherment only": _ku(key_encipherment=True),
    "nonRepudiation only": _ku(content_commitment=True),
    "dataEncipherment and keyAgreement": _ku(data_encipherment=True, key_agreement=True),
}


@pytest.mark.parametrize("version", list(TLS_VERSIONS), ids=list(TLS_VERSIONS))
@pytest.mark.parametrize("usage", list(BAD_USAGE.values()), ids=list(BAD_USAGE))
def test_client_leaf_whose_key_usage_forbids_signatures_is_refused(world, usage, version):
    gw = gateway(world, f"client_auth = require\nclient_ca = {world['files']['root.pem']}\n")
    try:
        ck = leaf("ka-client", world["inter"], ku=usage)
        status, lines = attempt(gw, ck, TLS_VERSIONS[version])
        assert status is None
        assert len(lines) == 1 and "client_certificate_wrong_purpose" in lines[0]
        # keyAgreement-only passes OpenSSL's own "ssl client" purpose check: ours says why; the others
        # OpenSSL refuses first, in its words.
        assert ("digitalSignature" in lines[0] or "unsuitable certificate purpose" in lines[0]) and "depth 0" in lines[0]
        # The same leaf again: the gateway's parsed-leaf cache answers now, and refuses it the same way.
        status, again = attempt(gw, ck, TLS_VERSIONS[version])
        assert status is None and len(again) == 2
        assert "client_certificate_wrong_purpose" in again[1] and "depth 0" in again[1]
    finally:
        gw.stop()


def test_client_ed25519_leaf_without_digital_signature_is_refused(world):
    gw = gateway(world, f"client_auth = require\nclient_ca = {world['files']['root.pem']}\n")
    try:
        ck = leaf("ed-client", world["inter"], ku=_ku(content_commitment=True), key=ed25519.Ed25519PrivateKey.generate())
        status, lines = attempt(gw, ck)
        assert status is None and "client_certificate_wrong_purpose" in lines[0]
    finally:
        gw.stop()


@pytest.mark.parametrize("usage", [_ku(**ONLY_SIGN), _ku(digital_signature=True, key_agreement=True), None],
                         ids=["digitalSignature", "digitalSignature and keyAgreement", "no keyUsage extension"])
def test_client_leaf_that_may_sign_is_accepted(world, usage):
    gw = gateway(world, f"client_auth = require\nclient_ca = {world['files']['root.pem']}\n")
    try:
        ck = leaf("ok-client", world["inter"], ku=usage)
        for _ in range(2):  # the second time from the parsed-leaf cache
            status, lines = attempt(gw, ck)
            assert status == 200 and lines == []
    finally:
        gw.stop()


# -- item: key usage must allow digitalSignature (upstream certificates) ------------------------------
@pytest.mark.parametrize("tls_max", ["1.3", "1.2"])
@pytest.mark.parametrize("usage", list(BAD_USAGE.values()), ids=list(BAD_USAGE))
def test_upstream_leaf_whose_key_usage_forbids_signatures_is_refused(world, usage, tls_max):
    gw = upstream_gateway(world, "https://a.internal:8443", "root.pem")
    try:
        up = gw.upstream("https://a.internal:8443", tls_max=tls_max,
                         certificate=leaf("a.internal", world["inter"], ku=usage, client=False))
        response = gw.get("/x")
        assert response.status == 502 and response.code == "upstream_tls_error"
        assert up.requests == []
        if tls_max == "1.3":
            # (With TLS 1.2 such a server cannot even sign its key exchange: the handshake fails first.)
            assert "depth 0: a.internal" in gw.logs.error_detail(response.request_id)
            assert "key usage does not allow digitalSignature" in gw.logs.error_detail(response.request_id) or "purpose" in gw.logs.error_detail(response.request_id)
    finally:
        gw.stop()


# -- item: revocation fails closed when a CA of the chain has no CRL -----------------------------------
def _crl_gateway(world, crls: str, extra: str = "") -> MemoryGateway:
    f = world["files"]
    return gateway(world, f"client_auth = require\nclient_ca = {f['root.pem']}\nclient_crl = {crls}\n{extra}")


@pytest.mark.parametrize("crls, issuer", [("root.crl", "inter"), ("inter.crl", "inter"), ("inter.crl", "root")],
                         ids=["issuing CA has no CRL", "root has no CRL", "leaf of the root without the root's CRL"])
def test_chain_with_a_ca_no_crl_covers_is_refused(world, crls, issuer):
    gw = _crl_gateway(world, world["files"][crls])
    try:
        status, lines = attempt(gw, leaf("uncovered", world[issuer]))
        assert status is None
        assert len(lines) == 1 and "client_crl_missing" in lines[0] and "depth" in lines[0]
    finally:
        gw.stop()


def test_chain_covered_by_current_crls_is_accepted(world):
    f = world["files"]
    gw = _crl_gateway(world, f"{f['root.crl']} {f['inter.crl']}")
    try:
        assert attempt(gw, leaf("covered", world["inter"]))[0] == 200
        assert attempt(gw, leaf("direct", world["root"]))[0] == 200
    finally:
        gw.stop()


def test_client_crl_missing_allow_lets_an_uncovered_chain_through(world):
    gw = _crl_gateway(world, world["files"]["root.crl"], "client_crl_missing = allow\n")
    try:
        assert attempt(gw, leaf("uncovered", world["inter"]))[0] == 200
    finally:
        gw.stop()


def test_expired_crl_is_refused_even_with_client_crl_missing_allow(world):
    f = world["files"]
    gw = _crl_gateway(world, f"{f['root.crl']} {f['inter-expired.crl']}", "client_crl_missing = allow\n")
    try:
        status, lines = attempt(gw, leaf("stale", world["inter"]))
        assert status is None and "client_crl_expired" in lines[0]
    finally:
        gw.stop()


# -- item: every refusal says OpenSSL's reason and the depth -----------------------------------------
def test_name_constraints_violation_is_logged_with_its_reason_and_depth(world):
    gw = gateway(world, f"client_auth = require\nclient_ca = {world['files']['nc-root.pem']}\n")
    try:
        outside = _cert("outside", ec.generate_private_key(ec.SECP256R1()), world["nc_root"], ca=False,
                        ku=_ku(**ONLY_SIGN), eku=ExtendedKeyUsageOID.CLIENT_AUTH, dns=("evil.test",))
        status, lines = attempt(gw, outside)
        assert status is None and len(lines) == 1
        assert "subtree violation" in lines[0] and "depth 0, 'CN=outside'" in lines[0]
    finally:
        gw.stop()


def test_upstream_name_constraints_violation_says_why(world):
    gw = upstream_gateway(world, "https://evil.test:8443", "nc-root.pem")
    try:
        gw.upstream("https://evil.test:8443", certificate=leaf("evil.test", world["nc_root"], client=False))
        response = gw.get("/x")
        assert response.status == 502 and "name constraints violation" in gw.logs.error_detail(response.request_id)
        assert "depth 0" in gw.logs.error_detail(response.request_id)
    finally:
        gw.stop()
