# -*- test-case-name: tests.test_runtime_unit,tests.test_metrics,tests.test_serverconn -*-
"""Failed TLS handshakes: the one reading of why a handshake failed into a stable outcome code.

OpenSSL reports a failed handshake as text (a list of ``(lib, func, reason)`` tuples, or an
exception); this module is the only place that reads that text (``represents_eof`` too: the TLS
layer's own test for a peer that closed TCP without close_notify). Listeners and the admin API log
``why`` and count ``outcome`` (the ``result`` label of ``txgate_tls_handshakes_total``).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from OpenSSL.SSL import SysCallError


class HandshakeOutcome(StrEnum):
    """Why a TLS handshake did not complete, as a metrics label (refusals of client certificates aside)."""

    ABORTED = "aborted"  # the peer went away (or we closed) before the handshake finished
    PROTOCOL_ERROR = "protocol_error"  # no TLS, or no common version, cipher or ALPN protocol
    FAILED = "failed"  # anything else (e.g. an alert from the client)


# OpenSSL reason fragments of a handshake that never agreed on a protocol (plain HTTP on a TLS
# port, no common version or cipher, a scanner): "protocol_error" rather than "failed".
_PROTOCOL_FRAGMENTS = (
    "wrong version number", "http request", "https proxy request", "unsupported protocol",
    "no shared cipher", "unknown protocol", "version too low", "no protocols available",
    "packet length too long", "record layer failure", "no application protocol", "inappropriate fallback",
)
_NO_CERTIFICATE = "peer did not return a certificate"


class PlainHTTPRequest(Exception):
    """Plain HTTP arrived where a TLS handshake was expected (answered with a 400 and a hint)."""

    def __init__(self) -> None:
        super().__init__("plain http request on a TLS port (answered 400)")


@dataclass(frozen=True)
class HandshakeFailure:
    """One failed handshake: the text to log, its outcome, and whether the client sent no certificate."""

    why: str
    outcome: HandshakeOutcome
    no_client_certificate: bool


def describe(reason) -> str:
    """OpenSSL's reasons of a failed handshake joined with '; ', else 'Class: message' of the exception."""
    value = getattr(reason, "value", reason)
    args = getattr(value, "args", None)
    if args and isinstance(args[0], list) and args[0]:
        parts = []
        for item in args[0]:
            if isinstance(item, tuple) and len(item) >= 3:
                parts.append(str(item[2]))
        if parts:
            return "; ".join(parts)
    return f"{value.__class__.__name__}: {value}" if str(value) else value.__class__.__name__


def outcome_of(why: str) -> HandshakeOutcome:
    """The outcome of a failed handshake from its description (``describe``)."""
    text = why.lower()
    if "connectiondone" in text or "connectionlost" in text or "connection was closed" in text:
        return HandshakeOutcome.ABORTED
    for fragment in _PROTOCOL_FRAGMENTS:
        if fragment in text:
            return HandshakeOutcome.PROTOCOL_ERROR
    return HandshakeOutcome.FAILED


def represents_eof(error: Exception) -> bool:
    """Does this OpenSSL error (``SSL.Error`` or ``SysCallError``) stand for the peer closing TCP without
    close_notify? The TLS layer reports such an end as ``ConnectionLost`` (an "aborted" handshake)."""
    if isinstance(error, SysCallError):
        reason = error.args[1]
    else:
        queue = error.args[0] if error.args else None
        if not queue:
            return True  # OpenSSL 4 reports an unexpected EOF with an empty error queue
        reason = queue[-1][2]
    return str(reason).casefold().startswith("unexpected eof")


def classify_handshake_failure(reason) -> HandshakeFailure:
    """A failed handshake's reason (a Failure or an exception) -> what to log and what to count."""
    why = describe(reason)
    return HandshakeFailure(why, outcome_of(why), _NO_CERTIFICATE in why)
