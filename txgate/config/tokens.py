"""The one classification of pin and fingerprint words: `sha256/BASE64`, 64 hex digits, or a file."""
# -*- test-case-name: tests.test_config_rules, tests.test_mtls_config -*-
from __future__ import annotations

PIN_PREFIX = "sha256/"
_HEX = frozenset("0123456789abcdefABCDEF")

PIN = "pin"                  # sha256/BASE64 (the prefix in any case): an SPKI pin
FINGERPRINT = "fingerprint"  # 64 hex digits: a SHA-256 digest (an SPKI pin in pinned_public_keys)
FILE = "file"                # anything else: the path of a PEM file


def is_hex64(word: str) -> bool:
    """True for exactly 64 hex digits (either case)."""
    return len(word) == 64 and _HEX.issuperset(word)


def token_kind(word: str) -> str:
    """What a `pinned_public_keys` / `client_certificates` word is: PIN, FINGERPRINT or FILE."""
    if word[:len(PIN_PREFIX)].lower() == PIN_PREFIX:
        return PIN
    if is_hex64(word):
        return FINGERPRINT
    return FILE


def may_be_path(word: str) -> bool:
    """Whether a FILE word looks like a path even if nothing is there ('/' or '.' in it)."""
    return "/" in word or "." in word
