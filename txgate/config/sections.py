"""Typed accessors over one gw.ini section, and the value syntaxes several sections share."""
# -*- test-case-name: tests.test_config -*-
from __future__ import annotations

import difflib
import ipaddress
import math
import re

from txgate.config.model import CertSpec, ConfigError
from txgate.config.tokens import is_hex64


def suggest(word: str, choices) -> str:
    """' (did you mean 'X'?)' for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Section:
    """Typed accessors over one INI section that raise ConfigError with file/section/key."""

    def __init__(self, path: str, name: str, values: dict[str, str], allowed: set[str],
                 errors: list[ConfigError] | None = None) -> None:
        self.path, self.name, self.values = path, name, values
        # With a list, a bad value is recorded there and its default used, so parsing goes on and
        # reports every mistake; ``fail`` always raises (the caller cannot go on without the value).
        self.errors = errors
        for key in values:
            if key not in allowed:
                self._bad(key, "unknown key" + suggest(key, allowed), None)

    def fail(self, key: str | None, message: str):
        raise ConfigError(self.path, self.name, key, message)

    def _bad(self, key: str, message: str, default):
        """A bad value: raise, or (collecting) record it and go on with ``default``."""
        if self.errors is None:
            self.fail(key, message)
        self.errors.append(ConfigError(self.path, self.name, key, message))
        return default

    def has(self, key: str) -> bool:
        return key in self.values

    def str(self, key: str, default: str | None = None) -> str | None:
        v = self.values.get(key)
        if v is None:
            return default
        v = v.strip()
        if not v:
            return self._bad(key, "empty value", default)
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.values.get(key)
        if v is None:
            return default
        low = v.strip().lower()
        if low in ("on", "yes", "true", "1"):
            return True
        if low in ("off", "no", "false", "0"):
            return False
        return self._bad(key, f"expected on/off, got '{v.strip()}'", default)

    def number(self, key: str, default: float, *, integer: bool = False, minimum: float = 0):
        v = self.values.get(key)
        if v is None:
            return default
        try:
            n = int(v.strip()) if integer else float(v.strip())
        except ValueError:
            kind = "an integer" if integer else "a number"
            return self._bad(key, f"expected {kind}, got '{v.strip()}'", default)
        if not math.isfinite(n):
            return self._bad(key, f"expected a finite number, got '{v.strip()}'", default)
        if n < minimum:
            return self._bad(key, f"must be at least {minimum}, got {v.strip()}", default)
        return n

    def choice(self, key: str, default: str, choices) -> str:
        v = self.str(key, default)
        if v not in choices:
            return self._bad(key, f"expected one of {', '.join(choices)}, got '{v}'" + suggest(v, choices), default)
        return v

    def words(self, key: str) -> list[str] | None:
        v = self.values.get(key)
        if v is None:
            return None
        words = v.split()
        if not words:
            return self._bad(key, "empty value", None)
        return words

    def lines(self, key: str) -> list[str]:
        v = self.values.get(key)
        if v is None:
            return []
        return [line.strip() for line in v.splitlines() if line.strip() and not line.strip().startswith("#")]


def parse_bind(section: Section, key: str) -> tuple[str, int]:
    """Parse `HOST:PORT` or `[V6]:PORT`."""
    v = section.str(key)
    if v is None:
        section.fail(key, "missing (expected HOST:PORT)")
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        section.fail(key, f"expected HOST:PORT, got '{v}'")
    if host.startswith("["):
        if not host.endswith("]"):
            section.fail(key, f"expected [IPv6]:PORT, got '{v}'")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            section.fail(key, f"'{host}' is not an IPv6 address")
    elif ":" in host:
        section.fail(key, f"IPv6 addresses need brackets: '[{host}]:{port}'")
    try:
        n = int(port)
    except ValueError:
        section.fail(key, f"port '{port}' is not a number")
    if not 0 <= n <= 65535:
        section.fail(key, f"port {n} is out of range")
    return host, n


_STORE_REF_RE = re.compile(r"^(?:[0-9a-fA-F]{64}|[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?"
                           r"(?:@[1-9][0-9]*)?)$")


def parse_store_ref(section: Section, key: str, word: str) -> str:
    """The REF of a `store:REF` word: NAME, NAME@VERSION or ID (64 hex digits); syntax only."""
    ref = word[len("store:"):]
    name = ref.partition("@")[0]
    if not _STORE_REF_RE.match(ref) or ("@" in ref and is_hex64(name)):
        section.fail(key, f"'{word}': expected store:NAME or store:ID (NAME: 1-128 of A-Z a-z 0-9 . _ -; "
                          "ID: the 64 hex digits of the SHA-256 fingerprint)")
    return ref.lower() if is_hex64(ref) else ref


def parse_cert_spec(section: Section, key: str, value: str, use: str | None = None, *, acme: bool = False) -> CertSpec:
    """`local`, `CERT.pem KEY.pem` (checked on disk by ``txgate.plan.files``), `store:NAME` / `store:ID`,
    `k8s-secret:NAMESPACE/NAME` or `k8s-csr:SIGNER` (``use``: the sni name, which tells CSRs apart);
    with ``acme`` (listener certificates) also `acme` / `acme:NAME ...` (``txgate.config.acme``)."""
    from txgate.config.kubernetes import is_k8s_word, parse_k8s_spec

    words = value.split()
    if words == ["local"]:
        return CertSpec(local=True)
    if words and is_k8s_word(words[0]):
        if len(words) != 1:
            section.fail(key, f"expected one Kubernetes source (k8s-secret:NAMESPACE/NAME or k8s-csr:SIGNER), "
                              f"got '{value}'")
        return parse_k8s_spec(section, key, words[0], use)
    if acme:
        from txgate.config.acme import parse_acme_spec

        spec = parse_acme_spec(section, key, words)
        if spec is not None:
            return spec
    if words and words[0].startswith("store:"):
        if len(words) != 1:
            section.fail(key, f"expected one store reference (store:NAME or store:ID), got '{value}'")
        return CertSpec(local=False, store_ref=parse_store_ref(section, key, words[0]))
    if len(words) != 2:
        section.fail(key, f"expected 'local', 'CERT.pem KEY.pem' or 'store:NAME', got '{value}'")
    return CertSpec(local=False, cert_path=words[0], key_path=words[1])
