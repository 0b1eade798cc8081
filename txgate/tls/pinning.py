# -*- test-case-name: tests.test_pinning_e2e -*-
"""Pin and verify: the upstream handshake's chain check against an operator's SPKI pins."""
from __future__ import annotations

from typing import Sequence

from twisted.logger import Logger

from txgate import pins as _pins
from txgate.errors import UpstreamPinMismatch

log = Logger()


def chain_pins(chain_der: Sequence[bytes]) -> list[str]:
    """The `sha256/` pins of a chain, for log lines ('malformed' where a certificate cannot be walked)."""
    out = []
    for der in chain_der:
        try:
            out.append(_pins.format_pin(_pins.spki_sha256(der)))
        except ValueError:
            out.append("malformed")
    return out


class PinCheck:
    """Called once per upstream TLS handshake with the verified chain (leaf first).

    Enforce mode raises `UpstreamPinMismatch` (the handshake fails before any request byte is
    written); report mode logs the mismatch and lets the connection through.
    """

    def __init__(self, pinset, expected: Sequence[str], mode: str, api: str, target: str) -> None:
        self.pinset = pinset
        self.expected = list(expected)
        self.mode = mode
        self.api = api
        self.target = target

    def __call__(self, chain_der: Sequence[bytes]) -> None:
        try:
            if self.pinset.first_match(chain_der) is not None:
                return
        except _pins.MalformedCertificate as e:
            raise UpstreamPinMismatch(f"pin check failed: malformed certificate in the chain ({e})") from None
        seen = chain_pins(chain_der)
        if self.mode == "report":
            log.warn(
                "upstream {target} (api {api}) pin mismatch [report mode: allowed]: "
                "expected one of {expected}; chain has {seen}",
                target=self.target, api=self.api, expected=", ".join(self.expected), seen=", ".join(seen),
                code="upstream_pin_mismatch",
            )
            return
        raise UpstreamPinMismatch(
            f"pin mismatch: expected one of {', '.join(self.expected)}; chain has {', '.join(seen)}"
        )
