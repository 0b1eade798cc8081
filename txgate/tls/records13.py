# -*- test-case-name: tests.test_records13 -*-
"""TLS 1.3 application records after the handshake (RFC 8446 section 5), without OpenSSL's ``SSL``.

OpenSSL does the handshake; once it is complete, a downstream TLS 1.3 connection hands its two
application traffic secrets and record sequence numbers to a `Records` object and its ``SSL`` object
is freed. OpenSSL's per-connection state is ~23 KiB (the ``SSL`` object of the OpenSSL inside
cryptography's wheel is ~16 KiB before any handshake); a `Records` object with its two AEAD objects
is ~5 KiB. That is what lets an idle keep-alive connection cost a few KiB (issue 17).

What it implements, and only that: the record framing (``TLSCiphertext``/``TLSInnerPlaintext``), the
per-record nonce (the static IV XOR the 64-bit sequence number), the three AEAD suites OpenSSL enables
by default for TLS 1.3 (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305: the AEADs of the ``cryptography``
package, i.e. its OpenSSL), ``KeyUpdate`` (section 4.6.3; when the peer asks, ours goes before our
next application data record, so any number of requests while we are silent cost one), alerts
(``close_notify`` both ways; any other alert from the peer ends the connection) and the checks a
receiver must make: record size, content types allowed after the handshake, zero padding, a record
that does not authenticate (``bad_record_mac``), handshake messages other than ``KeyUpdate``
(``unexpected_message``). Everything else stays with OpenSSL: the handshake, session tickets (sent
before the hand-over), TLS 1.2 connections and any other suite, which keep their ``SSL`` object.

Failures raise `RecordError` carrying the alert to send; `Records.alert` protects it.
"""
from __future__ import annotations

import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

try:  # the C HMAC object that hmac.new wraps in Python: the same OpenSSL HMAC, fewer calls
    from _hashlib import hmac_new as _hmac_new
except ImportError:  # pragma: no cover - a CPython without OpenSSL's hashlib
    from hmac import new as _hmac_new

APPLICATION_DATA = 23
ALERT = 21
HANDSHAKE = 22
CHANGE_CIPHER_SPEC = 20
KEY_UPDATE = 24

MAX_PLAINTEXT = 1 << 14  # bytes of content in one record (2^14)
MAX_CIPHERTEXT = MAX_PLAINTEXT + 256  # TLSCiphertext.length at most (section 5.2)
TAG = 16  # every suite here has a 16-byte tag
# TLSCiphertext.length at most for a TLSInnerPlaintext (content, type and padding) of 2^14 + 1 bytes
# (section 5.4): a longer record that authenticates is record_overflow, padded or not.
_MAX_INNER = MAX_PLAINTEXT + 1 + TAG

# Alert descriptions (section 6)
CLOSE_NOTIFY = 0
UNEXPECTED_MESSAGE = 10
BAD_RECORD_MAC = 20
RECORD_OVERFLOW = 22
ILLEGAL_PARAMETER = 47
DECODE_ERROR = 50
INTERNAL_ERROR = 80

_HEADER = struct.Struct(">BHH")
_TYPE_BYTE = tuple(bytes((i,)) for i in range(256))
_SEQ_LIMIT = (1 << 64) - 1  # a sequence number must not wrap (section 5.3): the connection ends first
# Records under one write key before we update it ourselves (section 5.5: AES-GCM's margin is 2^24.5
# full-size records; ChaCha20-Poly1305 needs none, but an update costs nothing there either).
_REKEY_AT = 1 << 24
_MAX_HANDSHAKE_BUFFER = 1 << 10  # a post-handshake message we accept (KeyUpdate) is 5 bytes


class RecordError(Exception):
    """The connection must end, after sending this alert (``alert`` is a description, section 6)."""

    def __init__(self, alert: int, message: str) -> None:
        super().__init__(message)
        self.alert = alert


def _info(label: bytes, length: int) -> bytes:
    """The HMAC input of HKDF-Expand-Label (section 7.1) with an empty context and one output block:
    the ``HkdfLabel`` then the block counter 1."""
    full = b"tls13 " + label
    return struct.pack(">HB", length, len(full)) + full + b"\x00\x01"


def expand_label(secret: bytes, label: bytes, length: int, hash_name: str) -> bytes:
    """HKDF-Expand-Label (section 7.1) with an empty context, for lengths up to the hash's size
    (all this module needs: keys, IVs and the next traffic secret are one HMAC block)."""
    return hmac.digest(secret, _info(label, length), hash_name)[:length]


def _suite(aead: type, key_len: int, hash_name: str) -> tuple:
    # (AEAD class, key length, hash name of the HKDF, HMAC input of the key, of the IV)
    return (aead, key_len, hash_name, _info(b"key", key_len), _info(b"iv", 12))


# suite name (as OpenSSL names it) -> (AEAD class, key length, hash name of the HKDF, and the HMAC
# inputs that derive the key and the IV from a traffic secret: the same for every connection)
SUITES = {
    "TLS_AES_128_GCM_SHA256": _suite(AESGCM, 16, "sha256"),
    "TLS_AES_256_GCM_SHA384": _suite(AESGCM, 32, "sha384"),
    "TLS_CHACHA20_POLY1305_SHA256": _suite(ChaCha20Poly1305, 32, "sha256"),
}


def count_records(data: bytes) -> int | None:
    """How many whole records ``data`` holds; None when it ends inside one."""
    pos, size, n = 0, len(data), 0
    while pos < size:
        if size - pos < 5:
            return None
        pos += 5 + _HEADER.unpack_from(data, pos)[2]
        n += 1
    return n if pos == size else None


class _Direction:
    """One direction's traffic secret, AEAD, static IV and sequence number."""

    __slots__ = ("secret", "aead", "iv", "seq")

    def __init__(self, secret: bytes, suite: tuple, seq: int = 0) -> None:
        # The key and the IV (section 7.3) are HKDF-Expand-Label of one secret: one keyed HMAC state
        # (the secret's inner and outer pads hashed once), copied for the key, then finished for the IV.
        cls, key_len, hash_name, key_info, iv_info = suite
        mac = _hmac_new(secret, b"", hash_name)
        key = mac.copy()
        key.update(key_info)
        mac.update(iv_info)
        self.secret = secret
        self.aead = cls(key.digest()[:key_len])
        self.iv = int.from_bytes(mac.digest()[:12], "big")
        self.seq = seq

    def update(self, suite: tuple) -> None:
        """The next generation of traffic secret (section 7.2), sequence number back to 0."""
        self.__init__(expand_label(self.secret, b"traffic upd", len(self.secret), suite[2]), suite)


class Records:
    """Both directions of one TLS 1.3 connection's application records.

    ``unprotect(data)`` takes bytes as they arrive and returns the application data of the records
    they complete; protected output (records, KeyUpdate answers, alerts) accumulates in ``out`` for
    the caller to send."""

    __slots__ = ("suite", "read", "write", "_buf", "_hs", "out", "closed_by_peer", "closed_by_us", "alpn",
                 "_update_due")

    def __init__(self, suite_name: str, client_secret: bytes, server_secret: bytes, *,
                 read_seq: int = 0, write_seq: int = 0, alpn: bytes | None = None) -> None:
        suite = SUITES[suite_name]
        self.suite = suite
        self.read = _Direction(client_secret, suite, read_seq)
        self.write = _Direction(server_secret, suite, write_seq)
        self._buf = b""
        self._hs = b""  # a post-handshake handshake message split across records
        self.out: list[bytes] = []
        self.closed_by_peer = False
        self.closed_by_us = False
        self.alpn = alpn
        self._update_due = False  # the peer asked for a KeyUpdate: ours goes before our next data

    # -- receiving ------------------------------------------------------------------------------
    def unprotect(self, data: bytes) -> list[bytes]:
        """The application data of each complete record in ``buffer + data`` (none while a record is
        partial), one item per record: a receiver may stop between records, as with OpenSSL. At the
        peer's close_notify ``closed_by_peer`` turns True, the data before it is returned and nothing
        after it is read. Raises `RecordError` on anything the connection must end for."""
        buf = self._buf + data if self._buf else data
        size = len(buf)
        pos = 0
        parts = []
        while size - pos >= 5:
            ctype, _version, length = _HEADER.unpack_from(buf, pos)
            if length > MAX_CIPHERTEXT:
                raise RecordError(RECORD_OVERFLOW, f"record of {length} bytes")
            end = pos + 5 + length
            if end > size:
                break
            if ctype != APPLICATION_DATA:
                # After the handshake every record is protected; a ChangeCipherSpec or a plaintext
                # alert or handshake record here is unexpected (section 5).
                raise RecordError(UNEXPECTED_MESSAGE, f"unprotected record of type {ctype} after the handshake")
            if length < TAG + 1:
                raise RecordError(DECODE_ERROR, "record shorter than its tag")
            # The nonce: the static IV XOR the record's sequence number (section 5.3), inline (per record).
            read = self.read
            seq = read.seq
            if seq >= _SEQ_LIMIT:
                raise RecordError(INTERNAL_ERROR, "record sequence number exhausted")
            read.seq = seq + 1
            try:
                inner = read.aead.decrypt((read.iv ^ seq).to_bytes(12, "big"), buf[pos + 5:end], buf[pos:pos + 5])
            except InvalidTag:
                raise RecordError(BAD_RECORD_MAC, "record failed authentication") from None
            pos = end
            if length > _MAX_INNER:
                raise RecordError(RECORD_OVERFLOW, "TLSInnerPlaintext over 2^14 + 1 bytes")
            # TLSInnerPlaintext: content, then its type, then zeros (none, usually: no copy then).
            inner_type = inner[-1]
            if not inner_type:
                inner = inner.rstrip(b"\x00")
                if not inner:
                    raise RecordError(UNEXPECTED_MESSAGE, "record with no content type")
                inner_type = inner[-1]
            content = inner[:-1]
            if inner_type == APPLICATION_DATA and not self._hs:
                if content:
                    parts.append(content)
                continue
            if self._hs and inner_type != HANDSHAKE:
                raise RecordError(UNEXPECTED_MESSAGE, "handshake message interrupted")
            if inner_type == ALERT:
                self._alert(content)
                pos = size  # nothing after close_notify is read
                break
            if inner_type == HANDSHAKE:
                if not content:
                    raise RecordError(UNEXPECTED_MESSAGE, "empty handshake record")
                self._handshake(content)
            else:
                raise RecordError(UNEXPECTED_MESSAGE, f"record of inner type {inner_type} after the handshake")
        self._buf = buf[pos:] if pos < size else b""
        return parts

    def pending_input(self) -> bool:
        """Part of a record is still waiting for its end (an EOF now truncates it)."""
        return bool(self._buf)

    def _alert(self, body: bytes) -> None:
        if len(body) != 2:
            raise RecordError(DECODE_ERROR, "malformed alert")
        if body[1] == CLOSE_NOTIFY:
            self.closed_by_peer = True
            return
        # Any other alert ends the connection (section 6.2); nothing is sent back.
        raise RecordError(-1, f"peer sent alert {body[1]}")

    def _handshake(self, body: bytes) -> None:
        hs = self._hs + body if self._hs else body
        while len(hs) >= 4:
            msg_type = hs[0]
            length = int.from_bytes(hs[1:4], "big")
            if msg_type != KEY_UPDATE:
                raise RecordError(UNEXPECTED_MESSAGE, f"handshake message {msg_type} after the handshake")
            if length != 1:
                raise RecordError(DECODE_ERROR, "malformed KeyUpdate")
            if len(hs) < 5:
                break
            request = hs[4]
            if request not in (0, 1):
                raise RecordError(ILLEGAL_PARAMETER, "KeyUpdate with a bad request_update")
            hs = hs[5:]
            if hs:  # a KeyUpdate must end its record (section 5.1): the key changes after it
                raise RecordError(UNEXPECTED_MESSAGE, "data after KeyUpdate in its record")
            self.read.update(self.suite)
            if request == 1:
                # update_requested: ours (update_not_requested) goes before our next application data
                # record (section 4.6.3), not now: requests that arrive while we are silent get one
                # answer, and a peer that floods them without reading gets nothing queued.
                self._update_due = True
        if len(hs) > _MAX_HANDSHAKE_BUFFER:
            raise RecordError(UNEXPECTED_MESSAGE, "oversized handshake message")
        self._hs = hs

    # -- sending --------------------------------------------------------------------------------
    def protect(self, data: bytes) -> None:
        """Application data -> records appended to ``out`` (one per 2^14 bytes)."""
        if self._update_due or self.write.seq >= _REKEY_AT:
            self._update_due = False
            self._protect_one(b"\x18\x00\x00\x01\x00", HANDSHAKE)
            self.write.update(self.suite)
        if len(data) <= MAX_PLAINTEXT:
            # bytes or bytearray as they are; a memoryview (any buffer OpenSSL's send() takes) copied
            self._protect_one(data if data.__class__ is not memoryview else data.tobytes(), APPLICATION_DATA)
            return
        view = memoryview(data)
        for start in range(0, len(data), MAX_PLAINTEXT):
            self._protect_one(bytes(view[start:start + MAX_PLAINTEXT]), APPLICATION_DATA)

    def _protect_one(self, content: bytes, ctype: int) -> None:
        write = self.write
        # Ours never comes near 2^64 (section 5.3): protect() updates our key at _REKEY_AT records.
        seq = write.seq
        write.seq = seq + 1
        header = _HEADER.pack(APPLICATION_DATA, 0x0303, len(content) + 1 + TAG)
        out = self.out
        out += (header, write.aead.encrypt((write.iv ^ seq).to_bytes(12, "big"), content + _TYPE_BYTE[ctype], header))

    def alert(self, description: int) -> None:
        """A protected alert (close_notify is a warning; every other one fatal) appended to ``out``."""
        if self.closed_by_us:
            return
        self.closed_by_us = True
        level = 1 if description == CLOSE_NOTIFY else 2
        self._protect_one(bytes((level, description)), ALERT)

    def take_output(self) -> bytes:
        out = self.out
        if not out:
            return b""
        self.out = []
        return b"".join(out)


__all__ = ["CLOSE_NOTIFY", "SUITES", "RecordError", "Records", "count_records", "expand_label"]
