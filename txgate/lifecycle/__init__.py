# -*- test-case-name: tests.test_lifecycle -*-
"""Certificate lifecycle: a private CA, issuing, CSRs, self-signed certificates, describing certificates.

Pure functions over cryptography objects (``now`` is always passed in); file writing goes through
``txgate.fileio`` (keys 0600 from the first byte). The ``txgate ca|cert|csr|selfsigned`` commands in
``txgate.cli_certs`` are thin wrappers around this API:

- ``LifecycleError``: bad input, ``str()`` is one line for the user, never key material.
- keys: ``generate_key(key_type="ec"|"rsa")``, ``private_key_pem(key)``, ``subject_alt_names(dns, ips)``,
  ``normalize_dns(name)``, ``parse_ip(text)``.
- ca: ``CA(certificate, key, directory)``; ``init_ca(directory, *, name, key_type, days, now) -> CA``;
  ``load_ca(directory, *, now) -> CA``.
- issue: ``issue_certificate(ca, *, dns, ips, client, days, now, key=None, key_type="ec",
  common_name=None) -> CertifiedKey``; ``sign_csr(ca, csr, *, days, client, now) -> x509.Certificate``;
  ``self_signed(*, dns, ips, days, now, key=None, key_type="ec", common_name=None) -> CertifiedKey``.
- csr: ``build_csr(key, *, dns, ips, common_name=None)``; ``load_csr(data, path)`` (verifies the signature).
- show: ``describe_certificate(cert) -> [(label, value)]``, ``format_certificates(certs) -> str``,
  ``spki_pin(cert)``, ``fingerprint(cert)``, ``key_description(public_key)``.
"""
from __future__ import annotations

from txgate.lifecycle.ca import CA, init_ca, load_ca
from txgate.lifecycle.csr import build_csr, load_csr
from txgate.lifecycle.issue import issue_certificate, self_signed, sign_csr
from txgate.lifecycle.keys import LifecycleError, generate_key, private_key_pem, subject_alt_names
from txgate.lifecycle.show import describe_certificate, fingerprint, format_certificates, key_description, spki_pin

__all__ = [
    "CA",
    "LifecycleError",
    "build_csr",
    "describe_certificate",
    "fingerprint",
    "format_certificates",
    "generate_key",
    "init_ca",
    "issue_certificate",
    "key_description",
    "load_ca",
    "load_csr",
    "private_key_pem",
    "self_signed",
    "sign_csr",
    "spki_pin",
    "subject_alt_names",
]
