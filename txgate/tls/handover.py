# -*- test-case-name: tests.test_records13,tests.test_records13_paths -*-
"""Hand a downstream TLS 1.3 connection from OpenSSL to `txgate.tls.records13` once its handshake is done.

``install(ctx)`` makes a server context record the connection's two application traffic secrets
(OpenSSL's keylog callback, the NSS key log lines ``CLIENT_TRAFFIC_SECRET_0`` and
``SERVER_TRAFFIC_SECRET_0``, not the later generations OpenSSL logs at a KeyUpdate; kept on the
connection object as bytes, never logged or written anywhere).
``take(conn, out)`` is called right after the handshake completed, with the bytes OpenSSL wrote
since the previous flush (``out``: its session tickets, the only records it sent under the
application key): it returns the `Records` that carry on, and the input bytes OpenSSL had not read
yet, or None when the connection stays with OpenSSL (TLS 1.2, a suite `records13` does not do,
secrets not seen, plaintext buffered inside OpenSSL). After a successful take, drop ``conn``: its
``SSL`` object (~23 KiB) is freed.
"""
from __future__ import annotations

from binascii import unhexlify as _unhexlify

from OpenSSL import SSL

from txgate.tls import membio
from txgate.tls.records13 import SUITES, Records, count_records

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib

    _SSL_pending = _lib.SSL_pending
    _set_keylog = _lib.SSL_CTX_set_keylog_callback if membio.available else None
    _string = _ffi.string
    _ALPN = _ffi.new("unsigned char **")  # SSL_get0_alpn_selected's out-parameters, reused: one call at a time
    _ALPN_LEN = _ffi.new("unsigned int *")
except Exception:  # pragma: no cover - a pyOpenSSL without these bindings: no hand-over
    _set_keylog = None

_T = b"T"
_ZERO = b"0"
_S = b"S"
# Where the secret's hex digits start in a CLIENT_TRAFFIC_SECRET_0 or SERVER_TRAFFIC_SECRET_0 line:
# the 23-character label, a space, the client random (32 bytes: 64 hex digits), a space.
_SECRET_AT = 23 + 1 + 64 + 1
_SUITE_NAMES = {name.encode("ascii"): name for name in SUITES}  # as SSL_CIPHER_get_name spells them


class ServerConnection(SSL.Connection):
    """pyOpenSSL's connection, with a place for the traffic secrets the keylog callback sees:
    ``traffic`` is None, or [client secret, server secret] (None where not seen yet)."""

    traffic: list[bytes | None] | None = None


if _set_keylog is not None:
    @_ffi.callback("void (*)(const SSL *, const char *)")
    def _keylog(ssl, line):  # pragma: no branch - called by OpenSSL during handshakes
        # Byte 7 is "T" in CLIENT_TRAFFIC_SECRET_0 and SERVER_TRAFFIC_SECRET_0 only (not in the
        # handshake, early, exporter or TLS 1.2 CLIENT_RANDOM lines): the other lines cost no copy.
        # Byte 22 is "N" in the CLIENT_TRAFFIC_SECRET_N and SERVER_TRAFFIC_SECRET_N lines OpenSSL 4.0
        # logs at each KeyUpdate of a connection it keeps (take() refused it): not kept, or the newest
        # secrets would stay on that connection until it closes.
        try:
            if line[7] != _T or line[22] != _ZERO:
                return
            conn = SSL.Connection._reverse_mapping.get(ssl)
            if conn is None:
                return
            traffic = conn.traffic
            if traffic is None:
                traffic = conn.traffic = [None, None]
            # Only the secret's hex digits are copied, and decoded here: take() just reads them.
            traffic[line[0] == _S] = _unhexlify(_string(line + _SECRET_AT))
        except Exception:  # never raise into OpenSSL; the connection then stays with OpenSSL
            pass


def available() -> bool:
    """Can connections be handed over with this pyOpenSSL?"""
    return _set_keylog is not None


def install(ctx: SSL.Context) -> None:
    """Make ``ctx`` (before its first connection) record the traffic secrets of its connections."""
    _set_keylog(ctx._context, _keylog)


def take(conn: ServerConnection, out: bytes) -> tuple[Records, bytes] | None:
    """`Records` continuing ``conn`` after its handshake (``out``: what OpenSSL wrote since the
    handshake's last flight was sent) and the input OpenSSL did not read; None to stay with OpenSSL."""
    traffic = conn.traffic
    conn.traffic = None  # taken or not, the secrets stay on no object longer than this call
    if traffic is None:
        return None
    client, server = traffic
    if client is None or server is None:
        return None
    # What get_cipher_name, set_shutdown and get_alpn_proto_negotiated do, without their wrappers.
    ssl = conn._ssl
    suite = _SUITE_NAMES.get(_string(_lib.SSL_CIPHER_get_name(_lib.SSL_get_current_cipher(ssl))))
    if suite is None:
        return None
    if _SSL_pending(ssl):  # decrypted bytes inside OpenSSL: let it deliver them
        return None
    written = count_records(out)
    if written is None:
        return None
    # OpenSSL's SSL_free removes the session from the server's cache when the connection was not shut
    # down (a "bad session"): the connection goes on, so its stateful ticket or session id must stay.
    _lib.SSL_set_shutdown(ssl, _lib.SSL_SENT_SHUTDOWN)
    rest = membio.read_bio(conn._into_ssl)  # input OpenSSL has not read yet
    _lib.SSL_get0_alpn_selected(ssl, _ALPN, _ALPN_LEN)
    n = _ALPN_LEN[0]
    records = Records(suite, client, server, read_seq=0, write_seq=written,
                      alpn=_ffi.buffer(_ALPN[0], n)[:] if n else None)
    if out:
        records.out.append(out)
    return records, rest


__all__ = ["ServerConnection", "available", "count_records", "install", "take"]
