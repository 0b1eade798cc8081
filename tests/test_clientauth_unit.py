"""Client-certificate allowlists and handshake verification without sockets.

The decision (`txgate.tls.clientauth`) is pure: PeerCertificate in, ALLOWED / REQUIRED / NOT_ALLOWED
out. The handshake side (`txgate.tls.clientverify` + `ServerTLS`) runs full TLS handshakes between two
memory-BIO pyOpenSSL connections. The helpers here (client certificates with subjects and URI SANs,
CRLs) are also used by test_mtls_e2e.py.
"""
from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from certs_helpers import NOW, make_ca, make_intermediate, make_leaf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from txgate import pins as _pins
from txgate.tls.certs import CertifiedKey
from txgate.tls.clientauth import (
    ALLOWED, NOT_ALLOWED, REQUIRED, Allowlist, Entries, PeerCertificate, SanMatcher, SubjectMatcher, VerifiedChain,
    canonical_dn, expired_entries, load_entries, sha256, xfcc_value,
)
from txgate.tls.clientverify import ClientVerifier, load_crls, reason_for
from txgate.tls.server import ServerTLS

# -- certificate helpers (shared with test_mtls_e2e.py) ---------------------------------------


def make_client(
    ca: CertifiedKey | None,
    cn: str,
    *,
    org: str | None = None,
    dns: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    days_valid: tuple[int, int] = (-1, 90),
    client_eku: bool = True,
) -> CertifiedKey:
    """A client certificate with a CN (and O), DNS and URI SANs; self-signed when ``ca`` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    # Most significant first, as usual: RFC 4514 prints it reversed ("CN=web,O=Example").
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    subject = x509.Name(attrs)
    issuer = ca.leaf.subject if ca else subject
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + timedelta(days=days_valid[0]))
        .not_valid_after(NOW + timedelta(days=days_valid[1]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH if client_eku else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    sans = [x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    cert = b.sign(ca.key if ca else key, hashes.SHA256())
    parents = tuple(c for c in ca.chain if c.issuer != c.subject) if ca else ()
    return CertifiedKey(chain=(cert,) + parents, key=key)


def make_crl(ca: CertifiedKey, revoked: list[x509.Certificate], *, next_update_days: int = 7) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` revoking ``revoked``."""
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.leaf.subject)
        .last_update(NOW + timedelta(days=min(0, next_update_days) - 1))
        .next_update(NOW + timedelta(days=next_update_days))
    )
    for cert in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(NOW - timedelta(minutes=5)).build()
        )
    return b.sign(ca.key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def peer(ck: CertifiedKey, verified: bool = True, chain: tuple[x509.Certificate, ...] | None = None,
         listener: str | None = "t") -> PeerCertificate:
    """What the listener would capture for ``ck``: chain CA fingerprints from the chain above the leaf.

    The last certificate of the chain is the anchor (the leaf itself for an empty chain), as the verify
    callback records it; ``listener`` is the listener that verified it.
    """
    cas = chain if chain is not None else ck.chain[1:]
    fps = [sha256(der(c)) for c in cas]
    anchor = fps[-1] if fps else sha256(der(ck.leaf))
    return PeerCertificate(der(ck.leaf), verified, VerifiedChain(fps, anchor=anchor, listener=listener))


def rooted(pki, name: str, **kw) -> PeerCertificate:
    """`peer` with the whole verified chain, up to the unit root (as OpenSSL reports it)."""
    ck = pki[name]
    return peer(ck, chain=ck.chain[1:] + (pki["root"].leaf,), **kw)


def under_root(pki) -> dict:
    """Allowlist keywords: listener 't' has the unit root as its client_ca."""
    return {"listener_cas": {"t": [pki["root"].leaf]}}


@pytest.fixture(scope="module")
def pki():
    root = make_ca("unit root")
    inter = make_intermediate(root, "unit intermediate")
    other = make_intermediate(root, "unit other intermediate")
    return {
        "root": root,
        "inter": inter,
        "other": other,
        "client": make_client(inter, "client.example", dns=("client.example",)),
        "web": make_client(inter, "web", org="Example", uris=("spiffe://example.org/ns/prod/sa/web",)),
        "db": make_client(other, "db", org="Example", uris=("spiffe://example.org/ns/prod/sa/db",),
                          dns=("db.internal.example",)),
        "self": make_client(None, "self-signed"),
    }


# -- the decision ------------------------------------------------------------------------------


def test_no_certificate_is_required(pki):
    assert Allowlist("a", Entries()).decide(None) == REQUIRED


def test_no_entries_allows_any_verified_certificate_under_the_listener_client_ca(pki):
    allow = Allowlist("a", Entries(), **under_root(pki))
    assert allow.decide(rooted(pki, "client")) == ALLOWED
    assert allow.decide(rooted(pki, "client", verified=False)) == NOT_ALLOWED


def test_no_entries_refuses_a_chain_verified_only_through_another_apis_ca_entry(pki):
    corp_root, partner_root = pki["root"], make_ca("unit partner root")
    corp_client = make_client(corp_root, "corp-client")
    partner_client = make_client(partner_root, "partner-client")
    # Listener 'main' trusts corp_root (client_ca) and partner_root (api:partner's CA entry).
    corp = Allowlist("corp", Entries(), listener_cas={"main": [corp_root.leaf]})
    partner = Allowlist("partner", Entries(cas=[partner_root.leaf]), listener_cas={"main": [corp_root.leaf]})
    as_main = {"listener": "main"}
    assert corp.decide(peer(corp_client, chain=(corp_root.leaf,), **as_main)) == ALLOWED
    assert partner.decide(peer(partner_client, chain=(partner_root.leaf,), **as_main)) == ALLOWED
    # The defect: partner's certificate verified (its root is in main's trust store), but not via client_ca.
    assert corp.decide(peer(partner_client, chain=(partner_root.leaf,), **as_main)) == NOT_ALLOWED
    # Fail closed: an unknown listener, a listener without client_ca, a certificate without its listener.
    assert corp.decide(peer(corp_client, chain=(corp_root.leaf,), listener="edge")) == NOT_ALLOWED
    assert corp.decide(peer(corp_client, chain=(corp_root.leaf,), listener=None)) == NOT_ALLOWED
    empty = Allowlist("corp", Entries(), listener_cas={"main": []})
    assert empty.decide(peer(corp_client, chain=(corp_root.leaf,), **as_main)) == NOT_ALLOWED


def test_no_entries_decides_per_listener(pki):
    # One API on two listeners: each listener's client_ca counts only for connections it verified.
    corp_root, partner_root = pki["root"], make_ca("unit partner root")
    corp_client = make_client(corp_root, "corp-client")
    partner_client = make_client(partner_root, "partner-client")
    allow = Allowlist("a", Entries(), listener_cas={"main": [corp_root.leaf], "edge": [partner_root.leaf]})
    assert allow.decide(peer(corp_client, chain=(corp_root.leaf,), listener="main")) == ALLOWED
    assert allow.decide(peer(partner_client, chain=(partner_root.leaf,), listener="edge")) == ALLOWED
    assert allow.decide(peer(partner_client, chain=(partner_root.leaf,), listener="main")) == NOT_ALLOWED
    assert allow.decide(peer(corp_client, chain=(corp_root.leaf,), listener="edge")) == NOT_ALLOWED


def test_no_entries_client_ca_may_be_an_intermediate_or_the_certificate_itself(pki):
    # client_ca holds the intermediate: the chain passes through it (the anchor is still the root).
    allow = Allowlist("a", Entries(), listener_cas={"t": [pki["inter"].leaf]})
    assert allow.decide(rooted(pki, "client")) == ALLOWED
    assert allow.decide(rooted(pki, "db")) == NOT_ALLOWED  # same root, other intermediate
    # A self-signed certificate that is itself in client_ca: a one-certificate chain, its own anchor.
    self_allow = Allowlist("a", Entries(), listener_cas={"t": [pki["self"].leaf]})
    assert self_allow.decide(peer(pki["self"], chain=())) == ALLOWED
    assert Allowlist("a", Entries(), **under_root(pki)).decide(peer(pki["self"], chain=())) == NOT_ALLOWED


def test_pin_entry_allows_the_leaf_even_unverified(pki):
    pin = _pins.spki_sha256(der(pki["self"].leaf))
    allow = Allowlist("a", Entries(pins=[pin]))
    assert allow.pinset is not None and len(allow.pinset) == 1
    assert allow.decide(peer(pki["self"], verified=False)) == ALLOWED
    assert allow.decide(peer(pki["client"])) == NOT_ALLOWED


def test_pin_entry_through_both_backends(pki):
    pin = _pins.spki_sha256(der(pki["web"].leaf))
    for backend in _pins.available_backends():
        allow = Allowlist("a", Entries(pins=[pin]), pin_backend=backend)
        assert allow.decide(peer(pki["web"])) == ALLOWED
        assert allow.decide(peer(pki["db"])) == NOT_ALLOWED


def test_fingerprint_entry(pki):
    allow = Allowlist("a", Entries(fingerprints=[sha256(der(pki["client"].leaf))]))
    assert allow.decide(peer(pki["client"], verified=False)) == ALLOWED
    assert allow.decide(peer(pki["web"])) == NOT_ALLOWED


def test_ca_entry_needs_a_verified_chain_through_it(pki):
    allow = Allowlist("a", Entries(cas=[pki["inter"].leaf]))
    assert allow.decide(peer(pki["client"])) == ALLOWED
    assert allow.decide(peer(pki["web"])) == ALLOWED
    assert allow.decide(peer(pki["db"])) == NOT_ALLOWED  # other intermediate, same root
    assert allow.decide(peer(pki["client"], verified=False)) == NOT_ALLOWED
    root_allow = Allowlist("a", Entries(cas=[pki["root"].leaf]))
    chain_with_root = pki["db"].chain[1:] + (pki["root"].leaf,)
    assert root_allow.decide(peer(pki["db"], chain=chain_with_root)) == ALLOWED


def test_subjects_narrow_never_allow_alone(pki):
    allow = Allowlist("a", Entries(), subjects=["CN=web,O=Example", r"re:CN=client\.example"], **under_root(pki))
    assert allow.decide(rooted(pki, "web")) == ALLOWED
    assert allow.decide(rooted(pki, "client")) == ALLOWED
    assert allow.decide(rooted(pki, "db")) == NOT_ALLOWED
    assert allow.decide(rooted(pki, "web", verified=False)) == NOT_ALLOWED
    # A regex must match the whole subject.
    assert Allowlist("a", Entries(), subjects=["re:CN=web"], **under_root(pki)).decide(rooted(pki, "web")) == NOT_ALLOWED


# The pattern docs/configuration.md recommends: an attribute value is a run of unescaped characters
# other than ',' and '\', or escape pairs, so an escaped ',' inside a value never ends it.
DOC_SUBJECT_RE = r"re:CN=(?:[^,\\]|\\.)+,O=Example"


def test_subject_regex_anchors_attribute_values_against_rfc4514_escapes(pki):
    evil = make_client(pki["inter"], "evil,O=Example")  # no O attribute at all
    assert peer(evil).subject == r"CN=evil\,O=Example"
    # A naive pattern lets the CN value swallow the escaped ",O=Example".
    assert SubjectMatcher([r"re:CN=.*,O=Example"])(peer(evil).subject)
    doc = SubjectMatcher([DOC_SUBJECT_RE])
    assert not doc(peer(evil).subject)
    assert doc(peer(pki["web"]).subject)  # CN=web,O=Example
    # A real O with an escaped ',' in the CN is still matched, a different O is not.
    assert doc(peer(make_client(pki["inter"], "Doe, John", org="Example")).subject)
    assert not doc(peer(make_client(pki["inter"], "web", org="Example,O=Example")).subject)
    assert not doc(peer(make_client(pki["inter"], "x,O=Example", org="Other")).subject)
    # The stricter form from the docs refuses any escaped character in the CN.
    strict = SubjectMatcher([r"re:CN=[^,\\]+,O=Example"])
    assert strict("CN=web,O=Example") and not strict(peer(evil).subject)
    allow = Allowlist("a", Entries(), subjects=[DOC_SUBJECT_RE], **under_root(pki))
    assert allow.decide(peer(evil, chain=evil.chain[1:] + (pki["root"].leaf,))) == NOT_ALLOWED
    assert allow.decide(rooted(pki, "web")) == ALLOWED


def test_sans_dns_and_spiffe_wildcards(pki):
    allow = Allowlist("a", Entries(), sans=["spiffe://example.org/ns/*/sa/web", "*.internal.example"],
                      **under_root(pki))
    assert allow.decide(rooted(pki, "web")) == ALLOWED
    assert allow.decide(rooted(pki, "db")) == ALLOWED  # by its DNS SAN
    assert allow.decide(rooted(pki, "client")) == NOT_ALLOWED
    only_uri = Allowlist("a", Entries(), sans=["spiffe://example.org/ns/*/sa/web"], **under_root(pki))
    assert only_uri.decide(rooted(pki, "db")) == NOT_ALLOWED


def test_san_matcher_wildcards_stay_in_one_label_or_segment():
    m = SanMatcher(["*.example.com", "spiffe://td/ns/*/sa/web", "EXACT.example.net", "urn:x:y"])
    assert m(["a.example.com"], [])
    assert m(["A.Example.COM"], [])
    assert not m(["a.b.example.com"], [])
    assert m(["exact.example.net."], [])
    assert m([], ["spiffe://td/ns/prod/sa/web"])
    assert not m([], ["spiffe://td/ns/prod/x/sa/web"])
    assert not m([], ["spiffe://td/ns/prod/sa/web2"])
    assert m([], ["urn:x:y"]) and not m([], ["URN:X:Y"])


def test_san_wildcard_never_matches_an_empty_dns_label():
    m = SanMatcher(["*.example.com"])
    assert m(["a.example.com"], [])
    for name in (".example.com", "..example.com", "a..example.com", "example.com", "*.example.com."[1:]):
        assert not m([name], []), name
    partial = SanMatcher(["web*.example.com", "*.example.org."])
    assert partial(["web.example.com"], []) and partial(["web-1.example.com"], [])
    assert not partial(["web.x.example.com"], []) and not partial(["x.web.example.com"], [])
    assert partial(["a.example.org"], []) and not partial([".example.org"], [])


def test_san_uri_wildcard_stays_in_one_path_segment_or_host_label():
    m = SanMatcher(["spiffe://td/ns/*/sa/web"])
    assert m([], ["spiffe://td/ns/prod/sa/web"])
    for uri in ("spiffe://td/ns//sa/web", "spiffe://td/ns/a/b/sa/web", "spiffe://td/ns/../sa/web",
                "spiffe://td/ns/./sa/web", "spiffe://td/ns/a?/sa/web", "spiffe://td/ns/a#/sa/web"):
        assert not m([], [uri]), uri
    host = SanMatcher(["spiffe://*.example.org/sa/web"])
    assert host([], ["spiffe://prod.example.org/sa/web"])
    for uri in ("spiffe://a.b.example.org/sa/web", "spiffe://.example.org/sa/web",
                "spiffe://x/y.example.org/sa/web", "spiffe://evil.com/.example.org/sa/web",
                "spiffe://user@x.example.org/sa/web"):
        assert not host([], [uri]), uri
    tail = SanMatcher(["spiffe://td/sa/web-*", "spiffe://td/ns/*"])
    assert tail([], ["spiffe://td/sa/web-1"]) and tail([], ["spiffe://td/ns/prod"])
    for uri in ("spiffe://td/sa/web-1/x", "spiffe://td/ns/prod/sa/db", "spiffe://td/ns/", "spiffe://td/ns/..",
                "spiffe://td/ns/prod?x=1"):
        assert not tail([], [uri]), uri


def test_subject_matcher_canonicalises_exact_names():
    m = SubjectMatcher(['CN=a\\"b,O=x\\,y'])
    assert m('CN=a\\"b,O=x\\,y')
    with pytest.raises(ValueError, match="not an RFC 4514 name"):
        canonical_dn("CN=a, O=b")


def test_entries_and_subjects_combine(pki):
    allow = Allowlist("a", Entries(cas=[pki["inter"].leaf]), subjects=["CN=web,O=Example"])
    assert allow.decide(peer(pki["web"])) == ALLOWED
    assert allow.decide(peer(pki["client"])) == NOT_ALLOWED


def test_malformed_der_is_not_allowed(pki):
    allow = Allowlist("a", Entries(pins=[b"\x00" * 32]))
    bogus = PeerCertificate(b"\x30\x03\x02\x01\x01", False, (), cert=pki["client"].leaf)
    assert allow.decide(bogus) == NOT_ALLOWED


# -- entries from configuration tokens -------------------------------------------------------


def test_load_entries_kinds(tmp_path, pki):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki["inter"].leaf.public_bytes(serialization.Encoding.PEM))
    chain_file = tmp_path / "client.pem"  # a client chain file: only the leaf is an entry
    chain_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in pki["client"].chain))
    fp = hashlib.sha256(der(pki["web"].leaf)).hexdigest()
    pin = _pins.format_pin(_pins.spki_sha256(der(pki["self"].leaf)))
    e = load_entries([pin, fp.upper(), str(ca_file), str(chain_file)])
    assert e.pins == [_pins.spki_sha256(der(pki["self"].leaf))]
    assert e.fingerprints == [bytes.fromhex(fp), sha256(der(pki["client"].leaf))]
    assert e.cas == [pki["inter"].leaf]
    assert e.exact == [pki["client"].leaf]


def test_load_entries_errors(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_entries([str(bad)])
    with pytest.raises(ValueError, match="invalid base64"):
        load_entries(["sha256/!!"])


def test_expired_entries_are_reported(pki):
    old = make_client(pki["inter"], "old", days_valid=(-30, -1))
    lines = expired_entries(Entries(exact=[old.leaf], cas=[pki["inter"].leaf]), NOW)
    assert len(lines) == 1 and lines[0].startswith("certificate 'CN=old' expired on ")


# -- X-Forwarded-Client-Cert -----------------------------------------------------------------


def test_xfcc_format_envoy():
    fp = bytes(range(32))
    v = xfcc_value(fp, 'CN=a\\"b,O=Ex', ["spiffe://td/a", "urn:x,y"], ["a.example", "b.example"])
    assert v == (b'Hash=' + fp.hex().encode() + b';Subject="CN=a\\\\\\"b,O=Ex";URI=spiffe://td/a;URI="urn:x,y";'
                 b'DNS=a.example;DNS=b.example')


def test_xfcc_escapes_non_ascii_and_controls():
    v = xfcc_value(b"\x00" * 32, "CN=caf\u00e9\r\n", [], [])
    assert b"\r" not in v and b"\n" not in v
    assert v.endswith(b'Subject="CN=caf\\\\C3\\\\A9\\\\0D\\\\0A"')


def test_peer_certificate_facts(pki):
    p = peer(pki["web"])
    assert p.subject == "CN=web,O=Example"
    assert p.uris == ("spiffe://example.org/ns/prod/sa/web",) and p.dns_names == ()
    assert p.fingerprint == hashlib.sha256(der(pki["web"].leaf)).digest()
    assert p.xfcc() is p.xfcc()


# -- handshakes in memory --------------------------------------------------------------------


def _client_context(ck: CertifiedKey | None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if ck is not None:
        ctx.use_certificate(ck.leaf)
        for extra in ck.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(ck.key)
    return ctx


def handshake(server_tls: ServerTLS, ck: CertifiedKey | None, sni: str | None = None):
    """Run a TLS handshake in memory; return (server connection, error side or None)."""
    server = server_tls.serverConnectionForTLS(None)
    server.set_accept_state()
    client = SSL.Connection(_client_context(ck), None)
    client.set_connect_state()
    if sni:
        client.set_tlsext_host_name(sni.encode())
    failed = None
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                failed = failed or ("server" if a is server else "client")
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    try:  # TLS 1.3: the client learns of a refused certificate on its first read
        client.recv(1)
    except SSL.WantReadError:
        pass
    except SSL.Error:
        failed = failed or "client"
    return server, failed


@pytest.fixture(scope="module")
def server_pki(pki):
    return {"default": make_leaf(pki["root"], ["localhost"]), "sni": make_leaf(pki["root"], ["api.example.com"])}


def _server(pki, server_pki, mode, **kw):
    verifier = ClientVerifier(listener="t", mode=mode, anchors=[pki["root"].leaf], **kw)
    tls = ServerTLS(default=server_pki["default"], sni=[("api.example.com", server_pki["sni"])],
                    client_verifier=verifier)
    return verifier, tls


def test_require_verifies_and_records_the_chain(pki, server_pki):
    verifier, tls = _server(pki, server_pki, "require")
    conn, failed = handshake(tls, pki["client"])
    assert failed is None
    state = verifier.state_of(conn)
    assert state.verified and state.reason is None
    assert set(state.ca_fingerprints) == {sha256(der(pki["inter"].leaf)), sha256(der(pki["root"].leaf))}
    chain = state.ca_fingerprints  # nearest the leaf first; the anchor is the top; the listener says who
    assert list(chain) == [sha256(der(pki["inter"].leaf)), sha256(der(pki["root"].leaf))]
    assert chain.anchor == sha256(der(pki["root"].leaf)) and chain.listener == "t"
    assert state.chain[0] == sha256(der(pki["client"].leaf))


def test_callback_records_one_chain_per_verification(pki, server_pki):
    from OpenSSL import crypto

    verifier, _ = _server(pki, server_pki, "optional")

    class Conn:
        pass

    c = Conn()
    verifier.attach(c)
    x = {name: crypto.X509.from_cryptography(pki[name].leaf) for name in ("root", "inter", "other", "client", "db")}
    for cert, depth in ((x["other"], 1), (x["db"], 0), (x["root"], 2), (x["inter"], 1), (x["client"], 0)):
        assert verifier.callback(c, cert, 0, depth, 1) is True
    chain = verifier.state_of(c).ca_fingerprints  # only the second pass, top-down from the root
    assert list(chain) == [sha256(der(pki["inter"].leaf)), sha256(der(pki["root"].leaf))]
    assert chain.anchor == sha256(der(pki["root"].leaf))


def test_handshake_facts_keep_another_apis_ca_out_of_the_no_entries_rule(pki, server_pki):
    # The listener's trust store: its client_ca (the unit root) plus another API's CA entry (partner).
    partner = make_ca("unit partner root")
    verifier = ClientVerifier(listener="t", mode="optional", anchors=[pki["root"].leaf, partner.leaf])
    tls = ServerTLS(default=server_pki["default"], client_verifier=verifier)
    no_entries = Allowlist("corp", Entries(), **under_root(pki))
    partner_api = Allowlist("partner", Entries(cas=[partner.leaf]), **under_root(pki))

    def captured(ck):  # what listener.py builds once the handshake is done
        conn, failed = handshake(tls, ck)
        assert failed is None
        state = verifier.state_of(conn)
        assert state.verified
        return PeerCertificate(der(ck.leaf), True, state.ca_fingerprints)

    partner_peer = captured(make_client(partner, "partner-client"))
    assert partner_peer.listener == "t" and partner_peer.anchor == sha256(der(partner.leaf))
    assert partner_api.decide(partner_peer) == ALLOWED
    assert no_entries.decide(partner_peer) == NOT_ALLOWED
    corp_peer = captured(pki["client"])
    assert no_entries.decide(corp_peer) == ALLOWED and partner_api.decide(corp_peer) == NOT_ALLOWED


@pytest.mark.parametrize("sni", [None, "api.example.com"])
def test_require_refuses_without_certificate_also_after_an_sni_switch(pki, server_pki, sni):
    verifier, tls = _server(pki, server_pki, "require")
    conn, failed = handshake(tls, None, sni=sni)
    assert failed is not None
    assert conn.get_context() is tls.context_for(sni)
    assert conn.get_verify_mode() == SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


def test_sni_context_carries_trust_store_and_depth(pki, server_pki):
    verifier, tls = _server(pki, server_pki, "require", depth=0)
    conn, failed = handshake(tls, pki["client"], sni="api.example.com")  # leaf <- intermediate <- root
    assert failed == "server"
    assert verifier.state_of(conn).reason == "client_certificate_chain_too_long"
    direct = make_client(pki["root"], "direct")
    conn, failed = handshake(tls, direct, sni="api.example.com")
    assert failed is None and verifier.state_of(conn).verified


@pytest.mark.parametrize("mode", ["optional", "require"])
def test_untrusted_certificate(pki, server_pki, mode):
    verifier, tls = _server(pki, server_pki, mode)
    conn, failed = handshake(tls, pki["self"])
    state = verifier.state_of(conn)
    if mode == "optional":
        assert failed is None and state.verified is False and state.reason is None
        assert conn.get_peer_certificate() is not None
    else:
        assert failed == "server" and state.reason == "client_certificate_untrusted"


@pytest.mark.parametrize("mode", ["optional", "require"])
@pytest.mark.parametrize("days, reason", [((-30, -1), "client_certificate_expired"),
                                          ((1, 30), "client_certificate_not_yet_valid")])
def test_dates_are_enforced_in_every_mode(pki, server_pki, mode, days, reason):
    verifier, tls = _server(pki, server_pki, mode)
    conn, failed = handshake(tls, make_client(pki["inter"], "dated", days_valid=days))
    assert failed == "server" and verifier.state_of(conn).reason == reason
    # Self-signed: refused in optional mode for its dates (in require mode, first for being untrusted).
    conn, failed = handshake(tls, make_client(None, "dated-self", days_valid=days))
    assert failed == "server"
    assert verifier.state_of(conn).reason == (reason if mode == "optional" else "client_certificate_untrusted")


@pytest.mark.parametrize("mode", ["optional", "require"])
def test_revoked_certificate_refused_other_issuers_unaffected(pki, server_pki, mode):
    revoked = make_client(pki["inter"], "revoked")
    crl = make_crl(pki["inter"], [revoked.leaf])
    # (The root's CRL covers the intermediates themselves: every CA of a chain needs one.)
    verifier, tls = _server(pki, server_pki, mode, crls=[crl, make_crl(pki["root"], [])])
    conn, failed = handshake(tls, revoked)
    assert failed == "server" and verifier.state_of(conn).reason == "client_certificate_revoked"
    conn, failed = handshake(tls, pki["client"])  # same issuer, not revoked
    assert failed is None and verifier.state_of(conn).verified
    conn, failed = handshake(tls, pki["db"])  # another issuer, no CRL for it: fails closed
    assert failed == "server" and verifier.state_of(conn).reason == "client_crl_missing"
    verifier, tls = _server(pki, server_pki, mode, crls=[crl, make_crl(pki["root"], [])], crl_missing="allow")
    conn, failed = handshake(tls, pki["db"])  # unless the operator allows it: then not checked
    assert failed is None and verifier.state_of(conn).verified


def test_wrong_purpose_refused(pki, server_pki):
    verifier, tls = _server(pki, server_pki, "require")
    conn, failed = handshake(tls, make_client(pki["inter"], "server-only", client_eku=False))
    assert failed == "server" and verifier.state_of(conn).reason == "client_certificate_wrong_purpose"


def test_accepted_leaf_is_kept_for_the_connection_and_parsed_once(pki, server_pki, monkeypatch):
    from cryptography.hazmat.primitives.serialization import Encoding

    from txgate.tls import clientverify

    verifier, tls = _server(pki, server_pki, "require")
    conn, failed = handshake(tls, pki["client"])
    assert failed is None
    der, parsed = verifier.state_of(conn).leaf
    assert der == conn.get_peer_certificate(as_cryptography=True).public_bytes(Encoding.DER)
    assert parsed.public_bytes(Encoding.DER) == der
    parses, load = [], x509.load_der_x509_certificate
    monkeypatch.setattr(clientverify.x509, "load_der_x509_certificate",
                        lambda data: parses.append(data) or load(data))
    conn, failed = handshake(tls, pki["client"])  # the same client again: no new parse
    assert failed is None and parses == [] and verifier.state_of(conn).leaf[0] == der


def test_leaf_cache_is_bounded(monkeypatch):
    from txgate.tls import clientverify

    monkeypatch.setattr(clientverify, "_LEAF_CACHE", {})
    monkeypatch.setattr(clientverify, "_LEAF_CACHE_SIZE", 3)
    monkeypatch.setattr(clientverify.x509, "load_der_x509_certificate", lambda der: der)
    monkeypatch.setattr(clientverify, "signature_usage_problem", lambda cert: None)
    for i in range(5):
        clientverify._leaf_facts(bytes([i]), b"der%d" % i)
    assert list(clientverify._LEAF_CACHE) == [bytes([2]), bytes([3]), bytes([4])]


def test_optional_without_certificate(pki, server_pki):
    verifier, tls = _server(pki, server_pki, "optional")
    conn, failed = handshake(tls, None)
    assert failed is None and conn.get_peer_certificate() is None


def test_callback_never_overrides_an_unknown_error(pki, server_pki):
    verifier, _ = _server(pki, server_pki, "optional")

    class Conn:
        pass

    c = Conn()
    verifier.attach(c)
    assert verifier.callback(c, None, 7, 0, 0) is False  # certificate signature failure
    assert verifier.state_of(c).reason == reason_for(7) == "client_certificate_invalid"
    assert verifier.callback(c, object(), 0, 1, 1) is False  # an exception inside: refused, not raised


def test_crl_files_pem_and_der(tmp_path, pki):
    a, b = make_crl(pki["inter"], []), make_crl(pki["root"], [])
    pem = tmp_path / "two.pem"
    pem.write_bytes(a.public_bytes(serialization.Encoding.PEM) + b.public_bytes(serialization.Encoding.PEM))
    d = tmp_path / "one.der"
    d.write_bytes(a.public_bytes(serialization.Encoding.DER))
    assert [c.issuer for c in load_crls(str(pem))] == [a.issuer, b.issuer]
    assert load_crls(str(d))[0].issuer == a.issuer
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a CRL"):
        load_crls(str(junk))
