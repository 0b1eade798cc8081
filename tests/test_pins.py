"""txgate.pins: native SPKI core vs the pure-Python fallback, strict DER, pin sets, pin parsing."""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from txgate import pins

REPO = Path(__file__).resolve().parent.parent
BACKENDS = pins.available_backends()
HAVE_NATIVE = "native" in BACKENDS

if not HAVE_NATIVE and os.environ.get("CI"):
    # CI builds txgate._spki (tests/run.sh installs in compat mode): a missing module is a build bug.
    raise RuntimeError("txgate._spki is not built in CI: " + pins.describe_backend())

needs_native = pytest.mark.skipif(
    not HAVE_NATIVE,
    reason="txgate._spki is not built (pip install -e . --config-settings editable_mode=compat builds it); "
    "native-vs-fallback comparisons need it",
)
both = pytest.mark.parametrize(
    "backend",
    [pytest.param("native", marks=needs_native), "python"],
)

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------------------------
# Certificates

@lru_cache(maxsize=None)
def key_pool() -> dict[str, list]:
    """A few keys of each kind, generated once per session (RSA keygen is slow)."""
    return {
        "rsa2048": [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)],
        "rsa3072": [rsa.generate_private_key(public_exponent=65537, key_size=3072)],
        "p256": [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)],
        "p384": [ec.generate_private_key(ec.SECP384R1()) for _ in range(2)],
        "ed25519": [ed25519.Ed25519PrivateKey.generate() for _ in range(2)],
    }


def _hash_for(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def build_cert(
    key,
    *,
    signer=None,
    cn: str = "txgate test",
    org: str | None = None,
    serial: int = 1000,
    not_before: datetime | None = None,
    days: int = 30,
    extensions: bool = True,
    sans: tuple[str, ...] = ("example.test",),
) -> x509.Certificate:
    signer = signer or key
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    name = x509.Name(attrs)
    not_before = not_before or datetime(2026, 1, 1, tzinfo=timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer " + cn[:20])]) if signer is not key else name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=days))
    )
    if extensions:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    return builder.sign(signer, _hash_for(signer))


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def reference_pin(cert: x509.Certificate) -> bytes:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


@lru_cache(maxsize=None)
def sample_ders() -> dict[str, bytes]:
    """Fixed real certificates of every key type, with and without extensions."""
    pool = key_pool()
    out = {}
    for kind, keys in pool.items():
        out[kind] = der_of(build_cert(keys[0], sans=("a.example", "b.example"), serial=0x1234567890ABCDEF))
        out[kind + "-noext"] = der_of(build_cert(keys[-1], extensions=False, serial=7))
    return out


# Minimal DER tools for crafting certificates cryptography will not write (v1, unique IDs).
def enc_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + enc_len(len(content)) + content


def children(content: bytes) -> list[bytes]:
    """Split DER content into its TLVs (test helper; assumes well-formed input)."""
    out, p = [], 0
    while p < len(content):
        first = content[p + 1]
        if first < 0x80:
            hdr, length = 2, first
        else:
            n = first & 0x7F
            hdr, length = 2 + n, int.from_bytes(content[p + 2 : p + 2 + n], "big")
        out.append(content[p : p + hdr + length])
        p += hdr + length
    return out


def content_of(element: bytes) -> bytes:
    first = element[1]
    hdr = 2 if first < 0x80 else 2 + (first & 0x7F)
    return element[hdr:]


def split_cert(der: bytes) -> tuple[list[bytes], bytes, bytes]:
    tbs, sigalg, sig = children(content_of(der))
    return children(content_of(tbs)), sigalg, sig


def join_cert(tbs_items: list[bytes], sigalg: bytes, sig: bytes) -> bytes:
    return tlv(0x30, tlv(0x30, b"".join(tbs_items)) + sigalg + sig)


def outcome(backend: str, der: bytes):
    """What a backend says about one blob: ('ok', digest, location) or ('err', reason)."""
    try:
        digest = pins.spki_sha256(der, backend=backend)
        loc = pins.spki_location(der, backend=backend)
    except pins.MalformedCertificate as e:
        return ("err", e.reason)
    return ("ok", digest, loc)


# ----------------------------------------------------------------------------------------------
# Identical pins on generated certificates

KEY_KINDS = ["rsa2048", "rsa3072", "p256", "p384", "ed25519"]


@st.composite
def certificates(draw):
    pool = key_pool()
    kind = draw(st.sampled_from(KEY_KINDS))
    key = draw(st.sampled_from(pool[kind]))
    signer_kind = draw(st.sampled_from(["self"] + KEY_KINDS))
    signer = key if signer_kind == "self" else pool[signer_kind][0]
    cn = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_categories=("Cs",)), min_size=1, max_size=30))
    org = draw(st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40))
    serial = draw(st.integers(min_value=1, max_value=2**159 - 1))
    not_before = draw(
        st.datetimes(min_value=datetime(1951, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc))
    ).replace(microsecond=0)
    days = draw(st.integers(min_value=1, max_value=36500))
    assume(not_before + timedelta(days=days) < datetime(9999, 1, 1, tzinfo=timezone.utc))
    extensions = draw(st.booleans())
    sans = tuple(draw(st.lists(st.from_regex(r"[a-z]{1,12}\.(test|example)", fullmatch=True), max_size=20)))
    return build_cert(key, signer=signer, cn=cn, org=org, serial=serial, not_before=not_before, days=days,
                      extensions=extensions, sans=sans)


@needs_native
@SETTINGS
@given(cert=certificates())
def test_native_and_fallback_give_identical_pins_on_generated_certificates(cert):
    der = der_of(cert)
    expected = reference_pin(cert)
    assert pins.spki_sha256(der, backend="native") == expected
    assert pins.spki_sha256(der, backend="python") == expected
    off, length = pins.spki_location(der, backend="native")
    assert pins.spki_location(der, backend="python") == (off, length)
    assert der[off : off + length] == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@SETTINGS
@given(cert=certificates())
def test_active_backend_pin_matches_cryptography(cert):
    assert pins.spki_sha256(der_of(cert)) == reference_pin(cert)


@both
@pytest.mark.parametrize("kind", KEY_KINDS)
def test_every_key_type_with_and_without_extensions(backend, kind):
    pool = key_pool()
    for suffix in ("", "-noext"):
        der = sample_ders()[kind + suffix]
        assert pins.spki_sha256(der, backend=backend) == reference_pin(x509.load_der_x509_certificate(der))


@both
def test_v1_certificate_without_version_and_with_unique_ids(backend):
    der = sample_ders()["p256"]
    items, sigalg, sig = split_cert(der)
    assert items[0][0] == 0xA0  # cryptography writes v3
    expected = pins.spki_sha256(der, backend="python")
    assert len(items) == 8 and items[7][0] == 0xA3  # version serial sigalg issuer validity subject spki [3]
    v1 = join_cert(items[1:7], sigalg, sig)  # no version, no extensions
    assert pins.spki_sha256(v1, backend=backend) == expected
    with_ids = join_cert(items[:7] + [tlv(0x81, b"\x00\x01"), tlv(0x82, b"\x00\x02")] + items[7:], sigalg, sig)
    assert pins.spki_sha256(with_ids, backend=backend) == expected
    only_subject_id = join_cert(items[:7] + [tlv(0x82, b"\x00")] + items[7:], sigalg, sig)
    assert pins.spki_sha256(only_subject_id, backend=backend) == expected


@both
def test_unique_ids_out_of_order_are_rejected(backend):
    items, sigalg, sig = split_cert(sample_ders()["p256"])
    swapped = join_cert(items[:7] + [tlv(0x82, b"\x00"), tlv(0x81, b"\x00")] + items[7:], sigalg, sig)
    extensions_first = join_cert(items + [tlv(0x81, b"\x00")], sigalg, sig)
    for der in (swapped, extensions_first):
        with pytest.raises(pins.MalformedCertificate) as e:
            pins.spki_sha256(der, backend=backend)
        assert e.value.reason == "der_trailing_bytes"


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")
@pytest.mark.parametrize("keyopt", [["-newkey", "rsa:2048"], ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
                                    ["-newkey", "ed25519"]])
def test_pins_agree_with_openssl_pipeline(tmp_path, keyopt):
    cert = tmp_path / "cert.pem"
    subprocess.run([OPENSSL, "req", "-x509", *keyopt, "-nodes", "-keyout", str(tmp_path / "key.pem"), "-out", str(cert),
                    "-subj", "/CN=openssl.test/O=txgate", "-days", "3"], check=True, capture_output=True)
    pipeline = (f"{OPENSSL} x509 -in {cert} -pubkey -noout | {OPENSSL} pkey -pubin -outform der"
                f" | {OPENSSL} dgst -sha256 -binary | base64")
    expected = "sha256/" + subprocess.run(pipeline, shell=True, check=True, capture_output=True, text=True).stdout.strip()
    [digest] = pins.pins_from_file(cert)
    assert pins.format_pin(digest) == expected
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    for name in BACKENDS:
        assert pins.format_pin(pins.spki_sha256(der, backend=name)) == expected


# ----------------------------------------------------------------------------------------------
# Strict DER: both reject the same inputs, with the same reason

@both
@pytest.mark.parametrize("kind", ["rsa2048", "p256", "ed25519-noext"])
def test_every_prefix_of_a_real_certificate_is_rejected(backend, kind):
    der = sample_ders()[kind]
    for n in range(len(der)):
        with pytest.raises(pins.MalformedCertificate) as e:
            pins.spki_sha256(der[:n], backend=backend)
        assert e.value.reason == "der_truncated", n


@needs_native
@pytest.mark.parametrize("kind", ["rsa3072", "p384"])
def test_prefixes_and_chains_agree_between_backends(kind):
    der = sample_ders()[kind]
    pin = reference_pin(x509.load_der_x509_certificate(der))
    sets = [pins.PinSet([pin], backend=name) for name in ("native", "python")]
    for n in range(0, len(der), 7):
        assert outcome("native", der[:n]) == outcome("python", der[:n])
        for s in sets:
            with pytest.raises(pins.MalformedCertificate) as e:
                s.first_match([der, der[:n]])
            assert (e.value.index, e.value.reason) == (1, "der_truncated")


def _mutate_outer_length(der: bytes, new_header: bytes) -> bytes:
    first = der[1]
    hdr = 2 if first < 0x80 else 2 + (first & 0x7F)
    return new_header + der[hdr:]


MALFORMED_CASES = [
    "trailing byte", "trailing cert", "indefinite outer", "non-minimal outer (leading zero)",
    "non-minimal inner (long form for short)", "length of length 5", "reserved 0xff length", "wrong outer tag",
    "serial not INTEGER", "empty serial", "empty version", "version with trailing", "missing subject",
    "spki with extra", "spki key not BIT STRING", "empty spki BIT STRING", "junk after extensions", "no signature",
    "empty signature", "extra after signature", "inner length past outer", "empty input", "lone tag",
]


@lru_cache(maxsize=None)
def malformed_cases() -> dict[str, tuple[bytes, str]]:
    der = sample_ders()["p256"]
    items, sigalg, sig = split_cert(der)
    content = content_of(der)
    n = len(content)
    long_len = enc_len(n)
    version = items[0]
    cases = {
        "trailing byte": (der + b"\x00", "der_trailing_bytes"),
        "trailing cert": (der + der, "der_trailing_bytes"),
        "indefinite outer": (b"\x30\x80" + content + b"\x00\x00", "der_indefinite_length"),
        "non-minimal outer (leading zero)": (
            _mutate_outer_length(der, b"\x30" + bytes([long_len[0] + 1, 0]) + long_len[1:]), "der_nonminimal_length"),
        "non-minimal inner (long form for short)": (
            join_cert([b"\xa0\x81\x03" + version[2:]] + items[1:], sigalg, sig), "der_nonminimal_length"),
        "length of length 5": (b"\x30\x85\x00\x00\x00\x01\x00" + content, "der_length_too_large"),
        "reserved 0xff length": (b"\x30\xff" + content, "der_length_too_large"),
        "wrong outer tag": (b"\x31" + der[1:], "der_unexpected_tag"),
        "serial not INTEGER": (join_cert([version, b"\x04" + items[1][1:]] + items[2:], sigalg, sig), "der_unexpected_tag"),
        "empty serial": (join_cert([version, b"\x02\x00"] + items[2:], sigalg, sig), "der_empty_value"),
        "empty version": (join_cert([b"\xa0\x02\x02\x00"] + items[1:], sigalg, sig), "der_empty_value"),
        "version with trailing": (join_cert([tlv(0xA0, content_of(version) + b"\x05\x00")] + items[1:], sigalg, sig),
                                  "der_trailing_bytes"),
        "missing subject": (join_cert(items[:5] + items[6:], sigalg, sig), "der_unexpected_tag"),
        "spki with extra": (join_cert(items[:6] + [tlv(0x30, content_of(items[6]) + b"\x05\x00")] + items[7:], sigalg, sig),
                            "der_trailing_bytes"),
        "spki key not BIT STRING": (join_cert(items[:6] + [tlv(0x30, children(content_of(items[6]))[0] + b"\x04\x01\x00")]
                                              + items[7:], sigalg, sig), "der_unexpected_tag"),
        "empty spki BIT STRING": (join_cert(items[:6] + [tlv(0x30, children(content_of(items[6]))[0] + b"\x03\x00")]
                                            + items[7:], sigalg, sig), "der_empty_value"),
        "junk after extensions": (join_cert(items + [b"\x05\x00"], sigalg, sig), "der_trailing_bytes"),
        "no signature": (tlv(0x30, tlv(0x30, b"".join(items)) + sigalg), "der_truncated"),
        "empty signature": (join_cert(items, sigalg, b"\x03\x00"), "der_empty_value"),
        "extra after signature": (tlv(0x30, tlv(0x30, b"".join(items)) + sigalg + sig + b"\x05\x00"), "der_trailing_bytes"),
        "inner length past outer": (b"\x30\x03\x30\x05\x00", "der_truncated"),
        "empty input": (b"", "der_truncated"),
        "lone tag": (b"\x30", "der_truncated"),
    }
    return cases


@both
@pytest.mark.parametrize("case", MALFORMED_CASES)
def test_malformed_der_is_rejected_with_its_reason(backend, case):
    assert sorted(malformed_cases()) == sorted(MALFORMED_CASES)
    der, reason = malformed_cases()[case]
    with pytest.raises(pins.MalformedCertificate) as e:
        pins.spki_sha256(der, backend=backend)
    assert e.value.reason == reason
    with pytest.raises(pins.MalformedCertificate) as e:
        pins.PinSet([b"\x00" * 32], backend=backend).first_match([sample_ders()["p256"], der])
    assert (e.value.index, e.value.reason) == (1, reason)


@st.composite
def mutations(draw):
    base = draw(st.sampled_from(sorted(sample_ders())))
    der = bytearray(sample_ders()[base])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "append", "truncate"]))
        pos = draw(st.integers(min_value=0, max_value=max(len(der) - 1, 0)))
        if op == "flip" and der:
            der[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and der:
            der[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            der[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and der:
            del der[pos : pos + draw(st.integers(1, 4))]
        elif op == "append":
            der += draw(st.binary(min_size=1, max_size=4))
        elif op == "truncate":
            del der[pos:]
    return bytes(der)


@needs_native
@settings(SETTINGS, max_examples=1500)
@given(der=mutations())
def test_native_and_fallback_agree_on_every_mutated_certificate(der):
    native = outcome("native", der)
    assert native == outcome("python", der)
    if native[0] == "ok":
        off, length = native[2]
        assert native[1] == hashlib.sha256(der[off : off + length]).digest()


@needs_native
@settings(SETTINGS, max_examples=300)
@given(blob=st.binary(max_size=64) | st.builds(lambda b: b"\x30" + b, st.binary(max_size=64)))
def test_native_and_fallback_agree_on_random_bytes(blob):
    assert outcome("native", blob) == outcome("python", blob)


@needs_native
def test_single_bit_flips_near_the_headers_agree_exhaustively():
    der = sample_ders()["ed25519"]
    for pos in range(min(len(der), 200)):
        for bit in range(8):
            m = bytearray(der)
            m[pos] ^= 1 << bit
            assert outcome("native", bytes(m)) == outcome("python", bytes(m)), (pos, bit)


# ----------------------------------------------------------------------------------------------
# Pin sets

@lru_cache(maxsize=None)
def three_chain() -> tuple[list[bytes], list[bytes]]:
    pool = key_pool()
    chain = [
        der_of(build_cert(pool["p256"][1], signer=pool["rsa2048"][1], cn="leaf.test")),
        der_of(build_cert(pool["rsa2048"][1], signer=pool["rsa3072"][0], cn="Intermediate")),
        der_of(build_cert(pool["rsa3072"][0], cn="Root")),
    ]
    return chain, [reference_pin(x509.load_der_x509_certificate(d)) for d in chain]


@lru_cache(maxsize=None)
def random_digests(n: int) -> tuple[bytes, ...]:
    blob = os.urandom(32 * n)
    return tuple(blob[i : i + 32] for i in range(0, len(blob), 32))


@both
@pytest.mark.parametrize("size", [1, 1000, 100_000])
def test_pinset_finds_match_at_each_chain_position(backend, size):
    chain, chain_pins = three_chain()
    others = list(random_digests(size))[: size - 1]
    absent = pins.PinSet(random_digests(size), backend=backend)
    assert len(absent) == size
    assert absent.first_match(chain) is None
    for index in range(3):
        s = pins.PinSet(others + [chain_pins[index]], backend=backend)
        assert len(s) == size
        assert s.first_match(chain) == index
        assert chain_pins[index] in s
        assert s.first_match(chain[index:]) == 0
    both_ends = pins.PinSet(others + [chain_pins[2], chain_pins[1]], backend=backend)
    assert both_ends.first_match(chain) == 1


@both
def test_pinset_edge_cases(backend):
    chain, chain_pins = three_chain()
    s = pins.PinSet(chain_pins[:1] * 5, backend=backend)
    assert len(s) == 1
    assert s.first_match([]) is None
    assert s.first_match([bytearray(chain[0])]) == 0
    assert s.first_match([memoryview(chain[0])]) == 0
    assert b"x" not in s and "text" not in s and chain_pins[1] not in s
    assert isinstance(s, pins.PinSet) and s.backend == backend and backend in repr(s)
    assert s.first_match(iter(chain)) == 0
    assert s.first_match(tuple(chain)) == 0
    # Longer chains take the general path (the native fast path covers 1-3 certificates).
    for extra in (1, 2, 10, 40):
        long_chain = chain[1:] * extra + chain[:1]
        assert s.first_match(long_chain) == len(long_chain) - 1
        assert pins.PinSet(chain_pins[1:2], backend=backend).first_match(long_chain) == 0
    with pytest.raises(pins.MalformedCertificate) as e:
        s.first_match(chain[1:] * 3 + [b"\x30\x00"])
    assert (e.value.index, e.value.reason) == (6, "der_truncated")
    empty = pins.PinSet([], backend=backend)
    assert len(empty) == 0 and empty.first_match(chain) is None
    with pytest.raises(ValueError, match="32 bytes"):
        pins.PinSet([b"\x00" * 31], backend=backend)
    with pytest.raises(TypeError):
        s.first_match(["not bytes"])
    # A malformed certificate fails the chain even after a match: the chain is walked first.
    with pytest.raises(pins.MalformedCertificate) as e:
        s.first_match([chain[0], chain[1][:-1], chain[2]])
    assert e.value.index == 1


@both
def test_pinset_distinguishes_digests_sharing_the_hash_key(backend):
    # Same first 8 bytes (the table key): the whole 32 bytes must still be compared.
    base = b"\xaa" * 8
    stored = [base + bytes([i]) * 24 for i in range(50)]
    s = pins.PinSet(stored, backend=backend)
    assert len(s) == 50
    for d in stored:
        assert d in s
    assert base + b"\xff" * 24 not in s
    assert base + bytes([1]) * 23 + b"\x02" not in s  # differs only in the last byte
    # Dense clustering in one region of the table, wrapping around its end.
    wrap = [b"\xff" * 7 + bytes([0xFF - i]) + os.urandom(24) for i in range(40)]
    s2 = pins.PinSet(wrap, backend=backend)
    assert all(d in s2 for d in wrap)
    assert not any(d in s2 for d in random_digests(1000))


@needs_native
@SETTINGS
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=200), st.lists(st.binary(min_size=32, max_size=32), max_size=50))
def test_native_and_fallback_pinsets_agree(stored, probes):
    n, p = pins.PinSet(stored, backend="native"), pins.PinSet(stored, backend="python")
    assert len(n) == len(p) == len(set(stored))
    for d in stored + probes:
        assert (d in n) == (d in p) == (d in set(stored))


# ----------------------------------------------------------------------------------------------
# Pin text and files

def test_parse_pin_accepts_both_forms_and_round_trips():
    digest = bytes(range(32))
    b64 = base64.b64encode(digest).decode()
    assert pins.parse_pin("sha256/" + b64) == digest
    assert pins.parse_pin("  SHA256/" + b64 + "\n") == digest
    assert pins.parse_pin(digest.hex()) == digest
    assert pins.parse_pin(digest.hex().upper()) == digest
    assert pins.format_pin(digest) == "sha256/" + b64
    assert pins.parse_pin(pins.format_pin(digest)) == digest
    with pytest.raises(ValueError, match="32 bytes"):
        pins.format_pin(b"short")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty pin"),
        ("sha256/", "invalid base64"),
        ("sha256/not base64!!", "invalid base64"),
        ("sha256/" + "A" * 43, "invalid base64"),  # unpadded
        ("sha256/" + base64.b64encode(b"\x01" * 20).decode(), "decodes to 20 bytes, a SHA-256 pin has 32"),
        ("sha256/" + base64.b64encode(b"\x01" * 33).decode(), "decodes to 33 bytes"),
        ("sha256/" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "invalid base64"),
        ("sha1/" + base64.b64encode(b"\x01" * 20).decode(), "unsupported hash 'sha1'"),
        ("ab" * 31, "62 hex digits, a SHA-256 pin has 64"),
        ("ab" * 33, "66 hex digits"),
        ("g" + "a" * 63, "not hexadecimal"),
        (base64.b64encode(b"\x01" * 32).decode(), "needs the 'sha256/' prefix"),
        ("pin please", "expected 'sha256/BASE64' or 64 hex digits"),
    ],
)
def test_parse_pin_rejects_with_clear_messages(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("/", "/")):
        pins.parse_pin(text)


def test_pins_from_file_reads_certificates_keys_and_csrs(tmp_path):
    pool = key_pool()
    key = pool["p384"][0]
    cert = build_cert(key)
    other = build_cert(pool["ed25519"][0])
    pin, other_pin = reference_pin(cert), reference_pin(other)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    (tmp_path / "one.pem").write_bytes(pem)
    assert pins.pins_from_file(tmp_path / "one.pem") == [pin]
    (tmp_path / "chain.pem").write_bytes(pem + other.public_bytes(serialization.Encoding.PEM))
    assert pins.pins_from_file(str(tmp_path / "chain.pem")) == [pin, other_pin]
    (tmp_path / "combined.pem").write_bytes(key_pem + pem)
    assert pins.pins_from_file(tmp_path / "combined.pem") == [pin]
    (tmp_path / "pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert pins.pins_from_file(tmp_path / "pub.pem") == [pin]
    rsa_key = pool["rsa2048"][0]
    (tmp_path / "pkcs1.pem").write_bytes(rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))
    assert pins.pins_from_file(tmp_path / "pkcs1.pem") == [reference_pin(build_cert(rsa_key))]
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr.test")]))
           .sign(key, hashes.SHA256()))
    (tmp_path / "req.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    assert pins.pins_from_file(tmp_path / "req.csr") == [pin]


def test_pins_from_file_errors_name_the_file(tmp_path):
    key = key_pool()["p256"][0]
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ValueError, match=r"key\.pem: no certificate, public key or CSR"):
        pins.pins_from_file(tmp_path / "key.pem")
    (tmp_path / "junk.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"junk\.txt: no PEM block"):
        pins.pins_from_file(tmp_path / "junk.txt")
    with pytest.raises(ValueError, match="cannot read pin file"):
        pins.pins_from_file(tmp_path / "missing.pem")
    der = sample_ders()["p256"]
    bad = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der[:-5]) + b"-----END CERTIFICATE-----\n"
    (tmp_path / "bad.pem").write_bytes(bad)
    with pytest.raises(ValueError, match=r"bad\.pem: PEM block 1 \(certificate\): malformed certificate: der_truncated"):
        pins.pins_from_file(tmp_path / "bad.pem")


# ----------------------------------------------------------------------------------------------
# Backend selection

def _run_python(code: str, **env) -> str:
    e = dict(os.environ)
    e.update(env)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


PROBE = """
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(lambda e: events.append(e) if e.get("log_namespace") == "txgate.pins" else None)
    from txgate import pins
    print(pins.BACKEND)
    print(pins.describe_backend())
    print(len(events))
    pins.parse_pin("ab" * 32)
    pins.PinSet([b"x" * 32]); pins.PinSet([b"y" * 32])
    print(len(events), events[0]["backend"] if events else None)
"""


def test_txgate_no_native_selects_the_fallback_and_logs_it_once():
    out = _run_python(PROBE, TXGATE_NO_NATIVE="1").splitlines()
    assert out[0] == "python"
    assert out[1].startswith("python (pure Python fallback; TXGATE_NO_NATIVE is set")
    assert out[2] == "0"  # nothing logged at import
    assert out[3] == "1 python"  # once, on first use


@needs_native
def test_native_backend_is_active_when_built():
    out = _run_python(PROBE, TXGATE_NO_NATIVE="").splitlines()
    assert out[0] == "native"
    assert out[1].startswith("native (txgate._spki, OpenSSL ")
    assert out[3] == "1 native"
    assert pins.BACKEND == ("python" if os.environ.get("TXGATE_NO_NATIVE") not in (None, "", "0") else "native")
