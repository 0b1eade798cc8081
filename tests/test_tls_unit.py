"""txgate.tls: certificate loading, local CA, server contexts and upstream verification, all in memory."""
from __future__ import annotations

import os
import stat
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from tests.certs_helpers import (
    NOW,
    make_ca,
    make_intermediate,
    make_leaf,
    pem_chain,
    pem_key,
    write_ca,
    write_pair,
)
from conftest import unprivileged
from txgate.errors import UpstreamTLSError
from txgate.tls.certs import (
    CertificateError,
    expiry_warning,
    load_ca_bundle,
    load_certified_key,
    names_cover,
)
from txgate.tls.client import UpstreamTLS, tls_failure_reason
from txgate.tls.localca import LocalCA
from txgate.tls.server import ServerTLS, connection_facts


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca = make_ca("Unit Root CA")
    inter = make_intermediate(ca, "Unit Intermediate CA")
    other_ca = make_ca("Other Root CA")
    return {
        "ca": ca,
        "inter": inter,
        "other_ca": other_ca,
        "default": make_leaf(ca, ["default.test"]),
        "exact": make_leaf(ca, ["api.example.com"]),
        "wild": make_leaf(ca, ["*.example.com"]),
        "via_inter": make_leaf(inter, ["deep.example.net"]),
        "ip": make_leaf(ca, ["127.0.0.1", "::1"]),
        "multi": make_leaf(ca, ["a.example.org", "b.example.org"]),
        "expired": make_leaf(ca, ["old.example.com"], not_before=NOW - timedelta(days=100),
                             not_after=NOW - timedelta(days=1)),
        "future": make_leaf(ca, ["new.example.com"], not_before=NOW + timedelta(days=2),
                            not_after=NOW + timedelta(days=100)),
        "stranger": make_leaf(other_ca, ["api.example.com"]),
        "client": make_leaf(ca, ["client-1"], client=True),
    }


@implementer(IHandshakeListener)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.handshook = False
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshook = True

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """A bare pyOpenSSL client for probing the server: SNI, ALPN, versions, ciphers."""

    def __init__(self, *, sni: str | None = None, alpn: list[bytes] | None = None,
                 max_tls: int | None = None, ciphers: bytes | None = None,
                 client_cert: Any = None) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if max_tls is not None:
            ctx.set_max_proto_version(max_tls)
            if max_tls < SSL.TLS1_2_VERSION:
                ctx.set_min_proto_version(max_tls)
        if ciphers is not None:
            ctx.set_cipher_list(ciphers)
        if alpn:
            ctx.set_alpn_protos(alpn)
        if client_cert is not None:
            ctx.use_certificate(client_cert.leaf)
            ctx.use_privatekey(client_cert.key)
        ctx.set_verify(SSL.VERIFY_NONE, None)
        self.ctx = ctx
        self.sni = sni

    def clientConnectionForTLS(self, proto: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        if self.sni:
            conn.set_tlsext_host_name(self.sni.encode())
        return conn


def handshake(server_creator: Any, client_creator: Any) -> tuple[Any, Any]:
    """Run a full TLS handshake in memory; returns the (server, client) TLS protocols."""
    clock = Clock()
    sf = TLSMemoryBIOFactory(server_creator, False, Factory.forProtocol(Recorder), clock=clock)
    cf = TLSMemoryBIOFactory(client_creator, True, Factory.forProtocol(Recorder), clock=clock)
    sp = sf.buildProtocol(None)
    cp = cf.buildProtocol(None)
    # TLSMemoryBIOProtocol drops wrappedProtocol on connectionLost: keep our own reference.
    sp.rec, cp.rec = sp.wrappedProtocol, cp.wrappedProtocol
    pump = iosim.connect(sp, iosim.makeFakeServer(sp), cp, iosim.makeFakeClient(cp), greet=False)
    pump.flush()
    # Exchange a byte each way so TLS 1.3 post-handshake messages and alerts are processed.
    if cp.rec.handshook and cp.rec.lost is None:
        cp.write(b"x")
        pump.flush()
    if sp.rec.handshook and sp.rec.lost is None:
        sp.write(b"y")
        pump.flush()
    return sp, cp


def served_cert(cp: Any) -> x509.Certificate:
    return cp.getHandle().get_peer_certificate(as_cryptography=True)


# --- certs.py ---------------------------------------------------------------------------------


def test_load_certified_key_reads_chain_leaf_first(tmp_path: Any, pki: dict[str, Any]) -> None:
    cert_path, key_path = write_pair(tmp_path, "deep", pki["via_inter"])
    ck = load_certified_key(cert_path, key_path, now=NOW)
    assert ck.leaf == pki["via_inter"].leaf
    assert len(ck.chain) == 2 and ck.chain[1] == pki["inter"].leaf
    assert ck.dns_names == ["deep.example.net"]
    assert ck.not_after == pki["via_inter"].leaf.not_valid_after_utc
    assert len(ck.fingerprint_sha256) == 64
    assert len(ck.openssl_chain()) == 2 and ck.openssl_key() is ck.openssl_key()
    assert "PRIVATE" not in repr(ck)


def test_load_certified_key_error_messages(tmp_path: Any, pki: dict[str, Any]) -> None:
    cert_path, key_path = write_pair(tmp_path, "good", pki["exact"])
    _, other_key = write_pair(tmp_path, "other", pki["wild"])
    missing = str(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"hello\n")
    bad_key = tmp_path / "bad-key.pem"
    bad_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    enc_key = tmp_path / "enc-key.pem"
    enc_key.write_bytes(pem_key(pki["exact"], password=b"secret"))
    exp_cert, exp_key = write_pair(tmp_path, "expired", pki["expired"])
    fut_cert, fut_key = write_pair(tmp_path, "future", pki["future"])

    def err(c: str, k: str) -> str:
        with pytest.raises(CertificateError) as info:
            load_certified_key(c, k, now=NOW)
        assert str(info.value) == f"{info.value.path}: {info.value.reason}"
        return str(info.value)

    assert err(missing, key_path) == f"{missing}: file not found"
    assert err(cert_path, missing) == f"{missing}: file not found"
    assert err(str(garbage), key_path) == f"{garbage}: not a PEM certificate"
    assert err(cert_path, str(bad_key)) == f"{bad_key}: not a PEM private key"
    assert err(cert_path, str(enc_key)).startswith(f"{enc_key}: private key is encrypted")
    assert err(cert_path, other_key).startswith(f"{other_key}: private key does not match the certificate")
    expected_date = pki["expired"].leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert err(exp_cert, exp_key) == f"{exp_cert}: certificate expired on {expected_date}"
    assert err(fut_cert, fut_key).startswith(f"{fut_cert}: certificate not valid before ")


def test_load_certified_key_permission_denied(open_tmp: Any, pki: dict[str, Any]) -> None:
    cert_path, key_path = write_pair(open_tmp, "good", pki["exact"])
    os.chmod(cert_path, 0o644)
    os.chmod(key_path, 0)

    def attempt() -> str:
        with pytest.raises(CertificateError, match="permission denied") as info:
            load_certified_key(cert_path, key_path, now=NOW)
        return str(info.value)

    assert "permission denied" in unprivileged(attempt)  # root reads any file


def test_load_ca_bundle(tmp_path: Any, pki: dict[str, Any]) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(pem_chain(pki["inter"]))
    assert load_ca_bundle(str(path)) == list(pki["inter"].chain)
    (tmp_path / "empty.pem").write_bytes(b"")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        load_ca_bundle(str(tmp_path / "empty.pem"))


def test_names_cover(pki: dict[str, Any]) -> None:
    wild = pki["wild"].leaf
    assert names_cover(wild, "api.example.com")
    assert names_cover(wild, "API.Example.com.")
    assert not names_cover(wild, "example.com")
    assert not names_cover(wild, "a.b.example.com")
    assert names_cover(wild, "*.example.com")
    assert not names_cover(pki["exact"].leaf, "*.example.com")
    assert names_cover(pki["exact"].leaf, "api.example.com")
    assert names_cover(pki["ip"].leaf, "127.0.0.1")
    assert names_cover(pki["ip"].leaf, "::1")
    assert not names_cover(pki["ip"].leaf, "127.0.0.2")


def test_expiry_warning(pki: dict[str, Any]) -> None:
    ck = pki["exact"]
    assert expiry_warning(ck, NOW) is None
    warning = expiry_warning(ck, ck.not_after - timedelta(days=3))
    assert warning is not None and "expires on" in warning and "in 3 days" in warning
    assert "expired on" in (expiry_warning(ck, ck.not_after + timedelta(seconds=1)) or "")


# --- localca.py -------------------------------------------------------------------------------


def test_local_ca_creates_files_with_modes_and_reuses_leaf(tmp_path: Any) -> None:
    state = str(tmp_path / "state")
    ca = LocalCA.ensure(state, now=NOW)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca.ca_path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(os.path.join(state, "ca-key.pem")).st_mode) == 0o600
    assert "txgate local CA" in ca.certificate.subject.rfc4514_string()
    assert ca.certificate.not_valid_after_utc - NOW > timedelta(days=3640)

    leaf = ca.issue_server(["localhost", "127.0.0.1", "::1"], now=NOW)
    assert leaf.dns_names == ["localhost"]
    assert {str(ip) for ip in leaf.ip_addresses} == {"127.0.0.1", "::1"}
    assert leaf.chain[1] == ca.certificate
    assert stat.S_IMODE(os.stat(leaf.key_path).st_mode) == 0o600
    assert os.path.dirname(leaf.cert_path) == os.path.join(state, "local")
    eku = leaf.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    leaf.leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    leaf.leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    leaf.leaf.verify_directly_issued_by(ca.certificate)

    # A restart a month later: same CA, same leaf.
    later = NOW + timedelta(days=30)
    ca2 = LocalCA.ensure(state, now=later)
    assert ca2.certificate == ca.certificate
    again = ca2.issue_server(["127.0.0.1", "localhost", "::1"], now=later)
    assert again.fingerprint_sha256 == leaf.fingerprint_sha256
    # Different names: a new leaf. Less than 30 days left: a new leaf.
    assert ca2.issue_server(["other.test"], now=later).fingerprint_sha256 != leaf.fingerprint_sha256
    renewed = ca2.issue_server(["localhost", "127.0.0.1", "::1"], now=NOW + timedelta(days=61))
    assert renewed.fingerprint_sha256 != leaf.fingerprint_sha256


def test_local_ca_corrupt_files_raise(tmp_path: Any) -> None:
    state = str(tmp_path / "state")
    LocalCA.ensure(state, now=NOW)
    with open(os.path.join(state, "ca.pem"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(CertificateError, match="local CA is unusable: not a PEM certificate"):
        LocalCA.ensure(state, now=NOW)
    os.unlink(os.path.join(state, "ca.pem"))
    with pytest.raises(CertificateError, match="file not found"):
        LocalCA.ensure(state, now=NOW)


def test_local_ca_leaf_verifies_with_upstream_tls(tmp_path: Any) -> None:
    ca = LocalCA.ensure(str(tmp_path / "s"), now=NOW)
    leaf = ca.issue_server(["localhost", "127.0.0.1"], now=NOW)
    server = ServerTLS(default=leaf)
    for name in ("localhost", "127.0.0.1"):
        sp, cp = handshake(server, UpstreamTLS(server_name=name, ca_path=ca.ca_path))
        assert cp.rec.handshook, name


# --- server.py --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sni_server(pki: dict[str, Any]) -> ServerTLS:
    return ServerTLS(default=pki["default"], sni=[("api.example.com", pki["exact"]),
                                                  ("*.example.com", pki["wild"])])


@pytest.mark.parametrize(
    "sni,expected",
    [("api.example.com", "exact"), ("API.example.com", "exact"), ("www.example.com", "wild"),
     ("a.b.example.com", "default"), ("unknown.test", "default"), (None, "default")],
)
def test_sni_picks_exact_then_wildcard_then_default(
    pki: dict[str, Any], sni_server: ServerTLS, sni: str | None, expected: str
) -> None:
    sp, cp = handshake(sni_server, RawClient(sni=sni))
    assert cp.rec.handshook
    assert served_cert(cp) == pki[expected].leaf
    facts = connection_facts(sp)
    assert facts[0] == sni


def test_alpn_h2_chosen_and_http11_fallback(pki: dict[str, Any]) -> None:
    server = ServerTLS(default=pki["default"])
    sp, cp = handshake(server, RawClient(alpn=[b"http/1.1", b"h2"]))
    assert connection_facts(sp)[3] == "h2"  # server preference wins
    assert cp.negotiatedProtocol == b"h2"
    sp, cp = handshake(server, RawClient(alpn=[b"http/1.1"]))
    assert connection_facts(sp)[3] == "http/1.1"
    sp, cp = handshake(server, RawClient(alpn=[b"spdy/3"]))
    assert cp.rec.handshook
    assert connection_facts(sp)[3] is None
    sp, cp = handshake(server, RawClient())
    assert connection_facts(sp)[3] is None


def test_alpn_picks_from_a_long_offer_and_a_failing_choice_refuses_the_handshake(pki: dict[str, Any]) -> None:
    from twisted.logger import globalLogPublisher

    server = ServerTLS(default=pki["default"], alpn=("http/1.1",))
    sp, cp = handshake(server, RawClient(alpn=[b"spdy/3", b"x" * 200, b"h2", b"http/1.1", b"acme"]))
    assert connection_facts(sp)[3] == "http/1.1" and cp.negotiatedProtocol == b"http/1.1"

    def broken(conn, offered):
        raise RuntimeError("selection bug")

    server._select_alpn = broken
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        sp, cp = handshake(server, RawClient(alpn=[b"h2"]))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not cp.rec.handshook  # a fatal alert, not a connection without the chosen protocol
    assert [e["log_failure"].check(RuntimeError) for e in events if e.get("log_failure")] == [RuntimeError]


def test_connection_facts_version_and_cipher(pki: dict[str, Any]) -> None:
    server = ServerTLS(default=pki["default"])
    sp, cp = handshake(server, RawClient(sni="default.test", alpn=[b"h2"]))
    sni, version, cipher, alpn = connection_facts(sp)
    assert (sni, version, alpn) == ("default.test", "TLSv1.3", "h2")
    assert cipher is not None and cipher.startswith("TLS_")
    sp, cp = handshake(server, RawClient(max_tls=SSL.TLS1_2_VERSION))
    assert connection_facts(sp)[1:3] == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")


@pytest.mark.parametrize("client", [dict(sni="api.example.com", alpn=[b"h2"]), dict(alpn=[b"spdy/3"]), dict(),
                                    dict(sni="x.test", alpn=[b"http/1.1"], max_tls=SSL.TLS1_2_VERSION)])
def test_connection_facts_are_what_pyopenssls_getters_say(sni_server: ServerTLS, client: dict) -> None:
    from txgate.tls.server import _public_facts

    sp, cp = handshake(sni_server, RawClient(**client))
    assert cp.rec.handshook
    assert connection_facts(sp) == _public_facts(sp.getHandle())


def test_tls11_client_refused_at_default_min(pki: dict[str, Any]) -> None:
    server = ServerTLS(default=pki["default"])
    sp, cp = handshake(server, RawClient(max_tls=SSL.TLS1_1_VERSION, ciphers=b"DEFAULT:@SECLEVEL=0"))
    assert not cp.rec.handshook
    assert cp.rec.lost is not None and cp.rec.lost.check(SSL.Error)
    assert "version" in tls_failure_reason(cp.rec.lost).lower()


def test_cipher_restriction(pki: dict[str, Any]) -> None:
    server = ServerTLS(default=pki["default"], max_tls="1.2", ciphers="ECDHE-ECDSA-CHACHA20-POLY1305")
    sp, cp = handshake(server, RawClient())
    assert connection_facts(sp)[2] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    # The default list refuses CBC suites.
    default = ServerTLS(default=pki["default"], max_tls="1.2")
    sp, cp = handshake(default, RawClient(ciphers=b"ECDHE-ECDSA-AES128-SHA"))
    assert not cp.rec.handshook
    assert tls_failure_reason(cp.rec.lost).startswith("handshake failure")


def test_tls13_ciphersuites(pki: dict[str, Any]) -> None:
    server = ServerTLS(default=pki["default"], tls13_ciphersuites="TLS_CHACHA20_POLY1305_SHA256")
    sp, cp = handshake(server, RawClient())
    assert connection_facts(sp)[1:3] == ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256")


def test_invalid_configuration_raises_value_error(pki: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ServerTLS(default=pki["default"], min_tls="1.3", max_tls="1.2")
    with pytest.raises(ValueError):
        ServerTLS(default=pki["default"], ciphers="NOPE-NOTHING")
    with pytest.raises(ValueError):
        ServerTLS(default=pki["default"], min_tls="1.4")


def test_key_exchange_groups_are_not_pinned_to_p256(pki: dict[str, Any], sni_server: ServerTLS) -> None:
    for sni, max_tls in (("api.example.com", None), (None, SSL.TLS1_2_VERSION)):
        sp, cp = handshake(sni_server, RawClient(sni=sni, max_tls=max_tls))
        assert cp.getHandle().get_group_name() != "secp256r1"


def test_duplicate_sni_name_is_rejected(pki: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="duplicate SNI name"):
        ServerTLS(default=pki["default"], sni=[("a.test", pki["exact"]), ("A.test.", pki["wild"])])


def test_client_verification_applies_on_sni_context(pki: dict[str, Any]) -> None:
    seen: list[int] = []

    def cb(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        seen.append(depth)
        return True

    mode = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    server = ServerTLS(default=pki["default"], sni=[("api.example.com", pki["exact"])], verify=(mode, cb))
    sp, cp = handshake(server, RawClient(sni="api.example.com"))  # no client certificate
    assert not sp.rec.handshook
    assert "certificate" in str(sp.rec.lost.value)
    sp, cp = handshake(server, RawClient(sni="api.example.com", client_cert=pki["client"]))
    assert sp.rec.handshook and seen


def test_contexts_are_built_up_front_and_reusable(pki: dict[str, Any], sni_server: ServerTLS) -> None:
    for _ in range(3):
        sp, cp = handshake(sni_server, RawClient(sni="www.example.com"))
        assert served_cert(cp) == pki["wild"].leaf


# --- client.py --------------------------------------------------------------------------------


def _upstream(tmp_path: Any, pki: dict[str, Any], name: str, **kw: Any) -> UpstreamTLS:
    return UpstreamTLS(server_name=name, ca_path=write_ca(tmp_path, "trust", pki["ca"]), **kw)


def _reason(cp: Any) -> str:
    lost = cp.rec.lost
    assert lost is not None and not cp.rec.handshook
    return tls_failure_reason(lost)


def test_upstream_missing_ca_bundle_raises(tmp_path: Any) -> None:
    with pytest.raises(CertificateError, match="cannot load CA bundle"):
        UpstreamTLS(server_name="x.test", ca_path=str(tmp_path / "nope.pem"))


def test_upstream_accepts_good_certificate(tmp_path: Any, pki: dict[str, Any]) -> None:
    sp, cp = handshake(ServerTLS(default=pki["exact"]), _upstream(tmp_path, pki, "api.example.com"))
    assert cp.rec.handshook and cp.rec.lost is None
    assert cp.negotiatedProtocol == b"http/1.1"
    assert connection_facts(sp)[0] == "api.example.com"


def test_upstream_accepts_chain_through_intermediate(tmp_path: Any, pki: dict[str, Any]) -> None:
    sp, cp = handshake(ServerTLS(default=pki["via_inter"]), _upstream(tmp_path, pki, "deep.example.net"))
    assert cp.rec.handshook


def test_upstream_ip_literal_checks_ip_san_and_sends_no_sni(tmp_path: Any, pki: dict[str, Any]) -> None:
    sp, cp = handshake(ServerTLS(default=pki["ip"]), _upstream(tmp_path, pki, "127.0.0.1"))
    assert cp.rec.handshook
    assert connection_facts(sp)[0] is None
    sp, cp = handshake(ServerTLS(default=pki["ip"]), _upstream(tmp_path, pki, "10.0.0.1"))
    assert _reason(cp) == "hostname mismatch: certificate is for 127.0.0.1, ::1; expected 10.0.0.1"


def test_upstream_rejects_unknown_ca(tmp_path: Any, pki: dict[str, Any]) -> None:
    sp, cp = handshake(ServerTLS(default=pki["stranger"]), _upstream(tmp_path, pki, "api.example.com"))
    assert cp.rec.lost.check(UpstreamTLSError)
    assert cp.rec.lost.value.code == "upstream_tls_error"
    assert _reason(cp).startswith("unknown CA")


def test_upstream_rejects_expired_leaf(tmp_path: Any, pki: dict[str, Any]) -> None:
    sp, cp = handshake(ServerTLS(default=pki["expired"]), _upstream(tmp_path, pki, "old.example.com"))
    date = pki["expired"].leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _reason(cp).startswith(f"certificate expired on {date}")


def test_upstream_rejects_not_yet_valid_leaf(tmp_path: Any, pki: dict[str, Any]) -> None:
    sp, cp = handshake(ServerTLS(default=pki["future"]), _upstream(tmp_path, pki, "new.example.com"))
    assert _reason(cp).startswith("certificate not yet valid")


def test_upstream_rejects_hostname_mismatch(tmp_path: Any, pki: dict[str, Any]) -> None:
    sp, cp = handshake(ServerTLS(default=pki["multi"]), _upstream(tmp_path, pki, "c.example.org"))
    assert _reason(cp) == (
        "hostname mismatch: certificate is for a.example.org, b.example.org; expected c.example.org"
    )


def test_chain_check_gets_verified_chain_leaf_first_and_can_veto(tmp_path: Any, pki: dict[str, Any]) -> None:
    calls: list[list[bytes]] = []
    sp, cp = handshake(ServerTLS(default=pki["via_inter"]),
                       _upstream(tmp_path, pki, "deep.example.net", chain_check=calls.append))
    assert cp.rec.handshook
    assert len(calls) == 1
    got = [x509.load_der_x509_certificate(d) for d in calls[0]]
    assert got == [pki["via_inter"].leaf, pki["inter"].leaf, pki["ca"].leaf]

    class Veto(UpstreamTLSError):
        code = "upstream_pin_mismatch"

    def veto(ders: list[bytes]) -> None:
        raise Veto("pin mismatch: no pinned key in chain")

    sp, cp = handshake(ServerTLS(default=pki["via_inter"]),
                       _upstream(tmp_path, pki, "deep.example.net", chain_check=veto))
    assert cp.rec.lost.check(Veto)
    assert _reason(cp) == "pin mismatch: no pinned key in chain"
    assert not sp.rec.handshook


def test_verify_false_accepts_anything_but_still_runs_chain_check(tmp_path: Any, pki: dict[str, Any]) -> None:
    calls: list[list[bytes]] = []
    client = UpstreamTLS(server_name="wrong.test", verify=False, chain_check=calls.append)
    sp, cp = handshake(ServerTLS(default=pki["stranger"]), client)
    assert cp.rec.handshook
    assert [x509.load_der_x509_certificate(d) for d in calls[0]] == [pki["stranger"].leaf]

    def veto(ders: list[bytes]) -> None:
        raise UpstreamTLSError("vetoed")

    sp, cp = handshake(ServerTLS(default=pki["stranger"]),
                       UpstreamTLS(server_name="wrong.test", verify=False, chain_check=veto))
    assert _reason(cp) == "vetoed"


def test_client_certificate_presented_and_rejection_reason(tmp_path: Any, pki: dict[str, Any]) -> None:
    presented: list[str] = []

    def untrusting(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        presented.append(cert.to_cryptography().subject.rfc4514_string())
        return bool(ok)  # the server trusts no CA: OpenSSL's own verdict rejects us

    mode = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    client = _upstream(tmp_path, pki, "api.example.com", client_certificate=pki["client"])
    for max_tls in ("1.2", "1.3"):
        presented.clear()
        server = ServerTLS(default=pki["exact"], verify=(mode, untrusting), max_tls=max_tls)
        sp, cp = handshake(server, client)
        assert presented, max_tls
        assert tls_failure_reason(cp.rec.lost) == "server rejected our client certificate (alert unknown ca)"


def test_policy_rejection_with_ok_verdict_sends_internal_error(tmp_path: Any, pki: dict[str, Any]) -> None:
    """pyOpenSSL cannot set a verify error: returning False with ok=1 makes OpenSSL send internal_error."""
    presented: list[str] = []

    def refuse_leaf(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if depth == 0:
            presented.append(cert.to_cryptography().subject.rfc4514_string())
            return False
        return True

    mode = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    server = ServerTLS(default=pki["exact"], verify=(mode, refuse_leaf), max_tls="1.2")
    client = _upstream(tmp_path, pki, "api.example.com", client_certificate=pki["client"])
    sp, cp = handshake(server, client)
    assert presented == ["CN=client-1"]
    assert "internal error" in tls_failure_reason(cp.rec.lost)


def test_tls_failure_reason_for_plain_failures() -> None:
    from twisted.internet.error import ConnectionLost

    assert tls_failure_reason(Failure(ConnectionLost())) == "connection closed during the TLS handshake"
    err = SSL.Error([("SSL routines", "", "sslv3 alert handshake failure")])
    assert tls_failure_reason(Failure(err)).startswith("handshake failure")
    err = SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")])
    assert "client certificate" in tls_failure_reason(Failure(err))
