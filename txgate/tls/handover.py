# -*- test-case-name: tests.test_records13 -*-
"""Hand a downstream TLS 1.3 connection from OpenSSL to `txgate.tls.records13` once its handshake is done.

``install(ctx)`` makes a server context record the connection's two application traffic secrets
(OpenSSL's keylog callback, the NSS key log lines ``CLIENT_TRAFFIC_SECRET_0`` and
``SERVER_TRAFFIC_SECRET_0``; kept on the connection object, never logged or written anywhere).
``take(conn, out)`` is called right after the handshake completed, with the bytes OpenSSL wrote
since the previous flush (``out``: its session tickets, the only records it sent under the
application key): it returns the `Records` that carry on, and the input bytes OpenSSL had not read
yet, or None when the connection stays with OpenSSL (TLS 1.2, a suite `records13` does not do,
secrets not seen, plaintext buffered inside OpenSSL). After a successful take, drop ``conn``: its
``SSL`` object (~23 KiB) is freed.
"""
from __future__ import annotations

from OpenSSL import SSL

from txgate.tls import membio
from txgate.tls.records13 import SUITES, Records, count_records

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib

    _SSL_pending = _lib.SSL_pending
    _set_keylog = _lib.SSL_CTX_set_keylog_callback if membio.available else None
except Exception:  # pragma: no cover - a pyOpenSSL without these bindings: no hand-over
    _set_keylog = None

_T = b"T"


class ServerConnection(SSL.Connection):
    """pyOpenSSL's connection, with a place for the traffic secrets the keylog callback sees."""

    traffic: list[bytes] | None = None


if _set_keylog is not None:
    @_ffi.callback("void (*)(const SSL *, const char *)")
    def _keylog(ssl, line):  # pragma: no branch - called by OpenSSL during handshakes
        # Byte 7 is "T" in CLIENT_TRAFFIC_SECRET_0 and SERVER_TRAFFIC_SECRET_0 only (not in the
        # handshake, early, exporter or TLS 1.2 CLIENT_RANDOM lines): the other lines cost no copy.
        try:
            if line[7] != _T:
                return
            conn = SSL.Connection._reverse_mapping.get(ssl)
            if conn is None:
                return
            traffic = conn.traffic
            if traffic is None:
                traffic = conn.traffic = []
            traffic.append(_ffi.string(line))
        except Exception:  # never raise into OpenSSL; the connection then stays with OpenSSL
            pass


def available() -> bool:
    """Can connections be handed over with this pyOpenSSL?"""
    return _set_keylog is not None


def install(ctx: SSL.Context) -> None:
    """Make ``ctx`` (before its first connection) record the traffic secrets of its connections."""
    _set_keylog(ctx._context, _keylog)


def take(conn: SSL.Connection, out: bytes) -> tuple[Records, bytes] | None:
    """`Records` continuing ``conn`` after its handshake (``out``: what OpenSSL wrote since the
    handshake's last flight was sent) and the input OpenSSL did not read; None to stay with OpenSSL."""
    traffic = getattr(conn, "traffic", None)
    conn.traffic = None  # taken or not, the secrets stay on no object longer than this call
    if not traffic or len(traffic) != 2:
        return None
    suite = conn.get_cipher_name()
    if suite not in SUITES:
        return None
    if _SSL_pending(conn._ssl):  # decrypted bytes inside OpenSSL: let it deliver them
        return None
    written = count_records(out)
    if written is None:
        return None
    secrets = {}
    for line in traffic:
        label, _random, secret = line.split(b" ")
        secrets[label] = bytes.fromhex(secret.decode("ascii"))
    try:
        client = secrets[b"CLIENT_TRAFFIC_SECRET_0"]
        server = secrets[b"SERVER_TRAFFIC_SECRET_0"]
    except KeyError:
        return None
    # OpenSSL's SSL_free removes the session from the server's cache when the connection was not shut
    # down (a "bad session"): the connection goes on, so its stateful ticket or session id must stay.
    conn.set_shutdown(SSL.SENT_SHUTDOWN)
    rest = membio.read_bio(conn._into_ssl)  # input OpenSSL has not read yet
    records = Records(suite, client, server, read_seq=0, write_seq=written,
                      alpn=conn.get_alpn_proto_negotiated() or None)
    if out:
        records.out.append(out)
    return records, rest


__all__ = ["ServerConnection", "available", "count_records", "install", "take"]
