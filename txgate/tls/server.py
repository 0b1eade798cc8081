# -*- test-case-name: tests.test_tls_unit -*-
"""Server-side TLS: pre-built contexts per certificate, SNI, versions, ciphers, ALPN, sessions."""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from txgate.config.hostnames import wildcard_parent
from txgate.tls import handover
from txgate.tls.certs import CertifiedKey

log = Logger()

ACME_TLS_ALPN = b"acme-tls/1"

try:  # pyOpenSSL's raw bindings: the ALPN callback, connection_facts (once per handshake)
    from OpenSSL._util import ffi as _ffi, lib as _lib

    _ALPN = _ffi.new("unsigned char **")  # out-parameters, reused: the reactor runs one call at a time
    _ALPN_LEN = _ffi.new("unsigned int *")
except Exception:  # pragma: no cover - other pyOpenSSL builds: its public getters
    _lib = None

if _lib is not None:
    @_ffi.callback("int (*)(SSL *, unsigned char **, unsigned char *, const unsigned char *, unsigned int, void *)")
    def _alpn_select(ssl, out, outlen, offered, size, arg):  # pragma: no branch - called by OpenSSL
        """OpenSSL's ALPN callback for every context of a `ServerTLS` (``arg``: its handle): the choice points
        into the client's own list (OpenSSL copies it at once), so nothing is allocated per connection."""
        try:
            raw = _ffi.buffer(offered, size)[:]  # length-prefixed names, checked well-formed by OpenSSL
            at: dict[bytes, int] = {}
            i = 0
            while i < size:
                n = raw[i]
                at.setdefault(raw[i + 1:i + 1 + n], i + 1)
                i += n + 1
            conn = SSL.Connection._reverse_mapping.get(ssl) if ACME_TLS_ALPN in at else None
            proto = _ffi.from_handle(arg)._select_alpn(conn, at)
            if proto is SSL.NO_OVERLAPPING_PROTOCOLS:
                return _lib.SSL_TLSEXT_ERR_NOACK  # as pyOpenSSL: the handshake goes on without ALPN
            out[0] = offered + at[proto]
            outlen[0] = len(proto)
            return _lib.SSL_TLSEXT_ERR_OK
        except Exception:
            log.failure("ALPN selection failed")
            return _lib.SSL_TLSEXT_ERR_ALERT_FATAL


#: TLS <= 1.2 default: forward secrecy and AEAD only, ECDSA first, then RSA.
DEFAULT_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

TLS_VERSIONS: dict[str, int] = {
    "1.0": SSL.TLS1_VERSION,
    "1.1": SSL.TLS1_1_VERSION,
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}

# pyOpenSSL 26.4 does not export these names; the values are OpenSSL's and stable.
OP_CIPHER_SERVER_PREFERENCE: int = getattr(SSL, "OP_CIPHER_SERVER_PREFERENCE", 0x00400000)
OP_NO_RENEGOTIATION: int = getattr(SSL, "OP_NO_RENEGOTIATION", 0x40000000)
# Only OpenSSL 1.1.0h..1.1.1 had it; 3.x refuses client renegotiation by default.
OP_NO_CLIENT_RENEGOTIATION: int = getattr(SSL, "OP_NO_CLIENT_RENEGOTIATION", 0)

VerifyCallback = Callable[[SSL.Connection, Any, int, int, int], bool]


def tls_version(value: str) -> int:
    """Map '1.0'..'1.3' to the OpenSSL protocol version constant."""
    try:
        return TLS_VERSIONS[value]
    except KeyError:
        raise ValueError(f"unknown TLS version {value!r} (expected one of {', '.join(TLS_VERSIONS)})") from None


class TLSSettingError(ValueError):
    """A TLS setting OpenSSL refuses; ``key`` is the gw.ini key it came from."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class DuplicateSNIName(ValueError):
    """Two SNI entries name the same host after normalisation; ``key`` is the gw.ini key."""

    key = "sni"


def _openssl_reason(e: Exception) -> str:
    """The reason strings of an OpenSSL error, without the tuple noise."""
    args = getattr(e, "args", None)
    if args and isinstance(args[0], list):
        reasons = [str(item[2]) for item in args[0] if isinstance(item, tuple) and len(item) >= 3 and item[2]]
        if reasons:
            return "; ".join(reasons)
    return str(e) or e.__class__.__name__


def _set_groups(ctx: SSL.Context, groups: bytes) -> None:
    """The key-exchange groups (TLS 1.3 key shares, TLS 1.2 ECDHE curves), in preference order.

    pyOpenSSL has no call for it (only ``set_tmp_ecdh``, which replaces the list with one curve):
    this is ``SSL_CTX_set1_groups_list`` under its older name, from the bindings of the OpenSSL that
    pyOpenSSL runs on (cryptography's), on the pyOpenSSL context's pointer."""
    from OpenSSL._util import lib

    if not groups or lib.SSL_CTX_set1_curves_list(ctx._context, groups) != 1:
        _clear_openssl_errors()
        raise TLSSettingError("groups", f"invalid groups list {groups.decode()!r}")


def _clear_openssl_errors() -> None:
    from OpenSSL._util import lib

    lib.ERR_clear_error()


def _supported_groups(candidates: Sequence[str]) -> list[str]:
    """The candidates this OpenSSL knows (a hybrid such as X25519MLKEM768 needs OpenSSL 3.5+)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    out = []
    for group in candidates:
        try:
            _set_groups(ctx, group.encode("ascii"))
        except TLSSettingError:
            continue
        out.append(group)
    return out


#: Key-exchange groups of every listener by default: the X25519 + ML-KEM-768 hybrid where the OpenSSL
#: under pyOpenSSL has it, then X25519, P-256, P-384 (Mozilla's "intermediate" list: no X448, no
#: P-521, no finite-field groups).
DEFAULT_GROUPS = ":".join(_supported_groups(["X25519MLKEM768", "X25519", "P-256", "P-384"]))


def _cipher_list_for(min_version: int, ciphers: str | None) -> str:
    cipher_list = ciphers if ciphers is not None else DEFAULT_CIPHERS
    if min_version < SSL.TLS1_2_VERSION and "@SECLEVEL" not in cipher_list:
        # OpenSSL 3+ refuses TLS 1.0/1.1 (MD5-SHA1 signatures) above security level 0.
        cipher_list += ":@SECLEVEL=0"
    return cipher_list


def _apply_ciphers(ctx: SSL.Context, cipher_list: bytes, tls13: bytes | None) -> None:
    try:
        ctx.set_cipher_list(cipher_list)
    except SSL.Error as e:
        raise TLSSettingError(
            "ciphers", f"invalid cipher list {cipher_list.decode()!r}: {_openssl_reason(e)}"
        ) from None
    if tls13 is not None:
        try:
            ctx.set_tls13_ciphersuites(tls13)
        except SSL.Error as e:
            raise TLSSettingError(
                "tls13_ciphersuites", f"invalid TLS 1.3 ciphersuites {tls13.decode()!r}: {_openssl_reason(e)}"
            ) from None


def check_tls_settings(
    *, min_tls: str = "1.2", max_tls: str = "1.3", ciphers: str | None = None, tls13_ciphersuites: str | None = None,
    groups: str | None = None,
) -> None:
    """Raise TLSSettingError if OpenSSL refuses these settings (no certificate needed)."""
    lo, hi = tls_version(min_tls), tls_version(max_tls)
    if lo > hi:
        raise TLSSettingError("max_tls", f"min_tls {min_tls} is above max_tls {max_tls}")
    for key, value in (("ciphers", ciphers), ("tls13_ciphersuites", tls13_ciphersuites), ("groups", groups)):
        if value is not None:
            try:
                value.encode("ascii")
            except UnicodeEncodeError:
                raise TLSSettingError(key, f"{value!r} is not ASCII") from None
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    _apply_ciphers(
        ctx,
        _cipher_list_for(lo, ciphers).encode("ascii"),
        tls13_ciphersuites.encode("ascii") if tls13_ciphersuites else None,
    )
    if groups is not None:
        _set_groups(ctx, groups.encode("ascii"))


def _norm_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Creates server TLS connections from contexts built once, one per certificate."""

    def __init__(
        self,
        *,
        default: CertifiedKey,
        sni: Sequence[tuple[str, CertifiedKey]] = (),
        min_tls: str = "1.2",
        max_tls: str = "1.3",
        ciphers: str | None = None,
        tls13_ciphersuites: str | None = None,
        groups: str | None = None,
        alpn: tuple[str, ...] = ("h2", "http/1.1"),
        session_tickets: bool = True,
        verify: tuple[int, VerifyCallback | None] | None = None,
        session_id_context: bytes | None = None,
        client_verifier: Any = None,
        staple: Callable[[CertifiedKey], Any] | None = None,
        hand_over: bool = False,
    ) -> None:
        self._min = tls_version(min_tls)
        self._max = tls_version(max_tls)
        if self._min > self._max:
            raise ValueError(f"min_tls {min_tls} is above max_tls {max_tls}")
        self._cipher_list = _cipher_list_for(self._min, ciphers).encode("ascii")
        self._tls13 = tls13_ciphersuites.encode("ascii") if tls13_ciphersuites else None
        self._groups = (groups or DEFAULT_GROUPS).encode("ascii")
        self._alpn = tuple(p.encode("ascii") for p in alpn)
        # A ClientVerifier (txgate.tls.clientverify) configures trust store, CRLs, depth and CA names
        # on every context and supplies the verify mode; it also turns session resumption off, since a
        # resumed session skips the verify callback that records the per-connection facts.
        self._client_verifier = client_verifier
        if client_verifier is not None:
            verify = client_verifier.verify
            session_tickets = False
        self._tickets = session_tickets
        self._verify = verify
        # OCSP stapling (txgate.ocsp.staple): certificate -> holder whose callback returns the current staple.
        self._staple = staple
        # Shared by every context so a session resumes whichever SNI context it was made under.
        self._sid_ctx = session_id_context or os.urandom(16)
        # TLS 1.3 connections continue on txgate.tls.records13 after the handshake (txgate.tls.handover).
        self.hand_over = hand_over and handover.available()
        # Pending TLS-ALPN-01 challenges (txgate.acme.challenges.ChallengeBoard), attached by the runtime.
        self.challenges: Any = None
        self._sni = False  # any SNI entry (set below, once they are built)
        self.default_context = self._build(default)
        self._exact: dict[str, SSL.Context] = {}
        self._wildcard: dict[str, SSL.Context] = {}
        for name, ck in sni:
            n = _norm_name(name)
            table, key = (self._wildcard, n[2:]) if n.startswith("*.") else (self._exact, n)
            if key in table:
                raise DuplicateSNIName(f"duplicate SNI name {name!r}")
            table[key] = self._build(ck)
        self._sni = bool(self._exact or self._wildcard)

    def _build(self, ck: CertifiedKey) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(self._min)
        ctx.set_max_proto_version(self._max)
        _apply_ciphers(ctx, self._cipher_list, self._tls13)
        options = (
            SSL.OP_NO_COMPRESSION
            | OP_NO_RENEGOTIATION
            | OP_NO_CLIENT_RENEGOTIATION
            | OP_CIPHER_SERVER_PREFERENCE
        )
        if not self._tickets:
            options |= SSL.OP_NO_TICKET
        ctx.set_options(options)
        # Do NOT call set_tmp_ecdh: on OpenSSL 3+/4 it replaces the whole groups list with one curve.
        _set_groups(ctx, self._groups)
        # An idle connection gives its ~34 KiB of record buffers back to the allocator (issue 17).
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        ctx.use_certificate(ck.leaf)
        for extra in ck.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(ck.key)  # type: ignore[arg-type]
        ctx.check_privatekey()
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER if self._client_verifier is None else SSL.SESS_CACHE_OFF)
        ctx.set_session_id(self._sid_ctx)
        # Always: the ALPN callback also answers ACME TLS-ALPN-01 (RFC 8737) challenges.
        self._set_alpn(ctx)
        if self._client_verifier is not None:
            self._client_verifier.configure(ctx)
        elif self._verify is not None:
            mode, callback = self._verify
            ctx.set_verify(mode, callback)
        holder = self._staple(ck) if self._staple is not None else None
        if holder is not None:
            # Set now (contexts are never mutated later); the holder's response changes under it.
            ctx.set_ocsp_server_callback(holder.callback)
        # Set on every context: OpenSSL may consult the current context on a second ClientHello.
        ctx.set_tlsext_servername_callback(self._servername)
        if self.hand_over:
            handover.install(ctx)  # every context: SNI may switch a connection to another one
        return ctx

    def _set_alpn(self, ctx: SSL.Context) -> None:
        """ALPN selection by `_select_alpn`: through `_alpn_select` (OpenSSL's callback, no pyOpenSSL wrapper)
        where pyOpenSSL's bindings have the call, else through pyOpenSSL's own."""
        if _lib is None or not hasattr(_lib, "SSL_CTX_set_alpn_select_cb"):  # pragma: no cover
            ctx.set_alpn_select_callback(self._select_alpn)
            return
        handle = self.__dict__.get("_handle")
        if handle is None:
            handle = self._handle = _ffi.new_handle(self)
        ctx._txgate_alpn_handle = handle  # the callback's argument lives as long as the context
        _lib.SSL_CTX_set_alpn_select_cb(ctx._context, _alpn_select, handle)

    def _select_alpn(self, conn: SSL.Connection | None, offered) -> bytes | Any:
        """The protocol to speak among ``offered`` (a collection of names), or NO_OVERLAPPING_PROTOCOLS;
        ``conn`` (needed only when ``acme-tls/1`` is offered) gets the challenge certificate."""
        if ACME_TLS_ALPN in offered and self.challenges is not None:
            pair = self._acme_pair(conn)
            if pair is not None:
                # RFC 8737: the challenge certificate, for a client that offers acme-tls/1, and only then.
                conn.use_certificate(pair[0])
                conn.use_privatekey(pair[1])
                return ACME_TLS_ALPN
        for proto in self._alpn:
            if proto in offered:
                return proto
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def _acme_pair(self, conn: SSL.Connection):
        try:
            raw = conn.get_servername()
            return self.challenges.alpn_pair(raw.decode("ascii", "replace") if raw else None)
        except Exception:
            log.failure("ACME challenge certificate selection failed")
            return None

    def context_for(self, server_name: str | None) -> SSL.Context:
        """The context for an SNI name: exact match, then one-label wildcard, then the default."""
        if not server_name:
            return self.default_context
        name = _norm_name(server_name)
        ctx = self._exact.get(name)
        parent = wildcard_parent(name) if ctx is None else None
        if parent is not None:
            ctx = self._wildcard.get(parent)
        return ctx if ctx is not None else self.default_context

    def _servername(self, conn: SSL.Connection) -> None:
        if not self._sni:
            return  # one certificate: every name gets the default context, the one the connection has
        try:
            raw = conn.get_servername()
            if raw is None:
                return
            ctx = self.context_for(raw.decode("ascii", "replace"))
            if ctx is conn.get_context():
                return
            conn.set_context(ctx)
            # set_context swaps certificate and store but not the verify mode: re-apply it.
            if self._verify is not None:
                mode, callback = self._verify
                conn.set_verify(mode, callback)
        except Exception:
            log.failure("SNI context selection failed")

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """Create the server-side connection for one accepted TLS connection."""
        conn = handover.ServerConnection(self.default_context, None)
        if self._client_verifier is not None:
            # Not set_app_data: Twisted replaces the app data with tlsProtocol after this returns.
            self._client_verifier.attach(conn)
        return conn


def connection_facts(tls_transport: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """(sni, version, cipher, alpn) of a TLS transport after its handshake; None where unknown."""
    try:
        conn = tls_transport.getHandle()
    except AttributeError:
        return (None, None, None, None)
    if not isinstance(conn, SSL.Connection):
        return (None, None, None, None)
    if _lib is None:  # pragma: no cover
        return _public_facts(conn)
    # What pyOpenSSL's get_servername, get_protocol_version_name, get_cipher_name and
    # get_alpn_proto_negotiated return, read without their wrappers (four calls, two cffi allocations).
    ssl, lib, string = conn._ssl, _lib, _ffi.string
    raw = lib.SSL_get_servername(ssl, lib.TLSEXT_NAMETYPE_host_name)
    raw = string(raw) if raw != _ffi.NULL else None
    sni = raw.decode("ascii", "replace") if raw else None
    version = string(lib.SSL_get_version(ssl)).decode("utf-8")
    if not version or version == "Unknown":
        version = None
    cipher = lib.SSL_get_current_cipher(ssl)
    cipher = None if cipher == _ffi.NULL else string(lib.SSL_CIPHER_get_name(cipher)).decode("utf-8")
    lib.SSL_get0_alpn_selected(ssl, _ALPN, _ALPN_LEN)
    n = _ALPN_LEN[0]
    alpn = _ffi.buffer(_ALPN[0], n)[:].decode("ascii", "replace") if n else None
    return (sni, version, cipher, alpn)


def _public_facts(conn: SSL.Connection) -> tuple[str | None, str | None, str | None, str | None]:
    raw_sni = conn.get_servername()
    sni = raw_sni.decode("ascii", "replace") if raw_sni else None
    version = conn.get_protocol_version_name()
    if not version or version == "Unknown":
        version = None
    cipher = conn.get_cipher_name()
    alpn_raw = conn.get_alpn_proto_negotiated()
    alpn = alpn_raw.decode("ascii", "replace") if alpn_raw else None
    return (sni, version, cipher, alpn)
