# -*- test-case-name: tests.test_store -*-
"""Encryption of private keys at rest: AES-256-GCM under a key derived with HKDF-SHA256 from the store secret."""
from __future__ import annotations

import base64
import os
from typing import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from txgate.store.model import StoreError

ENV_SECRET = "TXGATE_STORE_SECRET"
MIN_SECRET_BYTES = 16
ALG = "AES-256-GCM"
KDF = "HKDF-SHA256"
_INFO = b"txgate store private keys v1"
_NONCE = 12


def load_secret(secret_file: str | None = None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The store secret from ``secret_file`` (trailing newline stripped) or else ``$TXGATE_STORE_SECRET``; None if neither."""
    if secret_file:
        try:
            with open(secret_file, "rb") as f:
                data = f.read().rstrip(b"\r\n")
        except OSError as e:
            raise StoreError("bad_secret", f"{secret_file}: cannot read the store secret: {e.strerror or e}") from None
        if not data:
            raise StoreError("bad_secret", f"{secret_file}: the store secret file is empty")
        return data
    env = os.environ if environ is None else environ
    value = env.get(ENV_SECRET)
    return value.encode() if value else None


class KeyBox:
    """Seals and opens private keys; the AAD binds each ciphertext to its record (entry ID or pending name)."""

    def __init__(self, secret: bytes | str) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_SECRET_BYTES:
            raise StoreError("bad_secret", f"the store secret is too short: at least {MIN_SECRET_BYTES} bytes are required")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(raw)
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "<KeyBox AES-256-GCM>"

    def seal(self, plaintext: bytes, aad: bytes) -> dict[str, str]:
        """Encrypt ``plaintext`` with a fresh random nonce: ``{"alg", "kdf", "nonce", "ct"}`` (base64)."""
        nonce = os.urandom(_NONCE)
        ct = self._aead.encrypt(nonce, plaintext, aad)
        return {
            "alg": ALG,
            "kdf": KDF,
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ct).decode(),
        }

    def open(self, sealed: Mapping[str, str], aad: bytes, what: str) -> bytes:
        """Decrypt a sealed dict, or StoreError('decrypt_failed') naming ``what`` (never the data)."""
        try:
            if sealed.get("alg") != ALG:
                raise StoreError("decrypt_failed", f"cannot decrypt {what}: unknown algorithm {sealed.get('alg')!r}")
            nonce = base64.b64decode(sealed["nonce"], validate=True)
            ct = base64.b64decode(sealed["ct"], validate=True)
            return self._aead.decrypt(nonce, ct, aad)
        except StoreError:
            raise
        except (InvalidTag, KeyError, ValueError, TypeError):
            raise StoreError(
                "decrypt_failed", f"cannot decrypt {what}: wrong store secret, or the record was altered"
            ) from None
