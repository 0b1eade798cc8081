# -*- test-case-name: tests.test_lifecycle -*-
"""Keys, names and errors shared by the certificate lifecycle tools."""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from txgate.tls.certs import PrivateKey
from txgate.tls.certs import private_key_pem as private_key_pem  # re-exported: the lifecycle API names it

KEY_TYPES = ("ec", "rsa")
RSA_BITS = 3072

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_RE = re.compile(rf"^(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}$")


class LifecycleError(Exception):
    """Bad input to a lifecycle operation; ``str()`` is one line for the user (never key material)."""


def generate_key(key_type: str = "ec") -> PrivateKey:
    """A new private key: ``ec`` (P-256) or ``rsa`` (3072 bits)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise LifecycleError(f"unknown key type '{key_type}' (expected one of: {', '.join(KEY_TYPES)})")


def normalize_dns(name: str) -> str:
    """A DNS name (``*.`` wildcard allowed, IDN converted to A-labels), or LifecycleError."""
    raw = name.strip().rstrip(".")
    low = raw.lower()
    if low and not low.isascii():
        import idna

        prefix, rest = ("*.", low[2:]) if low.startswith("*.") else ("", low)
        try:
            low = prefix + idna.encode(rest, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise LifecycleError(f"invalid --dns '{name}': not a DNS name") from None
    if len(low) > 253 or not _DNS_RE.match(low):
        raise LifecycleError(f"invalid --dns '{name}': not a DNS name")
    return low


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4/IPv6 address (``[...]`` allowed), or LifecycleError."""
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise LifecycleError(f"invalid --ip '{text}': not an IP address") from None


def subject_alt_names(dns: Iterable[str] = (), ips: Iterable[str] = ()) -> list[x509.GeneralName]:
    """Validated, de-duplicated SAN entries: DNS names first, then IP addresses."""
    out: list[x509.GeneralName] = []
    for n in dns:
        g: x509.GeneralName = x509.DNSName(normalize_dns(n))
        if g not in out:
            out.append(g)
    for a in ips:
        g = x509.IPAddress(parse_ip(a))
        if g not in out:
            out.append(g)
    return out


def first_name(sans: list[x509.GeneralName]) -> str | None:
    """The first SAN as text (a sensible CN), or None."""
    if not sans:
        return None
    return str(sans[0].value)[:64]
