# -*- test-case-name: tests.test_metrics -*-
"""Prometheus metrics of the gateway: its own registry, hot-path counters, facade-fed gauges.

Contract (for ``txgate.runtime``)::

    metrics = Metrics()                                  # one per process; survives reloads
    ListenerDispatcher(..., metrics=metrics)             # -> request_done(handler, status, listener, seconds,
                                                         #    bytes_in, bytes_out) per request
    ListenerFactory(..., metrics=metrics)                # -> handshake(listener, version, result, seconds) per
                                                         #    handshake; connection_opened/closed(listener)
    AdminService(facade, admin_config, reactor, metrics=metrics)   # serves GET /metrics and calls
                                                         #    metrics.attach(facade) for the scrape-time gauges
    metrics.exposition() -> (bytes, content_type)        # the Prometheus text format

Series::

    txgate_requests_total{api,status}                    # api "-" when no API matched
    txgate_tls_handshakes_total{listener,version,result} # result: ok | unknown_ca | expired | not_yet_valid |
                                                         #   revoked | no_certificate | not_allowed | pin_mismatch |
                                                         #   invalid_certificate | protocol_error | timeout |
                                                         #   aborted | failed; upstream TLS as listener "upstream:API"
    txgate_certificate_expiry_timestamp_seconds{name,role,fingerprint}   # facade.held_certificates() at scrape
    txgate_upstream_connections{api}                     # facade.upstream_connections() at scrape
    txgate_acme_orders_total{result}                     # ACME orders: ok or an error code (txgate.acme)
    txgate_ocsp_fetch_failures_total{reason}             # OCSP: staple refreshes and client checks that failed
    txgate_ocsp_staple_age_seconds{certificate}          # OCSP: age (since thisUpdate) of each current staple
    txgate_ocsp_must_staple_missing{certificate}         # OCSP: 1 for a Must-Staple certificate with no staple
    (durations, bytes, open connections, build info: txgate.metrics_traffic; process_* and python_info:
    prometheus_client's process and platform collectors)

The two counters sit on the hot path (one call per request, one per handshake). They are plain
ints in a dict keyed by the label tuple: no lock, no label formatting, no ``labels()`` lookup per
call; the collector turns them into Prometheus samples at scrape time. Every call happens in the
reactor thread, and so does the scrape (the admin API runs in the same reactor).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger

from txgate.metrics_traffic import Traffic, add_platform_collectors, build_info, traffic_descriptions

log = Logger()

NO_API = "-"
RECENT_FAILURES = 20  # failed handshakes kept for the status page
UNKNOWN_VERSION = "unknown"

# mTLS refusal codes (txgate.tls.clientverify, txgate.tls.clientauth) -> handshake result label.
CLIENT_REFUSAL_RESULTS = {
    "client_certificate_untrusted": "unknown_ca",
    "client_certificate_expired": "expired",
    "client_certificate_not_yet_valid": "not_yet_valid",
    "client_certificate_revoked": "revoked",
    "client_certificate_required": "no_certificate",
    "client_certificate_not_allowed": "not_allowed",
    "client_certificate_chain_too_long": "invalid_certificate",
    "client_certificate_wrong_purpose": "invalid_certificate",
    "client_certificate_invalid": "invalid_certificate",
    "client_crl_expired": "invalid_certificate",
    "client_crl_not_yet_valid": "invalid_certificate",
    "client_crl_missing": "invalid_certificate",
}


def result_for_refusal(code: str) -> str:
    """The handshake result label of an mTLS refusal or allowlist decision code."""
    return CLIENT_REFUSAL_RESULTS.get(code, "failed")


class Metrics:
    """The gateway's metrics registry (one per process; see the module docstring for the wiring)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, platform: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.traffic = Traffic()  # durations, bytes, open connections (txgate.metrics_traffic)
        self.requests: dict[tuple[str, int], int] = {}
        self.handshakes: dict[tuple[str, str, str], int] = {}
        self.acme_orders: dict[str, int] = {}  # result (ok or an error code) -> orders
        self._facade: Any = None
        # OCSP (txgate.ocsp): failure counts by reason; ocsp_source() -> [(certificate, age | None, missing)].
        self.ocsp_failures: dict[tuple[str], int] = {}
        self.ocsp_source: Any = None
        # (when, listener, client, result) of the last failed downstream handshakes (the status page).
        self.failures: deque = deque(maxlen=RECENT_FAILURES)
        self.registry.register(_Collector(self))
        if platform:
            add_platform_collectors(self.registry)

    def attach(self, facade: Any) -> None:
        """Feed the scrape-time gauges from this GatewayFacade (``held_certificates``, ``upstream_connections``)."""
        self._facade = facade

    # -- hot path ----------------------------------------------------------------------------
    def request_done(self, handler: Any, status: int, listener: str | None = None, seconds: float = 0.0,
                     bytes_in: int = 0, bytes_out: int = 0) -> None:
        """One finished request (called by the dispatcher); upstream pin mismatches also count as handshakes."""
        api = getattr(handler, "api", None) or NO_API
        key = (api, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if listener is not None:
            upstream = getattr(handler, "upstream_seconds", None)
            self.traffic.request(api, listener, status, seconds, bytes_in, bytes_out,
                                 handler.upstream_label if upstream is not None else None, upstream)
        if status >= 502:
            # The failed upstream handshake surfaces here, as the error of its one waiting request.
            err = getattr(handler, "last_error", None)
            if err is not None and err.code == "upstream_pin_mismatch":
                self.handshake("upstream:" + api, UNKNOWN_VERSION, "pin_mismatch")

    def handshake(self, listener: str, version: str | None, result: str, seconds: float | None = None) -> None:
        """One downstream (or upstream) TLS handshake outcome (``seconds``: a completed one's duration)."""
        key = (listener, version or UNKNOWN_VERSION, result)
        handshakes = self.handshakes
        handshakes[key] = handshakes.get(key, 0) + 1
        if seconds is not None:
            self.traffic.handshake_seconds(listener, seconds)

    def handshake_failure(self, when: float, listener: str, client: str, result: str) -> None:
        """Remember one failed downstream handshake (a bounded ring, newest last)."""
        self.failures.append((when, listener, client, result))

    def recent_handshake_failures(self) -> list[tuple[float, str, str, str]]:
        """The remembered failed handshakes, newest first."""
        return sorted(self.failures, reverse=True)

    def connection_opened(self, listener: str) -> None:
        """A downstream connection was accepted on ``listener``."""
        self.traffic.opened(listener)

    def connection_closed(self, listener: str) -> None:
        """A downstream connection on ``listener`` is gone."""
        self.traffic.closed(listener)

    def acme_order(self, result: str) -> None:
        """One finished ACME order: ``ok`` or its error code (txgate.acme)."""
        self.acme_orders[result] = self.acme_orders.get(result, 0) + 1

    def ocsp_fetch_failed(self, reason: str) -> None:
        """One OCSP fetch (staple refresh or client check) that gave no usable answer."""
        key = (reason,)
        self.ocsp_failures[key] = self.ocsp_failures.get(key, 0) + 1

    # -- scrape ------------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of the registry, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def collect(self) -> Iterable[Any]:
        """The metric families (what the registry's collector yields)."""
        requests = CounterMetricFamily("txgate_requests", "Requests answered, by API and HTTP status.",
                                       labels=("api", "status"))
        for (api, status), n in sorted(self.requests.items()):
            requests.add_metric((api, str(status)), n)
        yield requests
        handshakes = CounterMetricFamily(
            "txgate_tls_handshakes", "TLS handshakes, by listener, protocol version and result (ok or a reason).",
            labels=("listener", "version", "result"),
        )
        for labels, n in sorted(self.handshakes.items()):
            handshakes.add_metric(labels, n)
        yield handshakes
        if self.acme_orders:  # only on gateways with ACME certificates
            orders = CounterMetricFamily("txgate_acme_orders", "ACME orders, by result (ok or an error code).",
                                         labels=("result",))
            for result, n in sorted(self.acme_orders.items()):
                orders.add_metric((result,), n)
            yield orders
        expiry = GaugeMetricFamily(
            "txgate_certificate_expiry_timestamp_seconds",
            "notAfter of every certificate the gateway holds, in every role (Unix time).",
            labels=("name", "role", "fingerprint"),
        )
        upstream = GaugeMetricFamily("txgate_upstream_connections", "Open upstream connections per API.",
                                     labels=("api",))
        facade = self._facade
        if facade is not None:
            try:
                seen = set()
                for held in facade.held_certificates():
                    labels = (held.name, held.role, held.fingerprint)
                    if labels not in seen:
                        seen.add(labels)
                        expiry.add_metric(labels, held.not_after.timestamp())
            except Exception:
                log.failure("metrics: listing the held certificates failed")
            try:
                for api, n in sorted(facade.upstream_connections().items()):
                    upstream.add_metric((api,), n)
            except Exception:
                log.failure("metrics: counting upstream connections failed")
        yield expiry
        yield upstream
        yield from self._collect_ocsp()
        yield from self.traffic.families()
        yield build_info()

    def _collect_ocsp(self) -> Iterable[Any]:
        failures = CounterMetricFamily("txgate_ocsp_fetch_failures", "OCSP fetches without a usable answer, by reason.",
                                       labels=("reason",))
        for labels, n in sorted(self.ocsp_failures.items()):
            failures.add_metric(labels, n)
        age = GaugeMetricFamily("txgate_ocsp_staple_age_seconds", "Seconds since thisUpdate of each current staple.",
                                labels=("certificate",))
        missing = GaugeMetricFamily("txgate_ocsp_must_staple_missing",
                                    "1 for a Must-Staple certificate with no valid response to staple.",
                                    labels=("certificate",))
        if self.ocsp_source is not None:
            try:
                for name, seconds, lacking in self.ocsp_source():
                    if seconds is not None:
                        age.add_metric((name,), seconds)
                    missing.add_metric((name,), 1 if lacking else 0)
            except Exception:
                log.failure("metrics: reading the OCSP staples failed")
        yield failures
        yield age
        yield missing


class _Collector:
    """Adapter: prometheus_client calls ``collect()`` on registered collectors at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        return self._metrics.collect()

    def describe(self) -> list:
        # Names are static: lets the registry check for duplicates without calling the facade.
        return [
            CounterMetricFamily("txgate_requests", "", labels=("api", "status")),
            CounterMetricFamily("txgate_tls_handshakes", "", labels=("listener", "version", "result")),
            GaugeMetricFamily("txgate_certificate_expiry_timestamp_seconds", "",
                              labels=("name", "role", "fingerprint")),
            GaugeMetricFamily("txgate_upstream_connections", "", labels=("api",)),
            CounterMetricFamily("txgate_ocsp_fetch_failures", "", labels=("reason",)),
            GaugeMetricFamily("txgate_ocsp_staple_age_seconds", "", labels=("certificate",)),
            GaugeMetricFamily("txgate_ocsp_must_staple_missing", "", labels=("certificate",)),
            *traffic_descriptions(),
        ]
