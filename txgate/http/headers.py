# -*- test-case-name: tests.test_headers -*-
"""Header rules at each hop: hop-by-hop and connection-specific sets, forwarding headers, Via."""
from __future__ import annotations

from itertools import chain, islice

from txgate.http.memo import Memo

# Connection-specific headers: never valid in HTTP/2 (RFC 9113 8.2.2).
H2_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# Dropped from an HTTP/2 response head (h2 frames the body itself; TE is request-only).
H2_RESPONSE_DROP = H2_CONNECTION_SPECIFIC | frozenset({b"te", b"content-length"})
# Hop-by-hop headers (RFC 9110 7.6.1 and the usual extras): never forwarded by a proxy.
HOP_BY_HOP = H2_CONNECTION_SPECIFIC | frozenset(
    {
        b"te",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"http2-settings",
    }
)
# Set by txgate only: copies sent by the client are dropped, never trusted.
FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
        b"x-real-ip",
        b"x-forwarded-client-cert",
    }
)
# Framing is redone by whoever sends the message on the next hop.
FRAMING = frozenset({b"content-length", b"host"})


# Header name as received -> lower case (``LOWER_NAMES[name]``: a lookup, not a call, for a name seen before).
LOWER_NAMES = Memo(bytes.lower, 1024)


def connection_named(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in Connection headers (they are hop-by-hop too)."""
    named = set()
    for k, v in headers:
        if k == b"connection":
            for token in v.split(b","):
                token = token.strip().lower()
                if token:
                    named.add(token)
    return frozenset(named)


def _forwarded_node(host: str, port: int | None = None) -> str:
    node = f"[{host}]" if ":" in host else host
    if ":" in host or port is not None:
        node = f'"{node}:{port}"' if port is not None else f'"{node}"'
    return node


# Our Via entry, per downstream protocol version.
VIA_H1 = b"1.1 txgate"
VIA_H2 = b"2 txgate"

REQUEST_DROP = HOP_BY_HOP | FORWARDING | FRAMING
# X-Request-Id: txgate's (the client's when valid) is set on both hops by txgate itself.
REQUEST_ID = b"x-request-id"
RESPONSE_DROP = HOP_BY_HOP | frozenset({b"content-length", REQUEST_ID})


_REQUEST_DROP_ALL = REQUEST_DROP | frozenset({b"expect", REQUEST_ID})
# What _filtered looks at first: the drop set, plus b"close" (a header of that name is kept unless a
# Connection header names it: see _filtered).
_REQUEST_FILTER = _REQUEST_DROP_ALL | frozenset({b"close"})
_RESPONSE_FILTER = RESPONSE_DROP | frozenset({b"close"})
def _forwarding_tail(key: tuple[str, bytes, bytes]) -> tuple[tuple[bytes, bytes], ...]:
    """X-Forwarded-* and Forwarded for one (client, scheme, host)."""
    client_ip, proto, original_host = key
    fwd = "for=%s;proto=%s" % (_forwarded_node(client_ip), proto.decode())
    if original_host and all(32 < c < 127 and c not in b'";,' for c in original_host):
        fwd += ";host=" + (original_host.decode() if b":" not in original_host else '"%s"' % original_host.decode())
    return (
        (b"x-forwarded-for", client_ip.encode("ascii", "replace")),
        (b"x-forwarded-proto", proto),
        (b"x-forwarded-host", original_host),
        (b"forwarded", fwd.encode()),
    )


# (client, scheme, host) -> its forwarding headers: they repeat per connection. A Host longer than MAX_KEY
# is not kept (a client's ever-new long Hosts would fill the table with them).
_TAILS = Memo(_forwarding_tail, 4096, size=lambda key: len(key[2]))


# "Connection: keep-alive" names only a header that is dropped anyway, and "Connection: close" only a
# header named "close", which _filtered notices by itself: no lookup of named headers for these.
_NAMES_NOTHING_KEPT = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})


def _filtered(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]) -> tuple[list, list | None, bool]:
    """One pass: kept headers, Via values (None for none), and whether a Connection header may name a kept one.

    ``drop`` holds b"close": a header of that name is kept here, and sends the caller to the
    Connection lookup (`_less_named`), which drops it if a Connection header names it."""
    out = []
    vias = None  # (a list only when there is a Via header: most messages have none)
    named = False
    for kv in headers:
        k = kv[0]
        if k in drop:
            if k == b"connection":
                if kv[1] not in _NAMES_NOTHING_KEPT:
                    named = True
            elif k == b"close":
                named = True
                out.append(kv)
            continue
        if k == b"via":
            if vias is None:
                vias = [kv[1]]
            else:
                vias.append(kv[1])
        elif k[:6] != b"proxy-":
            out.append(kv)
    return out, vias, named


def _less_named(headers, out: list, vias: list | None) -> tuple[list, list | None]:
    """Drop the headers a Connection header named (rare: only then is it looked up)."""
    names = connection_named(headers)
    return [kv for kv in out if kv[0] not in names], ([] if b"via" in names else vias)


def _via(vias: list, via: bytes) -> tuple[bytes, bytes]:
    return (b"via", b", ".join(vias + [via]))


_JOIN_FIELD = b": ".join


def header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """HTTP/1.1 header lines ('name: value\\r\\n' each) of (name, value) tuples, in C-level joins."""
    # (about half the cost of a b"%s: %s\r\n" format per field)
    return b"\r\n".join(map(_JOIN_FIELD, headers)) + b"\r\n" if headers else b""


def upstream_request_headers(
    headers: list[tuple[bytes, bytes]],
    client_ip: str,
    proto: bytes,
    original_host: bytes,
    via: bytes,
    request_id: bytes = b"",
) -> list[tuple[bytes, bytes]]:
    """Headers to send upstream (Host aside): client headers less hop-by-hop and forwarding ones, plus ours."""
    out, vias, named = _filtered(headers, _REQUEST_FILTER)
    if named:
        out, vias = _less_named(headers, out, vias)
    out.extend(_TAILS[(client_ip, proto, original_host)])  # (a hit: one lookup, no call)
    out.append(_via(vias, via) if vias else (b"via", via))
    if request_id:
        out.append((REQUEST_ID, request_id))
    return out


def downstream_response_headers(
    headers: list[tuple[bytes, bytes]], via: bytes
) -> list[tuple[bytes, bytes]]:
    """Headers to send to the client: upstream headers less hop-by-hop ones, plus Via."""
    out, vias, named = _filtered(headers, _RESPONSE_FILTER)
    if named:
        out, vias = _less_named(headers, out, vias)
    out.append(_via(vias, via) if vias else (b"via", via))
    return out


def field_bytes(fields: list[tuple[bytes, bytes]], start: int = 0) -> int:
    """``fields[start:]`` as a head's size limit counts them: name, value and 4 bytes each (summed in C)."""
    return sum(map(len, chain.from_iterable(islice(fields, start, None)))) + 4 * (len(fields) - start)
