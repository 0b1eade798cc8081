# -*- test-case-name: tests.test_ocsp_unit -*-
"""The cached OCSP status of a certificate, as ``txgate cert show`` prints it."""
from __future__ import annotations

from datetime import datetime, timezone

from cryptography import x509

from txgate.ocsp import cache
from txgate.ocsp.check import OCSPError, cert_key, verify_response


def cached_status_line(chain: list[x509.Certificate], state_dir: str, now: datetime | None = None) -> str | None:
    """One line about the leaf's cached response in ``state_dir`` (None: no issuer in the chain, nothing cached)."""
    if len(chain) < 2:
        return None
    der = cache.load(state_dir, cert_key(chain[0], chain[1]))
    if der is None:
        return None
    where = cache.cache_path(state_dir, cert_key(chain[0], chain[1]))
    try:
        st = verify_response(der, chain[0], chain[1], now or datetime.now(timezone.utc))
    except OCSPError as e:
        return f"OCSP (cached, {where}): not usable: {e}"
    nxt = f"{st.next_update:%Y-%m-%dT%H:%M:%SZ}" if st.next_update else "none"
    text = f"OCSP (cached, {where}): {st.status}, thisUpdate {st.this_update:%Y-%m-%dT%H:%M:%SZ}, nextUpdate {nxt}"
    if st.revocation_time is not None:
        text += f", revoked {st.revocation_time:%Y-%m-%dT%H:%M:%SZ}"
    return text
