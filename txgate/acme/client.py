"""Talking to the ACME CA (blocking; run in a thread): directory, account, order, challenges, finalize.

Built on certbot's ``acme`` package (messages, JWS, nonces, the badNonce retry). acme 5.x has no
TLS-ALPN-01 classes any more: the two small message classes are registered here, and the challenge
certificate is built by ``txgate.acme.challenges``.
"""
# -*- test-case-name: tests.test_acme_e2e -*-
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import josepy as jose
from acme import challenges, client, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from txgate.acme.challenges import ChallengeBoard
from txgate.config.model import AcmeConfig

USER_AGENT = "txgate-acme"
ORDER_TIMEOUT = 120.0
# badNonce: the library retries once; a CA rejecting many nonces (pebble's PEBBLE_WFE_NONCEREJECT) needs more.
NONCE_RETRIES = 10
# A Retry-After while polling an authorization is honoured up to this (the order's deadline still applies).
MAX_POLL_WAIT = 10.0


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds of a ``Retry-After`` header (delay-seconds or HTTP-date), or None when absent or malformed."""
    from email.utils import parsedate_to_datetime

    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class Network(client.ClientNetwork):
    """The library's ClientNetwork, plus: ``badNonce`` retried up to NONCE_RETRIES times (with the fresh
    nonce of the error response), and an error's ``Retry-After`` kept on the error (``retry_after``,
    seconds) because ``messages.Error`` has no field for it."""

    def post(self, *args, **kwargs):
        for attempt in range(NONCE_RETRIES + 1):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce" or attempt == NONCE_RETRIES:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _check_response(cls, response, content_type=None):
        try:
            return super()._check_response(response, content_type=content_type)
        except messages.Error as error:
            error.retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """ACME tls-alpn-01 challenge response (RFC 8737): an empty object."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """ACME tls-alpn-01 challenge (RFC 8737)."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **unused) -> str:
        """The key authorization (its SHA-256 goes into the challenge certificate)."""
        return self.key_authorization(account_key)


class NewOrderReplacing(messages.NewOrder):
    """A newOrder with RFC 9773's ``replaces`` (the ARI certID of the certificate it renews): the acme
    library's NewOrder has no such field."""

    replaces: str | None = jose.field("replaces", omitempty=True)


def ari_cert_id(chain_pem: bytes) -> str:
    """RFC 9773 certID of the leaf of ``chain_pem``: base64url(AKI keyIdentifier) "." base64url(DER serial)."""
    import base64

    from cryptography import x509

    cert = x509.load_pem_x509_certificate(chain_pem)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big", signed=True)

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).decode("ascii").rstrip("=")

    return f"{b64(aki)}.{b64(serial)}"


class AcmeFailure(Exception):
    """An order that failed: ``code`` (the ACME error type's last part, or a local code), ``detail`` one line."""

    def __init__(self, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.retry_after = code, detail, retry_after


@dataclass(frozen=True)
class Issued:
    """What an order returns: the full chain (leaf first) and its new private key (PEM)."""

    chain_pem: bytes
    key_pem: bytes
    order_url: str


def new_certificate_key(key_type: str):
    """A private key of an [acme] key_type."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))


def _failure(e: Exception) -> AcmeFailure:
    if isinstance(e, AcmeFailure):
        return e
    if isinstance(e, messages.Error):
        code = (e.typ or "error").rsplit(":", 1)[-1]
        return AcmeFailure(code, e.detail or str(e), getattr(e, "retry_after", None))
    if isinstance(e, errors.ValidationError):
        details = []
        for authzr in e.failed_authzrs:
            for ch in authzr.body.challenges:
                if ch.error is not None:
                    details.append(f"{authzr.body.identifier.value}: {ch.error.detail or ch.error.typ}")
        return AcmeFailure("validation_failed", "; ".join(details) or str(e))
    if isinstance(e, errors.TimeoutError):
        return AcmeFailure("timeout", "the order did not complete in time")
    return AcmeFailure("connection_failed" if "Connection" in type(e).__name__ else "error",
                       f"{type(e).__name__}: {e}")


class AcmeClient:
    """One ACME account at one directory; every method blocks."""

    def __init__(self, cfg: AcmeConfig, account_key: ec.EllipticCurvePrivateKey, account_uri: str | None = None,
                 *, eab_hmac_key: str | None = None, poll_interval: float = 0.25) -> None:
        self.cfg = cfg
        self.jwk = jose.JWKEC(key=account_key)
        self.account_uri = account_uri
        self.eab_hmac_key = eab_hmac_key
        self.poll_interval = poll_interval
        self._client: client.ClientV2 | None = None

    def _connect(self) -> client.ClientV2:
        if self._client is None:
            net = Network(self.jwk, alg=jose.ES256, verify_ssl=self.cfg.ca_bundle or True,
                                       user_agent=USER_AGENT, timeout=30)
            directory = client.ClientV2.get_directory(self.cfg.directory, net)
            self._client = client.ClientV2(directory, net)
        return self._client

    def directory_has(self, field: str) -> bool:
        """Whether the directory lists ``field`` (e.g. renewalInfo)."""
        try:
            return bool(getattr(self._connect().directory, field, None) or self._connect().directory[field])
        except (KeyError, AttributeError):
            return False

    def register(self) -> str:
        """Create (or find) the account; returns its URI."""
        acme = self._connect()
        if self.account_uri:
            acme.net.account = messages.RegistrationResource(uri=self.account_uri, body=messages.Registration())
            return self.account_uri
        eab = None
        if self.cfg.eab_kid:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self.jwk.public_key(), kid=self.cfg.eab_kid, hmac_key=self.eab_hmac_key,
                directory=acme.directory)
        reg = messages.NewRegistration.from_data(email=self.cfg.email, terms_of_service_agreed=self.cfg.agree_tos,
                                                 external_account_binding=eab)
        try:
            regr = acme.new_account(reg)
        except errors.ConflictError as e:  # the key already has an account: use it
            regr = messages.RegistrationResource(uri=e.location, body=messages.Registration())
            acme.net.account = regr
        except Exception as e:
            raise _failure(e) from None
        self.account_uri = regr.uri
        return regr.uri

    def order(self, names: tuple[str, ...], board: ChallengeBoard, *, log: Callable[..., None] = lambda *a, **k: None,
              timeout: float = ORDER_TIMEOUT, replaces: str | None = None) -> Issued:
        """Order a certificate for ``names``, answer one challenge per name through ``board``, finalize.

        ``replaces``: the ARI certID of the certificate this one renews (sent only when given)."""
        from txgate.lifecycle.csr import build_csr

        try:
            self.register()
            acme = self._connect()
            key = new_certificate_key(self.cfg.key_type)
            csr = build_csr(key, dns=names)
            orderr = self._new_order(acme, csr.public_bytes(serialization.Encoding.PEM), names, replaces)
            log("acme: order {url} for {names}{replacing}", url=orderr.uri, names=" ".join(names),
                replacing=f" (replaces {replaces})" if replaces else "")
            deadline = datetime.now(timezone.utc) + timedelta(seconds=timeout)
            cleanups: list[Callable[[], None]] = []
            try:
                for authzr in orderr.authorizations:
                    if authzr.body.status == messages.STATUS_VALID:
                        continue
                    self._answer(acme, authzr, board, cleanups)
                orderr = self._poll_authorizations(acme, orderr, deadline)
            finally:
                for undo in cleanups:
                    undo()
            orderr = acme.finalize_order(orderr, deadline.replace(tzinfo=None))
        except Exception as e:
            raise _failure(e) from None
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return Issued(orderr.fullchain_pem.encode(), key_pem, orderr.uri)

    @staticmethod
    def _new_order(acme: client.ClientV2, csr_pem: bytes, names: tuple[str, ...], replaces: str | None):
        """ClientV2.new_order, with ``replaces`` in the newOrder JSON when given (a CA that answers
        alreadyReplaced gets the plain order)."""
        if replaces:
            order = NewOrderReplacing(identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n)
                                                   for n in names], replaces=replaces)
            try:
                response = acme._post(acme.directory["newOrder"], order)
            except messages.Error as e:
                if e.code != "alreadyReplaced":
                    raise
            else:
                body = messages.Order.from_json(response.json())
                authzrs = [acme._authzr_from_response(acme._post_as_get(url), uri=url) for url in body.authorizations]
                return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                              authorizations=authzrs, csr_pem=csr_pem)
        return acme.new_order(csr_pem)

    def _answer(self, acme: client.ClientV2, authzr, board: ChallengeBoard, cleanups: list) -> None:
        name = authzr.body.identifier.value
        offered = {c.chall.typ: c for c in authzr.body.challenges}
        for typ in self.cfg.challenges:
            challb = offered.get(typ)
            if challb is None:
                continue
            keyauth = challb.chall.key_authorization(self.jwk)
            if typ == "http-01":
                token = challb.chall.encode("token")
                board.add_http(token, keyauth)
                cleanups.append(lambda t=token: board.remove_http(t))
            else:
                board.add_alpn(name, keyauth)
                cleanups.append(lambda n=name: board.remove_alpn(n))
            acme.answer_challenge(challb, challb.chall.response(self.jwk))
            return
        raise AcmeFailure("no_challenge", f"{name}: the CA offers {', '.join(sorted(offered))}, "
                                          f"[acme] challenges allows {', '.join(self.cfg.challenges)}")

    def _poll_authorizations(self, acme: client.ClientV2, orderr, deadline: datetime):
        """Like ClientV2.poll_authorizations, with a short interval (the library sleeps 1 s per round)."""
        pending = list(orderr.authorizations)
        done = []
        while pending:
            if datetime.now(timezone.utc) > deadline:
                raise errors.TimeoutError()
            still = []
            wait = self.poll_interval
            for authzr in pending:
                authzr, response = acme.poll(authzr)
                if authzr.body.status in (messages.STATUS_VALID, messages.STATUS_INVALID):
                    done.append(authzr)
                else:
                    still.append(authzr)
                    asked = parse_retry_after(response.headers.get("Retry-After"))
                    if asked is not None:
                        wait = max(wait, min(asked, MAX_POLL_WAIT))
            pending = still
            if pending:
                left = (deadline - datetime.now(timezone.utc)).total_seconds()
                time.sleep(max(0.0, min(wait, left)))
        failed = [a for a in done if a.body.status == messages.STATUS_INVALID]
        if failed:
            raise errors.ValidationError(failed)
        return orderr.update(authorizations=done)

    def renewal_window(self, cert_pem: bytes) -> datetime | None:
        """When the CA's renewalInfo (RFC 9773) suggests renewing, or None without ARI."""
        try:
            at, _next = self._connect().renewal_time(cert_pem)
        except Exception:
            return None
        if at is None:
            return None
        return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def account_key_pem(key) -> bytes:
    """PKCS#8 PEM of an account key (only ever written encrypted)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
