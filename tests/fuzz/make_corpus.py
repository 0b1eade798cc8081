"""Regenerate the seed corpus of tests/fuzz/fuzz_spki.c (small real certificates plus malformed ones).

Run from the repository root: python tests/fuzz/make_corpus.py. The files are committed; rerunning
gives new keys, which is fine for seeds.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

OUT = Path(__file__).resolve().parent / "corpus"


def cert(key, *, signer=None, cn="fuzz.test", extensions=True) -> bytes:
    signer = signer or key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(0x1F2E3D4C5B6A).not_valid_before(start).not_valid_after(start + timedelta(days=90)))
    if extensions:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    algo = None if isinstance(signer, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    return b.sign(signer, algo).public_bytes(serialization.Encoding.DER)


def enc_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + enc_len(len(content)) + content


def children(content: bytes) -> list[bytes]:
    out, p = [], 0
    while p < len(content):
        first = content[p + 1]
        hdr, length = (2, first) if first < 0x80 else (2 + (first & 0x7F), int.from_bytes(content[p + 2 : p + 2 + (first & 0x7F)], "big"))
        out.append(content[p : p + hdr + length])
        p += hdr + length
    return out


def content_of(e: bytes) -> bytes:
    return e[2:] if e[1] < 0x80 else e[2 + (e[1] & 0x7F):]


def frame_chain(ders: list[bytes]) -> bytes:
    """The chain framing fuzz_spki.c's check_chain reads."""
    head = bytes([len(ders) - 1]) + b"".join(len(d).to_bytes(2, "big") for d in ders[:-1])
    return head + b"".join(ders)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p256 = ec.generate_private_key(ec.SECP256R1())
    seeds = {
        "rsa2048.der": cert(rsa_key),
        "p256.der": cert(p256),
        "p384.der": cert(ec.generate_private_key(ec.SECP384R1()), extensions=False),
        "ed25519.der": cert(ed25519.Ed25519PrivateKey.generate()),
        "ed448.der": cert(ed448.Ed448PrivateKey.generate(), extensions=False),
        "p256-by-rsa.der": cert(p256, signer=rsa_key, cn="leaf.fuzz.test"),
    }
    p = seeds["p256.der"]
    tbs, sigalg, sig = children(content_of(p))
    items = children(content_of(tbs))
    seeds["v1-no-version.der"] = tlv(0x30, tlv(0x30, b"".join(items[1:7])) + sigalg + sig)
    seeds["unique-ids.der"] = tlv(0x30, tlv(0x30, b"".join(items[:7] + [tlv(0x81, b"\x00\x01"), tlv(0x82, b"\x00\x02")] + items[7:])) + sigalg + sig)
    seeds["bad-truncated.der"] = p[:-9]
    seeds["bad-trailing.der"] = p + b"\x00"
    seeds["bad-indefinite.der"] = b"\x30\x80" + content_of(p) + b"\x00\x00"
    seeds["bad-nonminimal.der"] = b"\x30\x82\x00" + bytes([len(content_of(p))]) + content_of(p) if len(content_of(p)) < 256 else b"\x30\x83\x00" + enc_len(len(content_of(p)))[1:] + content_of(p)
    seeds["bad-empty-serial.der"] = tlv(0x30, tlv(0x30, b"".join([items[0], b"\x02\x00"] + items[2:])) + sigalg + sig)
    seeds["chain-3.bin"] = frame_chain([seeds["p256-by-rsa.der"], seeds["rsa2048.der"], seeds["ed25519.der"]])
    seeds["chain-2-bad.bin"] = frame_chain([seeds["p256.der"], seeds["bad-trailing.der"]])
    for name, data in seeds.items():
        (OUT / name).write_bytes(data)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
