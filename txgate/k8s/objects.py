# -*- test-case-name: tests.test_k8s_unit -*-
"""Pure decisions on Kubernetes objects: a TLS Secret's certificate, a CSR's body, status and renewal time."""
from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime

from txgate.tls.certs import CertificateError, parse_certificates, parse_private_key, public_key_der

CSR_API = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SERVER_USAGES = ("digital signature", "key encipherment", "server auth")
CLIENT_USAGES = ("digital signature", "key encipherment", "client auth")


class SecretProblem(Exception):
    """A Secret that cannot be served (one line naming what is wrong, never its content)."""


@dataclass(frozen=True)
class TlsSecret:
    """The PEM parts of a kubernetes.io/tls Secret."""

    chain_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None
    resource_version: str


def secret_path(namespace: str, name: str | None = None) -> str:
    """The API path of a namespace's Secrets (or of one Secret)."""
    base = f"/api/v1/namespaces/{namespace}/secrets"
    return base if name is None else f"{base}/{name}"


def parse_tls_secret(obj: dict, now: datetime) -> TlsSecret:
    """A Secret object -> TlsSecret; SecretProblem when tls.crt/tls.key are missing, malformed or do not match."""
    data = obj.get("data") or {}

    def field(key: str) -> bytes | None:
        value = data.get(key)
        if value is None:
            return None
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise SecretProblem(f"{key} is not base64") from None

    crt, key, ca = field("tls.crt"), field("tls.key"), field("ca.crt")
    if not crt or not key:
        raise SecretProblem("no tls.crt and tls.key (not a kubernetes.io/tls Secret?)")
    try:
        chain = parse_certificates(crt, "tls.crt")
        private = parse_private_key(key, "tls.key")
    except CertificateError as e:
        raise SecretProblem(str(e)) from None
    if public_key_der(private.public_key()) != public_key_der(chain[0].public_key()):
        raise SecretProblem("tls.key does not match the certificate in tls.crt")
    if now > chain[0].not_valid_after_utc:
        raise SecretProblem(f"the certificate in tls.crt expired on {chain[0].not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return TlsSecret(chain_pem=crt, key_pem=key, ca_pem=ca, resource_version=rv)


def parse_secret_ca(obj: dict, key: str) -> bytes:
    """The PEM CA bundle under ``data[key]`` of a Secret; SecretProblem when it is missing or not PEM certificates."""
    value = (obj.get("data") or {}).get(key)
    if value is None:
        present = ", ".join(sorted(obj.get("data") or {})) or "none"
        raise SecretProblem(f"no {key} in the Secret (its keys: {present})")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise SecretProblem(f"{key} is not base64") from None
    try:
        certs = parse_certificates(raw, key)
    except CertificateError as e:
        raise SecretProblem(str(e)) from None
    from cryptography.hazmat.primitives.serialization import Encoding

    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def split_names(names) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of a listener's names."""
    dns, ips = [], []
    for n in names:
        try:
            ipaddress.ip_address(n)
            ips.append(n)
        except ValueError:
            dns.append(n)
    return dns, ips


def csr_public_key(csr_pem: bytes) -> bytes | None:
    """The DER SubjectPublicKeyInfo of a PEM CSR (None when it does not parse)."""
    from cryptography import x509

    try:
        return public_key_der(x509.load_pem_x509_csr(csr_pem).public_key())
    except ValueError:
        return None


def csr_object_name(store_name: str, pod: str, csr_pem: bytes) -> str:
    """The CSR's object name: txgate-POD-USE-KEYHASH, a valid DNS subdomain.

    One per replica, use and key: a restart finds the CSR of its pending key again by name, and a
    new key (a renewal, or after a denial) gets a new name.
    """
    import hashlib

    digest = hashlib.sha256(csr_public_key(csr_pem) or csr_pem).hexdigest()[:16]
    raw = f"txgate-{pod}-{store_name}".lower()
    raw = re.sub(r"[^a-z0-9.-]+", "-", raw).strip("-.")
    return f"{raw[:253 - 17].rstrip('-.')}-{digest}"


def csr_body(name: str, csr_pem: bytes, signer: str, *, client: bool, expiration_seconds: int) -> dict:
    """The CertificateSigningRequest to create."""
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "txgate"}},
        "spec": {
            "request": base64.b64encode(csr_pem).decode(),
            "signerName": signer,
            "usages": list(CLIENT_USAGES if client else SERVER_USAGES),
            "expirationSeconds": int(expiration_seconds),
        },
    }


@dataclass(frozen=True)
class CsrState:
    """Where a CSR stands: ``outcome`` is pending, issued, denied or failed."""

    outcome: str
    certificate: bytes | None = None
    reason: str = ""
    message: str = ""


def csr_state(obj: dict) -> CsrState:
    """The state of a CSR object (Denied and Failed win over Approved; issued once status.certificate is set)."""
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    for cond in conditions:
        if cond.get("type") in ("Denied", "Failed") and cond.get("status", "True") == "True":
            return CsrState(cond["type"].lower(), reason=str(cond.get("reason") or ""),
                            message=str(cond.get("message") or ""))
    cert = status.get("certificate")
    if cert:
        try:
            return CsrState("issued", certificate=base64.b64decode(cert, validate=True))
        except ValueError:
            return CsrState("failed", reason="BadCertificate", message="status.certificate is not base64")
    return CsrState("pending")


def resume_action(obj: dict | None, pending_csr_pem: bytes | None) -> str:
    """What to do at start with the pending key in the store and the CSR found under its name.

    ``new-key``: no pending key, or its CSR was denied/failed or holds another key: make a key and a
    CSR; ``submit``: the CSR is gone (never sent, or garbage-collected): submit one for the pending
    key; ``follow``: pending, approved or issued: keep following it.
    """
    if pending_csr_pem is None:
        return "new-key"
    if obj is None:
        return "submit"
    try:
        theirs = base64.b64decode((obj.get("spec") or {}).get("request") or "", validate=True)
    except ValueError:
        return "new-key"
    mine = csr_public_key(pending_csr_pem)
    if mine is None or csr_public_key(theirs) != mine:
        return "new-key"
    if csr_state(obj).outcome in ("denied", "failed"):
        return "new-key"
    return "follow"


def renew_at(not_before: datetime, not_after: datetime) -> datetime:
    """When to renew a certificate: at 2/3 of its lifetime."""
    return not_before + (not_after - not_before) * 2 / 3
