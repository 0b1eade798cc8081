# -*- test-case-name: tests.test_pinning_e2e -*-
"""Upstream TLS: one pre-built client context, verification with reasons, chain checks in the handshake."""
from __future__ import annotations

from typing import Any, Callable

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from service_identity.exceptions import CertificateError as SICertificateError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate.config.hostnames import is_ip
from txgate.errors import GatewayError, UpstreamTLSError
from txgate.tls.certs import CertificateError, CertifiedKey, cert_names, format_time, signature_usage_problem, subject_label
from txgate.tls.server import DEFAULT_CIPHERS, OP_NO_RENEGOTIATION, TLSSettingError, tls_version

log = Logger()

#: ``chain_check(ders)`` receives the DER certificates of the chain, LEAF FIRST (index == depth).
ChainCheck = Callable[[list[bytes]], None]

# OpenSSL X509_V_ERR_* numbers (stable since 1.0) -> what an operator needs to read.
_VERIFY_REASONS: dict[int, str] = {
    2: "unknown CA (unable to get issuer certificate)",
    4: "certificate signature cannot be decrypted",
    7: "certificate signature failure",
    9: "certificate not yet valid",
    10: "certificate expired",
    13: "certificate has an invalid notBefore field",
    14: "certificate has an invalid notAfter field",
    18: "self-signed certificate",
    19: "self-signed certificate in chain (unknown CA)",
    20: "unknown CA (unable to get local issuer certificate)",
    21: "unknown CA (unable to verify the first certificate)",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "invalid CA certificate",
    25: "path length constraint exceeded",
    26: "certificate not valid for server authentication (unsupported purpose)",
    27: "certificate not trusted",
    28: "certificate rejected",
    32: "issuer key usage does not allow signing certificates",
    47: "name constraints violation",
    66: "certificate key too small",
    67: "CA certificate key too small",
    68: "CA signature digest algorithm too weak",
}


def verify_error_reason(errno: int, cert: Any, depth: int) -> str:
    """A human reason for an OpenSSL verify error on ``cert`` at ``depth``."""
    text = _VERIFY_REASONS.get(errno)
    if text is None:
        try:
            text = SSL._ffi.string(SSL._lib.X509_verify_cert_error_string(errno)).decode()
        except Exception:
            text = "certificate verification failed"
        text = f"{text} (verify error {errno})"
    label = "?"
    try:
        c = cert.to_cryptography()
        label = subject_label(c)
        if errno == 10:
            text = f"certificate expired on {format_time(c.not_valid_after_utc)}"
        elif errno == 9:
            text = f"certificate not yet valid (not before {format_time(c.not_valid_before_utc)})"
    except Exception:
        pass
    return f"{text} [depth {depth}: {label}]"


@implementer(IOpenSSLClientConnectionCreator)
class UpstreamTLS:
    """Creates client TLS connections to one upstream name with verification, SNI and ALPN."""

    def __init__(
        self,
        server_name: str,
        *,
        ca_path: str | None = None,
        ca_certs: list | None = None,
        verify: bool = True,
        client_certificate: CertifiedKey | None = None,
        min_tls: str = "1.2",
        ciphers: str | None = None,
        chain_check: ChainCheck | None = None,
        tls13_ciphersuites: str | None = None,
    ) -> None:
        name = server_name.strip().strip("[]")
        self.server_name = name
        self._is_ip = is_ip(name)
        self._sni = None if self._is_ip else name.rstrip(".").encode("idna")
        self._verify = verify
        self._chain_check = chain_check
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(tls_version(min_tls))
        try:
            ctx.set_cipher_list((ciphers if ciphers is not None else DEFAULT_CIPHERS).encode("ascii"))
            if tls13_ciphersuites:
                ctx.set_tls13_ciphersuites(tls13_ciphersuites.encode("ascii"))
        except SSL.Error as e:
            raise TLSSettingError("upstream_ciphers", f"invalid cipher configuration: {e}") from None
        ctx.set_options(SSL.OP_NO_COMPRESSION | OP_NO_RENEGOTIATION)
        ctx.set_alpn_protos([b"http/1.1"])
        if ca_certs is not None:  # the CA bundle already loaded (a file, or a Secret's key)
            store = ctx.get_cert_store()
            for ca in ca_certs:
                store.add_cert(crypto.X509.from_cryptography(ca))
        elif ca_path is not None:
            try:
                ctx.load_verify_locations(ca_path)
            except SSL.Error:
                raise CertificateError(ca_path, "cannot load CA bundle (missing or not PEM)") from None
        else:
            # pyOpenSSL falls back to the usual system bundle paths under cryptography's wheels.
            ctx.set_default_verify_paths()
        if client_certificate is not None:
            ctx.use_certificate(client_certificate.leaf)
            for extra in client_certificate.chain[1:]:
                ctx.add_extra_chain_cert(extra)
            ctx.use_privatekey(client_certificate.key)  # type: ignore[arg-type]
            ctx.check_privatekey()
        # The real callback is per connection (it needs the protocol); this mode is the fallback.
        ctx.set_verify(SSL.VERIFY_PEER, None)
        self.context = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """Create the client-side connection for one upstream TLS connection."""
        conn = SSL.Connection(self.context, None)
        if self._sni is not None:
            conn.set_tlsext_host_name(self._sni)
        # VERIFY_PEER even with verify=False: the callback then accepts everything but a chain_check
        # veto, and only VERIFY_PEER makes a False return abort the handshake.
        conn.set_verify(SSL.VERIFY_PEER, self._make_callback(tlsProtocol))
        return conn

    def _make_callback(self, tlsProtocol: Any) -> Callable[[SSL.Connection, Any, int, int, int], bool]:
        ders: dict[int, bytes] = {}
        state: dict[str, Any] = {"proto": tlsProtocol, "failed": False, "done": False}

        def fail(exc: BaseException) -> bool:
            proto = state["proto"]
            state["failed"] = True
            state["proto"] = None
            if proto is not None:
                proto.failVerification(Failure(exc))
            return False

        def callback(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
            try:
                if state["failed"]:
                    return False
                if self._verify and not ok:
                    return fail(UpstreamTLSError(verify_error_reason(errno, cert, depth)))
                if depth == 0 and state["done"]:
                    return True
                if self._verify:
                    ders[depth] = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
                    if depth != 0:
                        return True
                    reason = self._identity_mismatch(cert) or _usage_problem(cert)
                    if reason is not None:
                        return fail(UpstreamTLSError(reason))
                    chain = [ders[d] for d in sorted(ders)]
                else:
                    if depth != 0:
                        return True
                    # Unverified (pins only): the handshake proves the server holds the leaf's
                    # key and nothing else; any other certificate it sends may be a public one it
                    # merely appended, so only the leaf can satisfy a pin.
                    chain = [crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)]
                if self._chain_check is not None:
                    try:
                        self._chain_check(chain)
                    except Exception as e:
                        return fail(e)
                # The protocol is kept: OpenSSL may still report an error after this success at depth 0
                # (name constraints, policies), and its reason must reach the request.
                state["done"] = True
                return True
            except BaseException as e:  # pyOpenSSL would swallow it: fail closed, keep the reason.
                log.failure("upstream TLS verify callback failed")
                return fail(UpstreamTLSError(f"certificate check error: {e!r}"))

        return callback

    def _identity_mismatch(self, cert: Any) -> str | None:
        c = cert.to_cryptography()
        try:
            if self._is_ip:
                verify_certificate_ip_address(c, self.server_name)
            else:
                verify_certificate_hostname(c, self.server_name)
        except (VerificationError, SICertificateError):
            names = cert_names(c) or [f"CN={subject_label(c)} (no SAN)"]
            return f"hostname mismatch: certificate is for {', '.join(names)}; expected {self.server_name}"
        return None


def _usage_problem(cert: Any) -> str | None:
    problem = signature_usage_problem(cert.to_cryptography())
    return None if problem is None else f"{problem} [depth 0: {subject_label(cert.to_cryptography())}]"


_ALERT_REASONS: list[tuple[str, str]] = [
    ("certificate required", "server requires a client certificate (alert certificate required)"),
    ("alert bad certificate", "server rejected our client certificate (alert bad certificate)"),
    ("alert unknown ca", "server rejected our client certificate (alert unknown ca)"),
    ("alert certificate unknown", "server rejected our client certificate (alert certificate unknown)"),
    ("alert certificate expired", "server rejected our client certificate (alert certificate expired)"),
    ("alert access denied", "server denied access (alert access denied)"),
    ("alert protocol version", "TLS version mismatch (alert protocol version)"),
    ("unsupported protocol", "TLS version mismatch (server chose an unsupported protocol version)"),
    ("wrong version number", "not TLS or TLS version mismatch (wrong version number)"),
    ("alert internal error", "server aborted the handshake (alert internal error; a client certificate policy?)"),
    ("alert handshake failure", "handshake failure: server sent alert handshake failure (no common cipher or parameters?)"),
    ("alert no application protocol", "handshake failure: no common application protocol (ALPN)"),
    ("certificate verify failed", "certificate verify failed"),
]


def tls_failure_reason(failure: Failure) -> str:
    """A concise human reason for a TLS client connection lost during its handshake."""
    exc = failure.value
    if isinstance(exc, GatewayError):
        return exc.message
    if isinstance(exc, SSL.Error):
        parts: list[str] = []
        if exc.args and isinstance(exc.args[0], list):
            for item in exc.args[0]:
                if isinstance(item, tuple) and item:
                    parts.append(str(item[-1]))
                else:
                    parts.append(str(item))
        else:
            parts = [str(a) for a in exc.args]
        text = "; ".join(p for p in parts if p) or type(exc).__name__
        low = text.lower()
        for needle, reason in _ALERT_REASONS:
            if needle in low:
                return reason
        return f"handshake failure: {text}"
    if isinstance(exc, (ConnectionDone, ConnectionLost)):
        return "connection closed during the TLS handshake"
    return f"handshake failure: {failure.getErrorMessage()}"


def upstream_tls_error(label: str, failure: Failure, *, in_handshake: bool) -> UpstreamTLSError:
    """The error a request sees when TLS with upstream target ``label`` failed (in or after the handshake)."""
    exc = failure.value
    if isinstance(exc, UpstreamTLSError):
        # Raised by our own checks (verification, pins): its code and reason stand, named by target.
        exc.message = f"{label}: {exc.message}"
        return exc
    # TLS 1.3: a server checks our client certificate after our side finished the handshake, so
    # its alert can arrive in place of the response ("TLS failure" rather than "handshake failed").
    what = "TLS handshake failed" if in_handshake else "TLS failure"
    return UpstreamTLSError(f"{label}: {what}: {tls_failure_reason(failure)}")
