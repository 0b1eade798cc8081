"""Host-name rules: the one wildcard syntax rule and matcher, IP and loopback tests, host:port text."""
# -*- test-case-name: tests.test_config_rules, tests.test_config_security -*-
from __future__ import annotations

import ipaddress
import re


WILDCARD_RULE = "wildcards are only allowed as the first label ('*.example.com')"


def wildcard_ok(name: str) -> bool:
    """Whether ``name`` uses ``*`` only as a whole first label (``*.example.com``), or not at all."""
    return "*" not in name or (name.startswith("*.") and "*" not in name[2:])


def wildcard_parent(host: str) -> str | None:
    """The part of ``host`` a one-label wildcard is written over ('a.b.c' -> 'b.c'); None without one."""
    dot = host.find(".")
    return host[dot + 1:] if dot > 0 else None


def wildcard_matches(pattern: str, host: str) -> bool:
    """True if ``pattern`` (``*.example.com``) covers ``host`` by exactly one non-empty first label."""
    return pattern.startswith("*.") and wildcard_parent(host) == pattern[2:]


def is_ip(text: str) -> bool:
    """True if ``text`` is an IPv4 or IPv6 address (no brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost`` (an empty host or a wildcard is not loopback)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 literal in brackets: ``[::1]:443``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def host_name_problem(name: str) -> str | None:
    """Why ``name`` is not a host name for `[admin] allowed_hosts` (None if it is one).

    A DNS name of letters, digits, ``-`` and ``.`` (an IPv4 address passes too); no port, no
    wildcard, no IPv6 literal, no trailing dot.
    """
    if "*" in name:
        return f"'{name}': wildcards are not allowed (list each host name)"
    if ":" in name or "[" in name or "]" in name:
        return f"'{name}': expected a host name without a port (the admin API's port is accepted with or without it)"
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.lower().split(".")):
        return f"'{name}': expected a host name (letters, digits, '-' and '.'; labels of 1-63 characters)"
    return None


def split_pattern(pattern: str) -> tuple[str, str | None]:
    """'host:port', '[v6]:port', 'host', '*', '*:port' -> (host, port or None)."""
    if pattern.startswith("["):
        host, sep, port = pattern.rpartition(":")
        if sep and host.endswith("]"):
            return host[1:-1], port
        return pattern.strip("[]"), None
    if pattern.count(":") == 1:
        host, _, port = pattern.partition(":")
        return host, port
    return pattern, None


def host_pattern_rank(pattern: str, host: str, port: int) -> int:
    """How specifically a `[security]` host pattern matches host:port (0 = not at all).

    The host part decides first (exact > *.wildcard > *), then a port makes a pattern more specific
    than the same host part without one: host:port > host > *.w:port > *.w > *:port > *.
    """
    pat_host, pat_port = split_pattern(pattern)
    if pat_port is not None and pat_port != str(port):
        return 0
    if pat_host == "*":
        spec = 1
    elif pat_host == host:
        spec = 3
    elif wildcard_matches(pat_host, host):
        spec = 2
    else:
        return 0
    return spec * 2 + (1 if pat_port is not None else 0)


def select_by_host(rules, host: str | tuple[str, ...], port: int):
    """The value of the most specific rule matching host:port, or None.

    ``host`` may be several names for the same upstream (its upstream_server_name and its URL
    host): the most specific match over all of them wins."""
    hosts = (host,) if isinstance(host, str) else host
    best, best_rank = None, 0
    for pattern, value in rules:
        for h in hosts:
            rank = host_pattern_rank(pattern, h, port)
            if rank > best_rank:
                best, best_rank = value, rank
    return best
