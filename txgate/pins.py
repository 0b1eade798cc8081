# -*- test-case-name: tests.test_pins -*-
"""SPKI pins: the only door to the native SPKI core (``txgate._spki``) and its pure-Python fallback.

A pin is the SHA-256 of a certificate's DER SubjectPublicKeyInfo (as in HPKP, OkHttp, curl's
``--pinnedpubkey``). Both backends walk the certificate DER themselves, strictly, and reject the same
malformed inputs with the same reason; the fallback is used when the native module is not built or
``TXGATE_NO_NATIVE=1`` is set.

API: BACKEND, describe_backend(), spki_sha256(der), spki_location(der), parse_pin(text),
format_pin(digest), pins_from_file(path), PinSet(digests).first_match(chain_der) -> int | None,
MalformedCertificate (a ValueError with .reason and .index), available_backends() for tests.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import string
from typing import Iterable, Sequence

from twisted.logger import Logger

__all__ = [
    "BACKEND",
    "announce",
    "DIGEST_LEN",
    "MalformedCertificate",
    "PinSet",
    "available_backends",
    "describe_backend",
    "format_pin",
    "parse_pin",
    "pins_from_file",
    "spki_location",
    "spki_sha256",
]

log = Logger(namespace="txgate.pins")

DIGEST_LEN = 32
_PREFIX = "sha256/"

# Reason codes shared with native/spki.h (TXG_E_*): both walkers report the first defect found.
_REASONS = {
    -10: "der_truncated",
    -11: "der_indefinite_length",
    -12: "der_nonminimal_length",
    -13: "der_length_too_large",
    -14: "der_unexpected_tag",
    -15: "der_trailing_bytes",
    -16: "der_empty_value",
}
_E_ARG, _E_NOMEM, _E_CRYPTO = -2, -3, -4


class MalformedCertificate(ValueError):
    """A certificate's DER could not be walked to its SubjectPublicKeyInfo."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        where = f"certificate {index} of the chain" if index is not None else "certificate"
        super().__init__(f"malformed {where}: {reason}")


# --------------------------------------------------------------------------------------------
# Pure-Python strict DER walker: mirrors txg_spki_locate() in native/spki.c check for check.

class _Malformed(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


_TRUNCATED, _INDEFINITE, _NONMINIMAL, _LENGTH, _TAG, _TRAILING, _EMPTY = range(-10, -17, -1)
_SEQ, _INT, _BITS = 0x30, 0x02, 0x03
_TAIL_TAGS = (0x81, 0x82, 0xA3)


def _tlv(buf: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    if pos >= end:
        raise _Malformed(_TRUNCATED)
    if buf[pos] != tag:
        raise _Malformed(_TAG)
    if end - pos < 2:
        raise _Malformed(_TRUNCATED)
    first = buf[pos + 1]
    if first < 0x80:
        length, hdr = first, 2
    elif first == 0x80:
        raise _Malformed(_INDEFINITE)
    else:
        n = first & 0x7F
        if n > 4:
            raise _Malformed(_LENGTH)
        if end - pos - 2 < n:
            raise _Malformed(_TRUNCATED)
        if buf[pos + 2] == 0:
            raise _Malformed(_NONMINIMAL)
        length = int.from_bytes(buf[pos + 2 : pos + 2 + n], "big")
        if length < 0x80:
            raise _Malformed(_NONMINIMAL)
        hdr = 2 + n
    if length > end - pos - hdr:
        raise _Malformed(_TRUNCATED)
    return pos + hdr, pos + hdr + length


def _py_locate(buf: bytes) -> tuple[int, int]:
    """(offset, length) of the SPKI TLV in one DER certificate, or raise _Malformed."""
    end = len(buf)
    c0, c1 = _tlv(buf, 0, end, _SEQ)  # Certificate
    if c1 != end:
        raise _Malformed(_TRAILING)
    t0, t1 = _tlv(buf, c0, c1, _SEQ)  # tbsCertificate
    p = t0
    if p < t1 and buf[p] == 0xA0:  # [0] version
        v0, v1 = _tlv(buf, p, t1, 0xA0)
        i0, i1 = _tlv(buf, v0, v1, _INT)
        if i1 == i0:
            raise _Malformed(_EMPTY)
        if i1 != v1:
            raise _Malformed(_TRAILING)
        p = v1
    i0, i1 = _tlv(buf, p, t1, _INT)  # serialNumber
    if i1 == i0:
        raise _Malformed(_EMPTY)
    p = i1
    for _ in range(4):  # signature, issuer, validity, subject
        p = _tlv(buf, p, t1, _SEQ)[1]
    spki_start = p
    k0, k1 = _tlv(buf, p, t1, _SEQ)  # subjectPublicKeyInfo
    a1 = _tlv(buf, k0, k1, _SEQ)[1]  # algorithm
    b0, b1 = _tlv(buf, a1, k1, _BITS)  # subjectPublicKey
    if b1 == b0:
        raise _Malformed(_EMPTY)
    if b1 != k1:
        raise _Malformed(_TRAILING)
    p = k1
    for tag in _TAIL_TAGS:  # issuerUniqueID, subjectUniqueID, extensions: optional, in order
        if p < t1 and buf[p] == tag:
            p = _tlv(buf, p, t1, tag)[1]
    if p != t1:
        raise _Malformed(_TRAILING)
    p = _tlv(buf, t1, c1, _SEQ)[1]  # signatureAlgorithm
    x0, x1 = _tlv(buf, p, c1, _BITS)  # signatureValue
    if x1 == x0:
        raise _Malformed(_EMPTY)
    if x1 != c1:
        raise _Malformed(_TRAILING)
    return spki_start, k1 - spki_start


def _as_bytes(der) -> bytes:
    if isinstance(der, bytes):
        return der
    if isinstance(der, (bytearray, memoryview)):
        return bytes(der)
    raise TypeError(f"certificate DER must be bytes, not {type(der).__name__}")


def _check_digest(d) -> bytes:
    d = _as_bytes(d)
    if len(d) != DIGEST_LEN:
        raise ValueError(f"a SHA-256 pin is {DIGEST_LEN} bytes, got {len(d)}")
    return d


# --------------------------------------------------------------------------------------------
# Backends: spki_location and spki_sha256 per backend; the pin sets are PinSet subclasses below.

class _PythonBackend:
    name = "python"

    def __init__(self, why: str) -> None:
        self.detail = f"pure Python fallback; {why}"

    def spki_location(self, der: bytes) -> tuple[int, int]:
        der = _as_bytes(der)
        try:
            return _py_locate(der)
        except _Malformed as e:
            raise MalformedCertificate(_REASONS[e.code]) from None

    def spki_sha256(self, der: bytes) -> bytes:
        der = _as_bytes(der)
        off, length = self.spki_location(der)
        return hashlib.sha256(memoryview(der)[off : off + length]).digest()


class _NativeBackend:
    name = "native"

    def __init__(self, module) -> None:
        self.ffi = module.ffi
        self.lib = module.lib
        version = self.ffi.string(self.lib.txg_openssl_version()).decode("ascii", "replace")
        self.detail = f"txgate._spki, {version}"

    def _raise(self, rc: int, index: int | None = None) -> None:
        if rc in _REASONS:
            raise MalformedCertificate(_REASONS[rc], index)
        if rc == _E_NOMEM:
            raise MemoryError("txgate._spki: out of memory")
        raise RuntimeError(f"txgate._spki: unexpected error {rc}")

    def spki_location(self, der: bytes) -> tuple[int, int]:
        der = _as_bytes(der)
        out = self.ffi.new("size_t[2]")
        rc = self.lib.txg_spki_locate(der, len(der), out, out + 1)
        if rc:
            self._raise(rc)
        return int(out[0]), int(out[1])

    def spki_sha256(self, der: bytes) -> bytes:
        der = _as_bytes(der)
        out = self.ffi.new("unsigned char[32]")
        rc = self.lib.txg_spki_sha256(der, len(der), out)
        if rc:
            self._raise(rc)
        return bytes(self.ffi.buffer(out, DIGEST_LEN))


def _load_backends() -> tuple[dict[str, object], object]:
    found: dict[str, object] = {}
    try:
        from txgate import _spki  # type: ignore[attr-defined]
    except ImportError as e:
        why = f"txgate._spki not importable: {e}"
    else:
        found["native"] = _NativeBackend(_spki)
        why = "txgate._spki available"
    if os.environ.get("TXGATE_NO_NATIVE", "") not in ("", "0"):
        why = "TXGATE_NO_NATIVE is set"
        active_name = "python"
    else:
        active_name = "native" if "native" in found else "python"
    found["python"] = _PythonBackend(why)
    return found, found[active_name]


_BACKENDS, _ACTIVE = _load_backends()

#: ``"native"`` or ``"python"``: which backend the module-level functions and PinSet use.
BACKEND: str = _ACTIVE.name  # type: ignore[attr-defined]
_announced = False


def _announce() -> None:
    global _announced
    _announced = True
    log.info("SPKI pin backend: {backend} ({detail})", backend=BACKEND, detail=_ACTIVE.detail)


def announce() -> None:
    """Log the active backend once per process (startup calls it; first use would otherwise)."""
    if not _announced:
        _announce()


def available_backends() -> dict[str, object]:
    """The backends importable here, by name ("native" when built, always "python"): for tests and benchmarks."""
    return dict(_BACKENDS)


def describe_backend() -> str:
    """One line naming the active backend, for ``txgate version`` and startup logs."""
    return f"{BACKEND} ({_ACTIVE.detail})"  # type: ignore[attr-defined]


def _backend(name: str | None):
    if name is None:
        if not _announced:
            _announce()
        return _ACTIVE
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"SPKI backend {name!r} is not available here (have: {', '.join(_BACKENDS)})") from None


# --------------------------------------------------------------------------------------------
# Public functions

def spki_sha256(der: bytes, *, backend: str | None = None) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo of one DER certificate (raises MalformedCertificate)."""
    return _backend(backend).spki_sha256(der)  # type: ignore[attr-defined]


def spki_location(der: bytes, *, backend: str | None = None) -> tuple[int, int]:
    """(offset, length) of the SubjectPublicKeyInfo TLV inside one DER certificate."""
    return _backend(backend).spki_location(der)  # type: ignore[attr-defined]


def format_pin(digest: bytes) -> str:
    """The ``sha256/BASE64`` form of a 32-byte SPKI digest."""
    return _PREFIX + base64.b64encode(_check_digest(digest)).decode("ascii")


_HEX = frozenset(string.hexdigits)
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def parse_pin(text: str) -> bytes:
    """A 32-byte digest from ``sha256/BASE64`` (HPKP/OkHttp) or 64 hex digits (Tyk); ValueError says why not."""
    if not isinstance(text, str):
        raise TypeError(f"a pin is text, not {type(text).__name__}")
    pin = text.strip()
    shown = pin if len(pin) <= 80 else pin[:77] + "..."
    if not pin:
        raise ValueError("empty pin: expected 'sha256/BASE64' or 64 hex digits")
    if pin.lower().startswith(_PREFIX):
        b64 = pin[len(_PREFIX):]
        if not b64 or not _B64.fullmatch(b64) or len(b64) % 4:
            raise ValueError(f"pin {shown!r}: invalid base64 after 'sha256/' (standard alphabet, padded)")
        try:
            digest = base64.b64decode(b64, validate=True)
        except binascii.Error as e:
            raise ValueError(f"pin {shown!r}: invalid base64 after 'sha256/': {e}") from None
        if len(digest) != DIGEST_LEN:
            raise ValueError(f"pin {shown!r}: decodes to {len(digest)} bytes, a SHA-256 pin has {DIGEST_LEN}")
        return digest
    if "/" in pin and re.fullmatch(r"[A-Za-z0-9-]+", pin.split("/", 1)[0]):
        algo = pin.split("/", 1)[0]
        raise ValueError(f"pin {shown!r}: unsupported hash {algo!r}, only 'sha256/' pins are supported")
    if all(c in _HEX for c in pin):
        if len(pin) != 2 * DIGEST_LEN:
            raise ValueError(f"pin {shown!r}: {len(pin)} hex digits, a SHA-256 pin has {2 * DIGEST_LEN}")
        return bytes.fromhex(pin)
    if len(pin) == 2 * DIGEST_LEN:
        raise ValueError(f"pin {shown!r}: not hexadecimal (64 characters, but not all 0-9a-f)")
    hint = ""
    if len(pin) == 44 and _B64.fullmatch(pin):
        hint = " (base64 needs the 'sha256/' prefix)"
    raise ValueError(f"pin {shown!r}: expected 'sha256/BASE64' or 64 hex digits{hint}")


_PEM = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)
_CERT_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"}
_KEY_LABELS = {b"PUBLIC KEY", b"RSA PUBLIC KEY"}
_CSR_LABELS = {b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"}


def _pem_body(body: bytes) -> bytes:
    # RFC 1421 headers ("Proc-Type: ...") precede a blank line; certificates and keys have none.
    lines = [ln.strip() for ln in body.splitlines()]
    if any(b":" in ln for ln in lines):
        raise ValueError("PEM block has headers (encrypted?)")
    return base64.b64decode(b"".join(lines), validate=True)


def _spki_of_public_der(der: bytes, label: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if label in _CSR_LABELS:
        key = x509.load_der_x509_csr(der).public_key()
    elif label == b"RSA PUBLIC KEY":
        pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END RSA PUBLIC KEY-----\n"
        key = serialization.load_pem_public_key(pem)
    else:
        key = serialization.load_der_public_key(der)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pins_from_file(path: str | os.PathLike) -> list[bytes]:
    """SPKI pins of every certificate, public key and CSR in a PEM file (private-key blocks are skipped)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read pin file: {e.strerror or e}") from None
    blocks = _PEM.findall(data)
    if not blocks:
        if b"-----BEGIN" in data:
            raise ValueError(f"{path}: unterminated or malformed PEM block")
        raise ValueError(f"{path}: no PEM block (expected a certificate, public key or CSR)")
    pins: list[bytes] = []
    for n, (label, body) in enumerate(blocks, 1):
        if label.endswith(b"PRIVATE KEY") or label.endswith(b"PARAMETERS"):
            continue
        what = label.decode("ascii").lower()
        try:
            der = _pem_body(body)
        except (ValueError, binascii.Error) as e:
            raise ValueError(f"{path}: PEM block {n} ({what}): {e}") from None
        try:
            if label in _CERT_LABELS:
                if label == b"TRUSTED CERTIFICATE":  # OpenSSL appends trust settings after the cert
                    der = der[: _tlv(der, 0, len(der), _SEQ)[1]]
                pins.append(spki_sha256(der))
            elif label in _KEY_LABELS or label in _CSR_LABELS:
                pins.append(hashlib.sha256(_spki_of_public_der(der, label)).digest())
            else:
                raise ValueError(f"unsupported PEM block type {label.decode('ascii')!r}")
        except _Malformed as e:
            raise ValueError(f"{path}: PEM block {n} ({what}): {_REASONS[e.code]}") from None
        except ValueError as e:
            raise ValueError(f"{path}: PEM block {n} ({what}): {e}") from None
    if not pins:
        raise ValueError(f"{path}: no certificate, public key or CSR (only private keys or parameters)")
    return pins


class PinSet:
    """A set of SPKI SHA-256 pins, built once; ``first_match`` checks a DER chain against it.

    ``PinSet(digests)`` uses the active backend; ``backend="native"|"python"`` picks one (tests,
    benchmarks). Instances are of a backend-specific subclass, so the hot call is one Python frame.
    """

    __slots__ = ("_count",)
    backend = "?"

    def __new__(cls, digests: Iterable[bytes] = (), *, backend: str | None = None) -> "PinSet":
        if cls is PinSet:
            cls = _NativePinSet if _backend(backend).name == "native" else _PythonPinSet  # type: ignore[attr-defined]
        return object.__new__(cls)

    def __init__(self, digests: Iterable[bytes] = (), *, backend: str | None = None) -> None:
        self._build([_check_digest(d) for d in digests])

    def _build(self, digests: list[bytes]) -> None:
        raise NotImplementedError

    def _contains(self, digest: bytes) -> bool:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._count

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, (bytes, bytearray, memoryview)) or len(digest) != DIGEST_LEN:
            return False
        return self._contains(bytes(digest))

    def __repr__(self) -> str:
        return f"<PinSet {len(self)} pins, {self.backend}>"

    def first_match(self, chain_der: Sequence[bytes]) -> int | None:
        """Index of the first certificate whose SPKI is pinned, or None; MalformedCertificate if any is malformed."""
        raise NotImplementedError


class _PythonPinSet(PinSet):
    """Keyed like the C table (first 8 digest bytes); whole digests compared with compare_digest."""

    __slots__ = ("_buckets",)
    backend = "python"

    def _build(self, digests: list[bytes]) -> None:
        buckets: dict[bytes, list[bytes]] = {}
        count = 0
        for d in digests:
            bucket = buckets.setdefault(d[:8], [])
            if d not in bucket:
                bucket.append(d)
                count += 1
        self._buckets = buckets
        self._count = count

    def _contains(self, digest: bytes) -> bool:
        found = False
        for candidate in self._buckets.get(digest[:8], ()):
            found |= hmac.compare_digest(candidate, digest)
        return found

    def first_match(self, chain_der: Sequence[bytes]) -> int | None:
        ders = [_as_bytes(c) for c in chain_der]
        spans = []
        for i, der in enumerate(ders):  # walk everything first, like the C side
            try:
                spans.append(_py_locate(der))
            except _Malformed as e:
                raise MalformedCertificate(_REASONS[e.code], i) from None
        sha256, contains = hashlib.sha256, self._contains
        for i, (der, (off, length)) in enumerate(zip(ders, spans)):
            if contains(sha256(memoryview(der)[off : off + length]).digest()):
                return i
        return None


class _NativePinSet(PinSet):
    __slots__ = ("_ptr",)
    backend = "native"

    def _build(self, digests: list[bytes]) -> None:
        nb = _BACKENDS["native"]
        ffi, lib = nb.ffi, nb.lib  # type: ignore[attr-defined]
        err = ffi.new("int *")
        ptr = lib.txg_pinset_new(b"".join(digests), len(digests), err)
        if ptr == ffi.NULL:
            if err[0] == _E_ARG:
                raise ValueError(f"too many pins ({len(digests):,}): the native pin set holds at most {1 << 26:,}")
            nb._raise(err[0])  # type: ignore[attr-defined]
        self._ptr = ffi.gc(ptr, lib.txg_pinset_free)
        self._count = int(lib.txg_pinset_len(ptr))

    def _contains(self, digest: bytes) -> bool:
        return bool(_BACKENDS["native"].lib.txg_pinset_contains(self._ptr, digest))  # type: ignore[attr-defined]

    def first_match(self, chain_der: Sequence[bytes]) -> int | None:
        # The hot path: scalar lengths for the usual 1-3 certificates (an ffi array costs more
        # than the C work); anything unusual, including every error, goes the general way.
        if type(chain_der) is not list and type(chain_der) is not tuple:
            chain_der = list(chain_der)
        n = len(chain_der)
        buf = b"".join(chain_der)
        if n == 3:
            rc = _match4(self._ptr, buf, len(buf), 3, len(chain_der[0]), len(chain_der[1]), len(chain_der[2]), 0)
        elif n == 2:
            rc = _match4(self._ptr, buf, len(buf), 2, len(chain_der[0]), len(chain_der[1]), 0, 0)
        elif n == 1:
            rc = _match4(self._ptr, buf, len(buf), 1, len(buf), 0, 0, 0)
        else:
            rc = -2
        if rc >= 0:
            return rc
        if rc == -1:
            return None
        return self._general(chain_der, buf)

    def _general(self, chain_der: Sequence[bytes], buf: bytes) -> int | None:
        nb = _BACKENDS["native"]
        ffi, lib = nb.ffi, nb.lib  # type: ignore[attr-defined]
        lens = ffi.new("size_t[]", [len(c) for c in chain_der])
        bad = ffi.new("size_t *")
        rc = lib.txg_chain_first_match(self._ptr, buf, len(buf), lens, len(chain_der), bad)
        if rc >= 0:
            return rc
        if rc == -1:
            return None
        if rc == _E_ARG:  # lengths did not tile the buffer: an item was not a plain byte string
            for c in chain_der:
                _as_bytes(c)
            raise TypeError("certificate DER items must be byte strings")
        nb._raise(rc, int(bad[0]))  # type: ignore[attr-defined]
        return None  # not reached


_match4 = _BACKENDS["native"].lib.txg_chain_first_match4 if "native" in _BACKENDS else None  # type: ignore[attr-defined]
