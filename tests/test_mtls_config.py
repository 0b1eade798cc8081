"""Client-certificate (mTLS) keys in gw.ini: parsing, prepare() checks, exact one-line messages."""
from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from certs_helpers import make_intermediate
from test_clientauth_unit import make_client, make_crl
from txgate.config import ConfigError, parse_text
from txgate.plan.files import check_files
from txgate.service import prepare
from txgate.tls.clientverify import ClientVerifier

L = "[listener:main]\nbind = 127.0.0.1:0\n"


def error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        check_files(parse_text(text, "gw.ini"))
    return str(e.value)


def prepared(text: str):
    return prepare(parse_text(text, "gw.ini"), check_ports=False, create_state=False)


def prepared_error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        prepared(text)
    return str(e.value)


def pem(path, *certs) -> str:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return str(path)


def test_defaults():
    cfg = parse_text(L + "[api:a]\nupstream = builtin:echo\n", "gw.ini")
    ln, api = cfg.listeners[0], cfg.apis[0]
    assert (ln.client_auth, ln.client_ca, ln.client_crl, ln.verify_depth, ln.announce_client_cas) == (
        "none", None, (), 4, True)
    assert (api.mtls, api.client_certificates, api.client_subjects, api.client_sans, api.forward_client_cert) == (
        False, (), (), (), "off")
    assert cfg.security.client_certificates == ()
    p = prepared(L + "[api:a]\nupstream = builtin:echo\n")
    assert p.client_verifiers == {} and p.allowlists == {}


def test_all_keys_parsed(certs, tmp_path):
    crl = tmp_path / "c.crl"
    crl.write_bytes(make_crl(certs.intermediate, []).public_bytes(serialization.Encoding.DER))
    pin = "sha256/" + "A" * 43 + "="
    text = (L + f"client_auth = require\nclient_ca = {certs.root_pem}\nclient_crl = {crl} {crl}\n"
            "verify_depth = 2\nannounce_client_cas = no\n"
            f"[api:a]\nupstream = builtin:echo\nmtls = require\nclient_certificates = {pin} {'ab' * 32}\n"
            "client_subjects =\n    CN=web,O=Example\n    re:CN=.*\\.example\n"
            "client_sans = spiffe://example.org/* *.example.com\nforward_client_cert = xfcc\n"
            f"[security]\nclient_certificates = {certs.root_pem}\n")
    cfg = parse_text(text, "gw.ini")
    ln, api = cfg.listeners[0], cfg.apis[0]
    assert (ln.client_auth, ln.client_crl, ln.verify_depth, ln.announce_client_cas) == (
        "require", (str(crl), str(crl)), 2, False)
    assert api.mtls and api.client_certificates == (pin, "ab" * 32)
    assert api.client_subjects == ("CN=web,O=Example", "re:CN=.*\\.example")
    assert api.client_sans == ("spiffe://example.org/*", "*.example.com") and api.forward_client_cert == "xfcc"
    assert cfg.security.client_certificates == (certs.root_pem,)
    p = prepared(text)
    v = p.client_verifiers["main"]
    assert isinstance(v, ClientVerifier) and v.mode == "require" and v.depth == 2 and not v.announce
    assert len(v.anchors) == 1 and len(v.crls) == 2  # root from client_ca and [security], once
    assert p.allowlists["a"].cas and len(p.allowlists["a"].fingerprints) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        ("client_auth = always", "gw.ini: [listener:main] client_auth: expected one of none, optional, require, got 'always'"),
        ("client_ca = /nope.pem", "gw.ini: [listener:main] client_ca: /nope.pem: file not found"),
        ("client_crl = /nope.crl", "gw.ini: [listener:main] client_crl: /nope.crl: file not found"),
        ("verify_depth = -1", "gw.ini: [listener:main] verify_depth: must be at least 0, got -1"),
        ("verify_depth = two", "gw.ini: [listener:main] verify_depth: expected an integer, got 'two'"),
        ("announce_client_cas = maybe", "gw.ini: [listener:main] announce_client_cas: expected on/off, got 'maybe'"),
        ("client_aut = require", "gw.ini: [listener:main] client_aut: unknown key (did you mean 'client_auth'?)"),
        ("tls = off\nclient_auth = optional", "gw.ini: [listener:main] client_auth: client certificates need TLS (this listener has tls = off)"),
    ],
)
def test_listener_errors(extra, message):
    assert error(L + extra + "\n") == message


@pytest.mark.parametrize(
    "extra, message",
    [
        ("mtls = on", "gw.ini: [api:a] mtls: expected one of off, require, got 'on'"),
        ("mtls = require\nclient_certificates = nonsense", "gw.ini: [api:a] client_certificates: 'nonsense' is not an entry (expected sha256/BASE64, 64 hex digits, or a PEM file)"),
        ("mtls = require\nclient_certificates = /nope.pem", "gw.ini: [api:a] client_certificates: /nope.pem: file not found"),
        ("client_sans = *.example.com", "gw.ini: [api:a] client_sans: has no effect with mtls = off (set mtls = require)"),
        ("client_subjects = CN=x", "gw.ini: [api:a] client_subjects: has no effect with mtls = off (set mtls = require)"),
        ("mtls = require\nclient_subjects = re:CN=(", "gw.ini: [api:a] client_subjects: 're:CN=(': invalid regular expression: missing ), unterminated subpattern at position 3"),
        ("mtls = require\nclient_subjects = client", "gw.ini: [api:a] client_subjects: 'client': expected an RFC 4514 name such as 'CN=client,O=Example' or 're:REGEX'"),
        ("mtls = require\nclient_sans = bad_name!", "gw.ini: [api:a] client_sans: 'bad_name!': not a DNS name (a URI needs a scheme, e.g. spiffe://...)"),
        ("forward_client_cert = yes", "gw.ini: [api:a] forward_client_cert: expected one of off, xfcc, got 'yes'"),
    ],
)
def test_api_errors(extra, message):
    assert error(L + "[api:a]\nupstream = builtin:echo\n" + extra + "\n") == message


def test_mtls_api_on_plain_listener():
    text = L + "[listener:plain]\nbind = 127.0.0.1:0\ntls = off\n[api:a]\nupstream = builtin:echo\nmtls = require\n"
    assert error(text) == (
        "gw.ini: [api:a] mtls: listener 'plain' has tls = off: client certificates need TLS "
        "(list TLS listeners only in 'listeners')"
    )
    cfg = parse_text(text.replace("mtls = require", "listeners = main\nmtls = require"), "gw.ini")
    assert cfg.apis[0].mtls


def test_security_entry_errors():
    assert error(L + "[security]\nclient_certificates = junk\n") == (
        "gw.ini: [security] client_certificates: 'junk' is not an entry (expected sha256/BASE64, 64 hex digits, or a PEM file)"
    )


# -- prepare -----------------------------------------------------------------------------------


def test_require_without_trust_anchors():
    assert prepared_error(L + "client_auth = require\n") == (
        "gw.ini: [listener:main] client_auth: require needs trust anchors: set client_ca (or CA entries in client_certificates)"
    )


NO_CLIENT_CA = (
    "gw.ini: [api:{api}] client_certificates: an mTLS API without entries (here or in [security]) allows only "
    "certificates issued under its listener's client_ca, and listener '{ln}' has none: it would allow no one "
    "(list entries, or set client_ca in [listener:{ln}])"
)


def test_mtls_any_verified_without_trust_anchors():
    assert prepared_error(L + "[api:a]\nupstream = builtin:echo\nmtls = require\n") == NO_CLIENT_CA.format(
        api="a", ln="main")


def test_mtls_without_entries_needs_client_ca_not_another_apis_ca_entry(certs, tmp_path):
    # The listener's trust store holds api:a's CA entry, but that is no client_ca for api:b.
    text = (L + f"[api:a]\npath = /a\nupstream = builtin:echo\nmtls = require\nclient_certificates = {certs.root_pem}\n"
            "[api:b]\npath = /b\nupstream = builtin:echo\nmtls = require\n")
    assert prepared_error(text) == NO_CLIENT_CA.format(api="b", ln="main")
    # On a second listener without client_ca the same API is an error there too.
    two = (L + f"client_ca = {certs.root_pem}\n[listener:edge]\nbind = 127.0.0.1:0\n"
           "[api:b]\nupstream = builtin:echo\nmtls = require\n")
    assert prepared_error(two) == NO_CLIENT_CA.format(api="b", ln="edge")
    # [security] entries are entries of every mTLS API: no client_ca needed then.
    p = prepared(text + f"[security]\nclient_certificates = {pem(tmp_path / 'svc.pem', make_client(None, 'svc').leaf)}\n")
    assert not p.allowlists["b"].any_verified


def test_listener_client_ca_reaches_the_allowlists(certs, tmp_path):
    inter = pem(tmp_path / "i.pem", certs.intermediate.leaf)
    p = prepared(L + f"client_ca = {certs.root_pem}\n[listener:edge]\nbind = 127.0.0.1:0\nclient_ca = {inter}\n"
                 f"[listener:plain]\nbind = 127.0.0.1:0\n"
                 "[api:a]\nlisteners = main edge\nupstream = builtin:echo\nmtls = require\n")
    fp = lambda c: hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).digest()  # noqa: E731
    assert p.allowlists["a"].listener_cas == {"main": {fp(certs.root.leaf)}, "edge": {fp(certs.intermediate.leaf)}}


def test_mtls_api_makes_its_listener_ask_optionally(certs):
    p = prepared(L + f"client_ca = {certs.root_pem}\n[listener:other]\nbind = 127.0.0.1:0\n"
                 "[api:a]\nlisteners = main\nupstream = builtin:echo\nmtls = require\n")
    assert p.client_verifiers["main"].mode == "optional"
    assert "other" not in p.client_verifiers


def test_ca_entries_join_the_trust_store(certs, tmp_path):
    inter = pem(tmp_path / "i.pem", certs.intermediate.leaf)
    p = prepared(L + f"client_ca = {certs.root_pem}\n[api:a]\nupstream = builtin:echo\nmtls = require\n"
                 f"client_certificates = {inter}\n")
    subjects = {a.subject.rfc4514_string() for a in p.client_verifiers["main"].anchors}
    assert subjects == {"CN=txgate test root", "CN=txgate test intermediate"}


def test_intermediate_ca_entry_needs_its_issuer_as_anchor(certs, tmp_path):
    inter = pem(tmp_path / "i.pem", certs.intermediate.leaf)
    assert prepared_error(L + f"[api:a]\nupstream = builtin:echo\nmtls = require\nclient_certificates = {inter}\n") == (
        "gw.ini: [api:a] client_certificates: intermediate CA 'CN=txgate test intermediate': its issuer "
        "'CN=txgate test root' is not a trust anchor of listener 'main' (add it to client_ca)"
    )


def test_bad_client_ca_and_crl(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not pem")
    assert prepared_error(L + f"client_ca = {bad}\nclient_auth = optional\n") == (
        f"gw.ini: [listener:main] client_ca: {bad}: not a PEM certificate"
    )
    assert prepared_error(L + f"client_crl = {bad}\nclient_auth = optional\n") == (
        f"gw.ini: [listener:main] client_crl: {bad}: not a CRL (expected PEM 'X509 CRL' blocks or DER)"
    )


def test_bad_exact_subject(certs):
    assert prepared_error(L + f"client_ca = {certs.root_pem}\n[api:a]\nupstream = builtin:echo\nmtls = require\n"
                          "client_subjects = CN=a, O=b\n") == (
        "gw.ini: [api:a] client_subjects: 'CN=a, O=b': not an RFC 4514 name (e.g. 'CN=client,O=Example', "
        "no spaces around ',' and '=', upper-case attribute names)"
    )


def test_expired_entries_and_crl_are_warnings(certs, tmp_path):
    old = pem(tmp_path / "old.pem", make_client(certs.intermediate, "old", days_valid=(-30, -1)).leaf)
    crl = tmp_path / "old.crl"
    crl.write_bytes(make_crl(certs.intermediate, [], next_update_days=-1).public_bytes(serialization.Encoding.PEM))
    p = prepared(L + f"client_ca = {certs.root_pem}\nclient_crl = {crl}\n"
                 f"[api:a]\nupstream = builtin:echo\nmtls = require\nclient_certificates = {old}\n"
                 f"[security]\nclient_certificates = {old}\n")
    joined = "\n".join(p.warnings)
    assert f"gw.ini: [api:a] client_certificates: certificate 'CN=old' expired on " in joined
    assert f"gw.ini: [security] client_certificates: certificate 'CN=old' expired on " in joined
    assert (f"gw.ini: [listener:main] client_crl: {crl}: CRL of 'CN=txgate test intermediate' expired on ") in joined


def test_xfcc_on_listener_that_never_asks_is_a_warning():
    p = prepared(L + "[api:a]\nupstream = builtin:echo\nforward_client_cert = xfcc\n")
    assert any("[api:a] forward_client_cert: listener 'main' does not ask for client certificates" in w
               for w in p.warnings)


def test_security_entries_apply_to_every_mtls_api(certs, tmp_path):
    self_signed = make_client(None, "svc")
    f = pem(tmp_path / "svc.pem", self_signed.leaf)
    other_inter = make_intermediate(certs.root, "x")
    p = prepared(L + f"client_ca = {certs.root_pem}\n"
                 "[api:a]\npath = /a\nupstream = builtin:echo\nmtls = require\n"
                 f"[api:b]\npath = /b\nupstream = builtin:echo\nmtls = require\nclient_certificates = {pem(tmp_path / 'x.pem', other_inter.leaf)}\n"
                 f"[security]\nclient_certificates = {f}\n")
    for name in ("a", "b"):
        assert len(p.allowlists[name].fingerprints) == 1 and not p.allowlists[name].any_verified


def test_client_ca_on_listener_that_never_asks_is_a_warning(certs):
    p = prepared(L + f"client_ca = {certs.root_pem}\n[api:a]\nupstream = builtin:echo\n")
    assert p.client_verifiers == {}
    assert ("gw.ini: [listener:main] client_ca: unused: the listener does not ask for client certificates "
            "(client_auth = none and no mtls = require API)") in p.warnings


def test_crl_that_does_not_cover_an_intermediate_in_the_trust_path_is_a_warning(certs, tmp_path):
    bundle = pem(tmp_path / "bundle.pem", certs.root.leaf, certs.intermediate.leaf)
    other = make_intermediate(certs.root, "txgate other intermediate")
    other_pem = pem(tmp_path / "o.pem", other.leaf)
    root_crl = tmp_path / "root.crl"
    root_crl.write_bytes(make_crl(certs.root, []).public_bytes(serialization.Encoding.PEM))
    inter_crl = tmp_path / "inter.crl"
    inter_crl.write_bytes(make_crl(certs.intermediate, []).public_bytes(serialization.Encoding.PEM))
    # client_ca holds the intermediate; api:a's CA entry adds another one; only the root's CRL is given.
    base = (L + f"client_ca = {bundle}\n" + "client_crl = {crls}\n"
            f"[api:a]\nupstream = builtin:echo\nmtls = require\nclient_certificates = {other_pem}\n")
    p = prepared(base.format(crls=root_crl))
    warnings = [w for w in p.warnings if "is not covered" in w]
    assert warnings == [
        "gw.ini: [listener:main] client_crl: intermediate CA 'CN=txgate test intermediate' in the trust path of "
        "listener 'main' is not covered: no CRL issued by it (the certificates it issues are not revocation-checked)",
        "gw.ini: [listener:main] client_crl: intermediate CA 'CN=txgate other intermediate' in the trust path of "
        "listener 'main' is not covered: no CRL issued by it (the certificates it issues are not revocation-checked)",
    ]
    # The intermediate's own CRL but not the root's: the intermediate itself is unchecked.
    p = prepared(base.format(crls=inter_crl).replace(f"client_certificates = {other_pem}\n", ""))
    assert [w for w in p.warnings if "is not covered" in w] == [
        "gw.ini: [listener:main] client_crl: intermediate CA 'CN=txgate test intermediate' in the trust path of "
        "listener 'main' is not covered: no CRL from its issuer 'CN=txgate test root' (the intermediate itself "
        "is not revocation-checked)",
    ]
    # Both CRLs: covered, no warning; no client_crl at all: nothing to say.
    p = prepared(base.format(crls=f"{root_crl} {inter_crl}").replace(f"client_certificates = {other_pem}\n", ""))
    assert not [w for w in p.warnings if "client_crl" in w]
    p = prepared(base.replace("client_crl = {crls}\n", ""))
    assert not [w for w in p.warnings if "client_crl" in w]


def test_documented_subject_regex_survives_the_ini_file(certs):
    # docs/configuration.md: anchor attribute values against RFC 4514 escapes.
    p = prepared(L + f"client_ca = {certs.root_pem}\n[api:a]\nupstream = builtin:echo\nmtls = require\n"
                 "client_subjects = re:CN=(?:[^,\\\\]|\\\\.)+,O=Example\n")
    m = p.allowlists["a"].subjects
    assert m.regexes[0].pattern == r"CN=(?:[^,\\]|\\.)+,O=Example"
    assert m("CN=web,O=Example") and m(r"CN=Doe\, John,O=Example") and not m(r"CN=evil\,O=Example")
