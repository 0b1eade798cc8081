"""Header rules at each hop: hop-by-hop removal, forwarding headers, Via."""
from __future__ import annotations

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
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


def _drop_for(headers: list[tuple[bytes, bytes]], extra: frozenset[bytes]) -> frozenset[bytes]:
    named = connection_named(headers)
    return extra | named if named else extra


def _forwarded_node(host: str, port: int | None = None) -> str:
    node = f"[{host}]" if ":" in host else host
    if ":" in host or port is not None:
        node = f'"{node}:{port}"' if port is not None else f'"{node}"'
    return node


REQUEST_DROP = HOP_BY_HOP | FORWARDING | FRAMING
RESPONSE_DROP = HOP_BY_HOP | frozenset({b"content-length"})


def upstream_request_headers(
    headers: list[tuple[bytes, bytes]],
    *,
    client_ip: str,
    proto: bytes,
    original_host: bytes,
    via: bytes,
) -> list[tuple[bytes, bytes]]:
    """Headers to send upstream (Host aside): client headers less hop-by-hop and forwarding ones, plus ours."""
    drop = _drop_for(headers, REQUEST_DROP | {b"expect"})
    out = []
    existing_via = []
    for k, v in headers:
        if k in drop or k.startswith(b"proxy-"):
            continue
        if k == b"via":
            existing_via.append(v)
            continue
        out.append((k, v))
    ip = client_ip.encode("ascii", "replace")
    out.append((b"x-forwarded-for", ip))
    out.append((b"x-forwarded-proto", proto))
    out.append((b"x-forwarded-host", original_host))
    fwd = "for=%s;proto=%s" % (_forwarded_node(client_ip), proto.decode())
    if original_host and all(32 < c < 127 and c not in b'";,' for c in original_host):
        fwd += ";host=" + (original_host.decode() if b":" not in original_host else '"%s"' % original_host.decode())
    out.append((b"forwarded", fwd.encode()))
    out.append((b"via", b", ".join(existing_via + [via])))
    return out


def downstream_response_headers(
    headers: list[tuple[bytes, bytes]], via: bytes
) -> list[tuple[bytes, bytes]]:
    """Headers to send to the client: upstream headers less hop-by-hop ones, plus Via."""
    drop = _drop_for(headers, RESPONSE_DROP)
    out = []
    existing_via = []
    for k, v in headers:
        if k in drop or k.startswith(b"proxy-"):
            continue
        if k == b"via":
            existing_via.append(v)
            continue
        out.append((k, v))
    out.append((b"via", b", ".join(existing_via + [via])))
    return out
