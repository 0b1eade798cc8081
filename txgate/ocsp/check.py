# -*- test-case-name: tests.test_ocsp_unit -*-
"""OCSP requests and response verification (RFC 6960): pure functions over cryptography objects.

A response is trusted when it is signed by the issuer itself, or by a responder certificate the
issuer signed directly that carries the OCSP-signing extended key usage and is valid now; when it
answers for this issuer and serial; and when ``thisUpdate <= now (+ skew) < nextUpdate``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

#: Clock skew tolerated on thisUpdate (a responder slightly ahead of us).
SKEW = timedelta(minutes=5)
#: How long a response without nextUpdate counts as current after its thisUpdate.
NO_NEXT_UPDATE_VALIDITY = timedelta(hours=1)
# TLS Feature extension (RFC 7633) value 5 = status_request: "OCSP Must-Staple".
_STATUS_REQUEST = 5


class OCSPError(Exception):
    """A response that cannot be used; ``reason`` is a short stable code (also a metric label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Status:
    """A verified answer for one certificate."""

    status: str  # "good" | "revoked" | "unknown"
    this_update: datetime
    next_update: datetime | None
    der: bytes
    revocation_time: datetime | None = None

    def expires(self) -> datetime:
        """When this answer stops being current."""
        return self.next_update or self.this_update + NO_NEXT_UPDATE_VALIDITY

    def current(self, now: datetime) -> bool:
        """True while ``now`` is inside [thisUpdate - skew, expiry)."""
        return self.this_update - SKEW <= now < self.expires()


def responder_url(cert: x509.Certificate) -> str | None:
    """The first http(s) OCSP URL of the certificate's AIA extension, or None."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
                desc.access_location, x509.UniformResourceIdentifier):
            url = desc.access_location.value
            if url.lower().startswith(("http://", "https://")):
                return url
    return None


def must_staple(cert: x509.Certificate) -> bool:
    """True if the certificate carries the TLS Feature status_request (OCSP Must-Staple)."""
    try:
        features = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    except x509.ExtensionNotFound:
        return False
    return any(f.value == _STATUS_REQUEST for f in features)


def cert_key(cert: x509.Certificate, issuer: x509.Certificate) -> str:
    """A stable name for (issuer key, serial): the cache file name and the holder key."""
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"{hashlib.sha256(spki).hexdigest()[:32]}-{cert.serial_number:x}"


def build_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """The DER OCSPRequest for one certificate (SHA-1 CertID, as every responder understands; no nonce)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def _verify_signature(public_key, signature: bytes, data: bytes, algorithm) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(algorithm))
    else:  # Ed25519 / Ed448 carry no separate hash
        public_key.verify(signature, data)


def _is_ocsp_signer(responder: x509.Certificate) -> bool:
    try:
        eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku


def _signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime):
    """The public key that must have signed ``resp``: the issuer's, or a delegated responder's."""
    issuer_spki = issuer.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    if _responder_is(resp, issuer):
        return issuer.public_key()
    for cand in resp.certificates:
        if not _responder_is(resp, cand):
            continue
        if cand.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) == issuer_spki:
            return issuer.public_key()
        if not _is_ocsp_signer(cand):
            raise OCSPError("untrusted_responder", "delegated responder certificate lacks the OCSP-signing EKU")
        try:
            cand.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise OCSPError("untrusted_responder", "delegated responder certificate not issued by the issuer") from None
        if not cand.not_valid_before_utc <= now <= cand.not_valid_after_utc:
            raise OCSPError("untrusted_responder", "delegated responder certificate is not valid now")
        return cand.public_key()
    raise OCSPError("untrusted_responder", "signed by neither the issuer nor a certificate it delegated")


def _responder_is(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the ResponderID (by name, or by SHA-1 of the key bits) names ``cert``."""
    if resp.responder_name is not None:
        return resp.responder_name == cert.subject
    return resp.responder_key_hash == hashlib.sha1(_subject_public_key_bits(cert)).digest()


def verify_response(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: datetime) -> Status:
    """Check a DER OCSPResponse for ``cert``; its Status, or OCSPError naming why it cannot be used."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        raise OCSPError("malformed", str(e)) from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPError("responder_error", resp.response_status.name.lower())
    public_key = _signer(resp, issuer, now)
    try:
        _verify_signature(public_key, resp.signature, resp.tbs_response_bytes, resp.signature_hash_algorithm)
    except (InvalidSignature, TypeError, ValueError):
        raise OCSPError("bad_signature") from None
    single = _single_for(resp, cert, issuer)
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if this_update - SKEW > now:
        raise OCSPError("not_yet_valid", f"thisUpdate {this_update:%Y-%m-%dT%H:%M:%SZ} is in the future")
    if next_update is not None and next_update <= now:
        raise OCSPError("expired", f"nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ} has passed")
    if next_update is None and this_update + NO_NEXT_UPDATE_VALIDITY <= now:
        raise OCSPError("expired", "no nextUpdate and thisUpdate is over an hour old")
    status = {ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked"}.get(
        single.certificate_status, "unknown")
    revoked_at = single.revocation_time_utc if status == "revoked" else None
    return Status(status, this_update, next_update, der, revoked_at)


def _single_for(resp: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate):
    name_der = issuer.subject.public_bytes()
    for single in resp.responses:
        if single.serial_number != cert.serial_number:
            continue
        algo = single.hash_algorithm
        h = hashes.Hash(algo)
        h.update(name_der)
        if single.issuer_name_hash != h.finalize():
            continue
        h = hashes.Hash(algo)
        h.update(_subject_public_key_bits(issuer))
        if single.issuer_key_hash != h.finalize():
            continue
        return single
    raise OCSPError("wrong_certificate", f"no answer for serial {cert.serial_number:x} of this issuer")


def _subject_public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents (what CertID's issuerKeyHash hashes)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # SPKI = SEQUENCE { AlgorithmIdentifier, BIT STRING }: skip the outer header and the algorithm.
    i = _skip_header(spki, 0)
    i = _skip_tlv(spki, i)
    j = _skip_header(spki, i)
    return spki[j + 1:]  # drop the unused-bits octet


def _skip_header(der: bytes, i: int) -> int:
    length = der[i + 1]
    return i + 2 + (length - 0x80 if length & 0x80 else 0)


def _skip_tlv(der: bytes, i: int) -> int:
    first = der[i + 1]
    if first & 0x80:
        n = first - 0x80
        length = int.from_bytes(der[i + 2:i + 2 + n], "big")
        return i + 2 + n + length
    return i + 2 + first
