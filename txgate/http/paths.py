# -*- test-case-name: tests.test_paths -*-
"""Request paths: the one normalization that routing and the upstream both see."""
from __future__ import annotations

from txgate.errors import BadRequest

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = "0123456789abcdefABCDEF"


class UnsafePath(ValueError):
    """A path that different upstreams would read differently (encoded '/', '\\', NUL)."""


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on a path: '/a/./b/../c' -> '/a/c' (so prefixes cannot be escaped)."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments[1:], 1):
        if seg == "..":
            if out:
                out.pop()
            if i == len(segments) - 1:
                out.append("")
        elif seg == ".":
            if i == len(segments) - 1:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _decode_unreserved(path: str) -> str:
    """RFC 3986 6.2.2.2: '%61' -> 'a' for unreserved characters; other escapes stay (upper-cased)."""
    out = []
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c == "%" and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            ch = chr(int(path[i + 1:i + 3], 16))
            if ch in _UNRESERVED:
                out.append(ch)
            elif ch in "/\\\x00":
                raise UnsafePath(f"encoded {ch!r} in the path")
            else:
                out.append("%" + path[i + 1:i + 3].upper())
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def normalize_path(path: str) -> str:
    """The path routing and the upstream both see: unreserved escapes decoded, '//' merged, dot
    segments removed, so that '/%61dmin', '//admin' and '/x/../admin' cannot skip an API's policy
    at '/admin' while an upstream reads them as '/admin'. Raises UnsafePath for encoded '/', '\\'
    and NUL, and for raw '\\' or NUL (some servers treat '\\' as '/')."""
    if "\\" in path or "\x00" in path:
        raise UnsafePath("'\\' or NUL in the path")
    if "%" in path:
        path = _decode_unreserved(path)
    if "//" in path:
        while "//" in path:
            path = path.replace("//", "/")
    if "." in path:
        path = remove_dot_segments(path)
    return path


def routing_path(raw: bytes) -> str:
    """The normalized absolute path of a request head's path; BadRequest when it is ambiguous or
    not absolute (e.g. 'OPTIONS *')."""
    try:
        path = normalize_path(raw.decode("latin-1"))
    except UnsafePath as e:
        raise BadRequest(f"ambiguous request path: {e}") from None
    if path[:1] != "/":
        raise BadRequest("request target must be an absolute path")
    return path
