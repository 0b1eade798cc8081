"""AcmeService: on the reactor, keeps every ACME certificate of the running config issued and renewed.

Per certificate (its names), a timer: look at the store entry ``acme/NAME`` (in a thread), decide
(``schedule.decide``), order when due (``client.AcmeClient`` in a thread, under a fleet lock),
put the result into the store (which reloads the gateway), and look again at the renewal time or
after a backoff. Never blocks the reactor.
"""
# -*- test-case-name: tests.test_acme_unit,tests.test_acme_e2e -*-
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from txgate.acme import schedule
from txgate.acme.challenges import ChallengeBoard
from txgate.acme.status import fmt_time, write_status

log = Logger(namespace="txgate.acme")

LOCK_TTL = 300.0
LOCKED_RETRY = 5.0


class FleetBusy(Exception):
    """Another gateway holds the order lock of this certificate."""


@dataclass
class CertState:
    """What the service knows about one ACME certificate (``txgate acme status`` / ``GET /acme``)."""

    names: tuple[str, ...]
    slot: str
    failures: int = 0
    last_error: str | None = None
    next_check: datetime | None = None
    renew_at: datetime | None = None
    reason: str | None = None
    not_after: datetime | None = None
    issuer: str | None = None
    orders: int = 0
    busy: bool = False
    call: Any = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """JSON-ready status."""
        t = fmt_time
        return {"names": list(self.names), "slot": self.slot, "issuer": self.issuer, "not_after": t(self.not_after),
                "next_renewal": t(self.renew_at), "renewal_reason": self.reason, "next_check": t(self.next_check),
                "failures": self.failures, "last_error": self.last_error, "orders": self.orders}


@contextlib.contextmanager
def fleet_lock(store, state_dir: str, slot: str, ttl: float = LOCK_TTL):
    """One order per certificate across a fleet: a Redis key with a TTL (Redis store) or a file lock
    (directory store). Raises FleetBusy when someone else holds it."""
    r = getattr(store, "_r", None)
    if r is not None:
        key, token = store._k("acme-lock", slot), uuid.uuid4().hex
        if not r.set(key, token, nx=True, px=int(ttl * 1000)):
            raise FleetBusy(slot)
        stop = threading.Event()
        keeper = threading.Thread(target=_keep_lock, args=(r, key, token, ttl, stop), daemon=True,
                                  name=f"acme-lock {slot}")
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()
            if r.get(key) == token:
                r.delete(key)
        return
    from txgate.fileio import make_private_dir

    directory = os.path.join(state_dir, "acme")
    make_private_dir(directory)
    fd = os.open(os.path.join(directory, slot.replace("/", "%2F") + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetBusy(slot) from None
        yield
    finally:
        os.close(fd)


# Refresh the TTL only while the key still holds our token (a lock that expired and was taken stays taken).
_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"


def _keep_lock(r, key: str, token, ttl: float, stop: threading.Event) -> None:
    """The holder's refresher (a thread): push the lock's expiry out every third of its TTL until ``stop``."""
    refresh = r.register_script(_REFRESH)
    while not stop.wait(ttl / 3):
        try:
            if not refresh(keys=[key], args=[token, int(ttl * 1000)]):
                log.warn("acme: the order lock {key} was lost (expired or taken) during the order", key=key)
                return
        except Exception as e:  # Redis away for a moment: the TTL still covers two more tries
            log.warn("acme: cannot refresh the order lock {key}: {e}", key=key, e=e)


class AcmeService(Service):
    """Issues and renews the ACME certificates of ``config_source()`` into ``store``."""

    name = "acme"

    def __init__(self, config_source: Callable[[], Any], store, board: ChallengeBoard, reactor, *, secret: bytes,
                 run_blocking: Callable[..., defer.Deferred] | None = None, now: Callable[[], datetime] | None = None,
                 backoff_base: float = schedule.BACKOFF_BASE, max_check: float = schedule.MAX_CHECK,
                 metrics=None) -> None:
        self.config_source = config_source
        self.store = store
        self.board = board
        self.reactor = reactor
        self.secret = secret
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.backoff_base = backoff_base
        self.max_check = max_check
        self.metrics = metrics
        self.states: dict[tuple[str, ...], CertState] = {}
        self._client = None
        self._client_key = None
        if run_blocking is None:
            from twisted.internet.threads import deferToThreadPool

            def run_blocking(fn, *args):
                return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)
        self.run_blocking = run_blocking

    # -- lifetime -------------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self.sync()

    def stopService(self):
        super().stopService()
        for st in self.states.values():
            if st.call is not None and st.call.active():
                st.call.cancel()

    def sync(self) -> None:
        """Follow the running config: start watching new certificates, forget removed ones."""
        cfg = self.config_source()
        wanted = cfg.acme_certificates()
        for names in list(self.states):
            if names not in wanted:
                st = self.states.pop(names)
                if st.call is not None and st.call.active():
                    st.call.cancel()
        for names in wanted:
            if names not in self.states:
                st = CertState(names, f"acme/{names[0]}")
                self.states[names] = st
                self._later(st, 0)
        self._persist()

    def status(self) -> list[dict]:
        """Every certificate's state (for the CLI and the admin API)."""
        return [st.as_dict() for st in self.states.values()]

    def _persist(self) -> None:
        """Write the status file the CLI reads (``txgate.acme.status``); never fails the service."""
        try:
            write_status(self.config_source().gateway.state_dir, self.status(), self.now())
        except Exception as e:  # a full disk must not stop renewals
            log.warn("acme: cannot write the status file: {e}", e=e)

    # -- one certificate --------------------------------------------------------------------------
    def _later(self, st: CertState, seconds: float) -> None:
        if st.call is not None and st.call.active():
            st.call.cancel()
        st.next_check = self.now() + _td(seconds)
        st.call = self.reactor.callLater(seconds, self.check, st)
        self._persist()

    def check(self, st: CertState) -> defer.Deferred:
        """Look at the stored certificate; order when due; schedule the next look."""
        if st.busy or self.states.get(st.names) is not st:
            return defer.succeed(None)
        st.busy = True
        d = self.run_blocking(self._look_and_order, st)
        d.addCallbacks(lambda r: self._done(st, r), lambda f: self._failed(st, f))
        return d

    def _acme_client(self):
        """The AcmeClient of the current [acme] settings (built in the thread; the account is kept)."""
        from txgate.acme.account import load_or_create_account, save_account
        from txgate.acme.client import AcmeClient

        cfg = self.config_source()
        acme_cfg = cfg.acme
        if self._client is None or self._client_key != acme_cfg:
            key, uri = load_or_create_account(cfg.gateway.state_dir, acme_cfg.directory, self.secret)
            hmac = None
            if acme_cfg.eab_hmac_key_file:
                with open(acme_cfg.eab_hmac_key_file, encoding="ascii") as f:
                    hmac = f.read().strip()
            client = AcmeClient(acme_cfg, key, uri, eab_hmac_key=hmac)
            if uri is None:
                uri = client.register()
                save_account(cfg.gateway.state_dir, acme_cfg.directory, self.secret, key, uri)
                log.info("acme: account {uri} at {directory}", uri=uri, directory=acme_cfg.directory)
            self._client, self._client_key = client, acme_cfg
        return self._client

    def _current(self, slot: str):
        from txgate.store import StoreError

        try:
            return self.store.get(slot)
        except StoreError as e:
            if e.code == "not_found":
                return None
            raise

    def _look_and_order(self, st: CertState):
        """In a thread: (decision, stored certificate after it, ordered?)."""
        cfg = self.config_source()
        ratio = cfg.acme.renew_ratio
        got = self._current(st.slot)
        decision = self._decide(st, got, ratio)
        if not decision.order:
            return decision, got, False
        with fleet_lock(self.store, cfg.gateway.state_dir, st.slot):
            got = self._current(st.slot)  # another gateway may have renewed meanwhile
            decision2 = self._decide(st, got, ratio)
            if not decision2.order:
                return decision2, got, False
            log.info("acme: ordering a certificate for {names} ({reason})", names=" ".join(st.names),
                     reason=decision.reason)
            client = self._acme_client()
            replaces = None
            if got is not None and decision2.reason in ("ari", "ratio", "expired") and _has_ari(client):
                from txgate.acme.client import ari_cert_id

                replaces = ari_cert_id(got.chain_pem)
            issued = client.order(st.names, self.board, log=log.info, **({"replaces": replaces} if replaces else {}))
            self.store.put(st.slot, issued.chain_pem, issued.key_pem)
        got = self._current(st.slot)
        return self._decide(st, got, ratio), got, True

    def _decide(self, st: CertState, got, ratio: float) -> schedule.Decision:
        info = got.info if got is not None else None
        ari_at = None
        if info is not None:
            try:  # the CA's renewalInfo when its directory offers it; unreachable CA: the ratio decides
                client = self._acme_client()
                if _has_ari(client):
                    ari_at = client.renewal_window(got.chain_pem)
            except Exception as e:
                log.debug("acme: no renewalInfo for {names}: {e}", names=" ".join(st.names), e=e)
        return schedule.decide(self.now(), st.names, info, ratio, ari_at)

    def _done(self, st: CertState, result) -> None:
        decision, got, ordered = result
        st.busy = False
        if got is not None:
            st.not_after, st.issuer = got.info.not_after, got.info.issuer
        st.renew_at, st.reason = decision.renew_at, decision.reason
        if ordered:
            st.orders += 1
            st.failures, st.last_error = 0, None
            self._count("ok")
            log.info("acme: certificate for {names} issued (expires {not_after}); next renewal {renew_at} ({reason})",
                     names=" ".join(st.names), not_after=_fmt(st.not_after), renew_at=_fmt(st.renew_at),
                     reason=st.reason)
        delay = schedule.next_check(self.now(), decision.renew_at, max_check=self.max_check)
        if decision.order:  # still due right after looking (e.g. a very short-lived certificate)
            delay = max(delay, 1.0)
        self._later(st, delay)

    def _failed(self, st: CertState, failure) -> None:
        from txgate.acme.client import AcmeFailure

        st.busy = False
        err = failure.value
        if isinstance(err, FleetBusy):
            log.info("acme: another gateway is ordering {names}; looking again soon", names=" ".join(st.names))
            self._later(st, LOCKED_RETRY)
            return
        st.failures += 1
        code = err.code if isinstance(err, AcmeFailure) else "error"
        detail = err.detail if isinstance(err, AcmeFailure) else f"{type(err).__name__}: {err}"
        st.last_error = f"{code}: {detail}"
        self._count(code)
        asked = getattr(err, "retry_after", None)
        delay = schedule.backoff(st.failures, asked, base=self.backoff_base)
        log.error("acme: order for {names} failed ({code}: {detail}); attempt {n}{asked}, retrying in {delay:.0f}s; "
                  "the current certificate keeps serving", names=" ".join(st.names), code=code, detail=detail,
                  n=st.failures, delay=delay, asked=f" (the CA's Retry-After: {asked:.0f}s)" if asked else "")
        self._later(st, delay)

    def _count(self, result: str) -> None:
        if self.metrics is not None and hasattr(self.metrics, "acme_order"):
            self.metrics.acme_order(result)


def _has_ari(client) -> bool:
    """Whether the CA's directory offers renewalInfo (RFC 9773)."""
    has = getattr(client, "directory_has", None)
    return bool(has is not None and has("renewalInfo"))


def _td(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _fmt(t: datetime | None) -> str:
    return fmt_time(t) or "-"
