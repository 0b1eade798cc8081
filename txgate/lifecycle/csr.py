# -*- test-case-name: tests.test_lifecycle -*-
"""Certificate signing requests: build one for a key, load one and verify its signature."""
from __future__ import annotations

from typing import Iterable

from cryptography import x509
from cryptography.x509.oid import NameOID

from txgate.lifecycle.keys import LifecycleError, first_name, subject_alt_names
from txgate.tls.builders import sign_algorithm
from txgate.tls.certs import PrivateKey


def build_csr(
    key: PrivateKey, *, dns: Iterable[str] = (), ips: Iterable[str] = (), common_name: str | None = None
) -> x509.CertificateSigningRequest:
    """A CSR signed by ``key`` with CN = ``common_name`` (default: the first name) and the SANs."""
    sans = subject_alt_names(dns, ips)
    cn = common_name or first_name(sans)
    if not sans and not cn:
        raise LifecycleError("give at least one --dns NAME or --ip ADDR")
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (cn or "")[:64])])
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, sign_algorithm(key))  # type: ignore[arg-type]


def load_csr(data: bytes, path: str = "CSR") -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR and verify its self-signature; LifecycleError (one line) otherwise."""
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError:
        raise LifecycleError(f"{path}: not a certificate signing request (PEM or DER)") from None
    try:
        ok = csr.is_signature_valid
    except Exception:  # unsupported key or algorithm: cannot be verified, so refuse it
        ok = False
    if not ok:
        raise LifecycleError(f"{path}: the CSR signature does not verify")
    return csr
