# -*- test-case-name: tests.test_mtls_e2e -*-
"""Client-certificate verification inside the server handshake: trust store, CRLs, depth, callback.

One `ClientVerifier` per listener configures every `SSL.Context` of that listener (the default one
and each SNI one) identically, and its verify callback records on a per-connection
`ClientCertState` (kept beside the `SSL.Connection`: Twisted overwrites the connection's app data
with its TLS protocol) whether the chain verified, the fingerprint of each certificate of the verified
chain by depth (the CA certificates above the leaf, and the trust anchor at the top), and why a
certificate was refused.
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.logger import Logger

from txgate.tls.certs import signature_usage_problem
from txgate.tls.clientauth import VerifiedChain

log = Logger()

# OpenSSL X509_V_ERR_* values (stable across OpenSSL versions).
UNABLE_TO_GET_ISSUER_CERT = 2
UNABLE_TO_GET_CRL = 3
CERT_NOT_YET_VALID = 9
CERT_HAS_EXPIRED = 10
CRL_NOT_YET_VALID = 11
CRL_HAS_EXPIRED = 12
DEPTH_ZERO_SELF_SIGNED_CERT = 18
SELF_SIGNED_CERT_IN_CHAIN = 19
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
CERT_CHAIN_TOO_LONG = 22
CERT_REVOKED = 23
INVALID_PURPOSE = 26

#: The chain does not reach a trust anchor: tolerated in `optional` mode (APIs may list the leaf).
UNTRUSTED = frozenset({
    UNABLE_TO_GET_ISSUER_CERT, DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN,
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE,
})

# Reason codes of refused handshakes (log lines; stable like the JSON error codes).
REASONS = {
    CERT_HAS_EXPIRED: "client_certificate_expired",
    CERT_NOT_YET_VALID: "client_certificate_not_yet_valid",
    CERT_REVOKED: "client_certificate_revoked",
    CERT_CHAIN_TOO_LONG: "client_certificate_chain_too_long",
    INVALID_PURPOSE: "client_certificate_wrong_purpose",
    CRL_HAS_EXPIRED: "client_crl_expired",
    CRL_NOT_YET_VALID: "client_crl_not_yet_valid",
    UNABLE_TO_GET_CRL: "client_crl_missing",
}
UNTRUSTED_REASON = "client_certificate_untrusted"
MISSING_REASON = "client_certificate_required"
INVALID_REASON = "client_certificate_invalid"

MODES = ("optional", "require")
CRL_MISSING = ("refuse", "allow")


def reason_for(errno: int) -> str:
    """The reason code of an OpenSSL verify error."""
    if errno in UNTRUSTED:
        return UNTRUSTED_REASON
    return REASONS.get(errno, INVALID_REASON)


def _error_string(errno: int) -> str:
    from OpenSSL._util import ffi, lib  # private, only for the human text of a verify error

    return ffi.string(lib.X509_verify_cert_error_string(errno)).decode("ascii", "replace")


class ClientCertState:
    """What the verify callback learned about one connection's client certificate."""

    __slots__ = ("listener", "called", "verified", "chain", "reason", "detail", "leaf")

    def __init__(self, listener: str | None = None) -> None:
        self.listener = listener  # the listener whose trust store verifies this connection
        self.called = False  # the callback ran (not on a resumed session; resumption is off anyway)
        self.verified = True  # cleared when an untrusted chain is let through (optional mode)
        # depth -> SHA-256 of the certificate OpenSSL verified at that depth (0 = the leaf); the
        # highest depth is the trust anchor the chain ended at.
        self.chain: dict[int, bytes] = {}
        self.reason: str | None = None  # reason code of a refusal
        self.detail: str | None = None  # OpenSSL's words for it
        # (DER, parsed) of the leaf the callback last accepted at depth 0: the peer's certificate,
        # so that the connection need not fetch and parse it again after the handshake.
        self.leaf: tuple[bytes, x509.Certificate] | None = None

    @property
    def ca_fingerprints(self) -> VerifiedChain:
        """The CA certificates above the leaf (depth 1 upwards), with the anchor and the listener."""
        chain = self.chain
        top = max(chain) if chain else None
        return VerifiedChain((chain[d] for d in sorted(chain) if d > 0),
                             anchor=chain[top] if top is not None else None, listener=self.listener)


class ClientVerifier:
    """Configures a listener's contexts to request/verify client certificates."""

    def __init__(
        self,
        *,
        listener: str,
        mode: str,
        anchors: Sequence[x509.Certificate] = (),
        crls: Sequence[x509.CertificateRevocationList] = (),
        depth: int = 4,
        announce: bool = True,
        crl_missing: str = "refuse",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"client verification mode must be one of {', '.join(MODES)}, not {mode!r}")
        if crl_missing not in CRL_MISSING:
            raise ValueError(f"client_crl_missing must be one of {', '.join(CRL_MISSING)}, not {crl_missing!r}")
        # With CRLs, every certificate of the chain OpenSSL checks must be covered by one ("refuse"),
        # or a certificate whose issuer has no CRL is let through unchecked ("allow": weaker).
        self.crl_missing = crl_missing
        self.listener = listener
        self.mode = mode
        seen: dict[bytes, x509.Certificate] = {}
        for a in anchors:
            seen.setdefault(hashlib.sha256(a.public_bytes(serialization.Encoding.DER)).digest(), a)
        self.anchors = tuple(seen.values())
        self.crls = tuple(crls)
        self.depth = depth
        self.announce = announce
        self.verify_mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if mode == "require" else 0)
        self._anchors_x509 = [crypto.X509.from_cryptography(a) for a in self.anchors]
        # Per-connection state; weak keys, so a closed connection takes its state with it.
        self._states: weakref.WeakKeyDictionary[SSL.Connection, ClientCertState] = weakref.WeakKeyDictionary()

    def attach(self, conn: SSL.Connection) -> ClientCertState:
        """Start the per-connection state of a new server connection."""
        state = self._states[conn] = ClientCertState(self.listener)
        return state

    def state_of(self, conn: SSL.Connection) -> ClientCertState | None:
        """The state of a connection (None if it was never attached)."""
        return self._states.get(conn)

    def refusal(self, conn: SSL.Connection, no_client_certificate: bool) -> tuple[str | None, str | None]:
        """(reason code, detail) of a handshake refused for its client certificate, or (None, None).

        ``no_client_certificate``: the handshake failed because the client sent none (from
        ``tls.outcomes.classify_handshake_failure``), which the verify callback never sees.
        """
        try:
            state = self.state_of(conn)
        except Exception:  # a connection object that cannot be a dict key: no state
            state = None
        code = getattr(state, "reason", None)
        detail = getattr(state, "detail", None)
        if code is None and no_client_certificate:
            code, detail = MISSING_REASON, "no client certificate sent"
        return code, detail

    def _state(self, conn: SSL.Connection) -> ClientCertState:
        state = self._states.get(conn)
        return state if state is not None else self.attach(conn)

    @property
    def verify(self) -> tuple[int, Any]:
        """(mode, callback) for `SSL.Context.set_verify` / `SSL.Connection.set_verify`."""
        return self.verify_mode, self.callback

    def configure(self, ctx: SSL.Context) -> None:
        """Trust anchors, CRLs, depth, the CA names announced, verify mode and callback."""
        store = ctx.get_cert_store()
        for a in self._anchors_x509:
            store.add_cert(a)
        if self.crls:
            for crl in self.crls:
                store.add_crl(crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
        ctx.set_verify_depth(self.depth)
        if self.announce:
            for a in self.anchors:
                ctx.add_client_ca(a)
        # Without announce, OpenSSL sends an empty certificate_authorities list.
        ctx.set_verify(self.verify_mode, self.callback)

    def callback(self, conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
        """OpenSSL's verify callback: never turns an error into success except as documented."""
        if not ok:
            try:
                return self._on_error(conn, cert, errno, depth)
            except Exception:
                log.failure("client certificate verify callback failed")
                return False
        try:
            state = self._state(conn)
            state.called = True
            # OpenSSL signals success once per depth, from the anchor down to the leaf; a depth that is
            # not below the last one starts a new verification (never mix two chains).
            chain = state.chain
            if chain and depth >= min(chain):
                chain.clear()
            der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
            fingerprint = hashlib.sha256(der).digest()
            if depth == 0:
                # Only the leaf is parsed (its key usage); the CAs above it need just their fingerprint.
                parsed, problem = _leaf_facts(fingerprint, der)
                if problem is not None:
                    self._refuse(state, REASONS[INVALID_PURPOSE], problem, 0, parsed)
                    return False
                state.leaf = (der, parsed)
            chain[depth] = fingerprint
            return True
        except Exception:
            log.failure("client certificate verify callback failed")
            return False

    def _on_error(self, conn: SSL.Connection, cert: Any, errno: int, depth: int) -> bool:
        state = self._state(conn)
        state.called = True
        tolerated = (
            # Only pin / fingerprint / exact-file entries of an API can allow this certificate...
            (errno in UNTRUSTED and self.mode == "optional")
            # ...and for such a chain, trusted by no one, a CRL would prove nothing.
            or (errno == UNABLE_TO_GET_CRL and (self.crl_missing == "allow" or not state.verified)))
        if tolerated:
            if depth == 0 and not self._may_sign(state, cert.to_cryptography()):
                return False
            if errno in UNTRUSTED:
                state.verified = False
            return True
        self._refuse(state, reason_for(errno), _safe_error_string(errno), depth, cert)
        return False

    def _may_sign(self, state: ClientCertState, leaf: x509.Certificate) -> bool:
        """The leaf's key usage allows the signature the handshake authenticates it by (else refuse)."""
        problem = signature_usage_problem(leaf)
        if problem is None:
            return True
        self._refuse(state, REASONS[INVALID_PURPOSE], problem, 0, leaf)
        return False

    @staticmethod
    def _refuse(state: ClientCertState, reason: str, text: str, depth: int, cert: Any) -> None:
        """Record the first refusal of a connection: its reason code and OpenSSL's words, depth, subject."""
        if state.reason is not None:
            return
        state.reason = reason
        try:
            parsed = cert if isinstance(cert, x509.Certificate) else cert.to_cryptography()
            subject = parsed.subject.rfc4514_string()
        except Exception:
            subject = "?"
        state.detail = f"{text} (depth {depth}, '{subject}')"


# Parsed leaves by SHA-256 of their DER: mTLS clients present the same certificate on every
# connection, and parsing it (plus its key-usage check) is most of the callback's Python cost. Bounded:
# the oldest entry goes first.
_LEAF_CACHE: dict[bytes, tuple[x509.Certificate, str | None]] = {}
_LEAF_CACHE_SIZE = 256


def _leaf_facts(fingerprint: bytes, der: bytes) -> tuple[x509.Certificate, str | None]:
    """(parsed certificate, key-usage problem or None) of a leaf, from the cache when seen before."""
    facts = _LEAF_CACHE.get(fingerprint)
    if facts is None:
        parsed = x509.load_der_x509_certificate(der)
        facts = (parsed, signature_usage_problem(parsed))
        if len(_LEAF_CACHE) >= _LEAF_CACHE_SIZE:
            del _LEAF_CACHE[next(iter(_LEAF_CACHE))]
        _LEAF_CACHE[fingerprint] = facts
    return facts


def _safe_error_string(errno: int) -> str:
    try:
        return _error_string(errno)
    except Exception:
        return f"verify error {errno}"


def load_crls(path: str) -> list[x509.CertificateRevocationList]:
    """The CRLs of one file: PEM (one or more) or DER; ValueError says why not."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    if b"-----BEGIN X509 CRL-----" in data:
        out = []
        for block in data.split(b"-----BEGIN X509 CRL-----")[1:]:
            end = block.find(b"-----END X509 CRL-----")
            if end < 0:
                raise ValueError(f"{path}: unterminated PEM CRL block")
            pem = b"-----BEGIN X509 CRL-----" + block[: end] + b"-----END X509 CRL-----\n"
            try:
                out.append(x509.load_pem_x509_crl(pem))
            except ValueError as e:
                raise ValueError(f"{path}: invalid PEM CRL ({e})") from None
        return out
    try:
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise ValueError(f"{path}: not a CRL (expected PEM 'X509 CRL' blocks or DER)") from None
