# -*- test-case-name: tests.test_metrics_traffic -*-
"""Traffic metrics: request, upstream and TLS handshake duration histograms, bytes, open connections.

The hot path (one ``request()`` per request, its upstream response time included, one
``handshake_seconds()`` per handshake, two connection calls per connection) touches plain lists in
dicts: one dict lookup, one ``bisect`` and a few integer adds, no lock, no ``labels()`` call, no
string formatting. Buckets are kept non-cumulative (as prometheus_client's multiprocess files keep
them); ``families()`` turns the tables into Prometheus families at scrape time, and a worker's flush
(``txgate.metrics_multiprocess``) adds the deltas of the same rows to its multiprocess files.

Series::

    txgate_request_duration_seconds{api,listener,status_class}   # histogram; status_class 1xx..5xx, "none"
    txgate_upstream_response_seconds{api,target}                # histogram: request sent -> response head
    txgate_tls_handshake_duration_seconds{listener}             # histogram: accepted -> handshake done
    txgate_received_bytes_total{api,listener}                   # request bytes read from clients
    txgate_sent_bytes_total{api,listener}                       # response bytes written to clients
    txgate_open_connections{listener}                           # downstream connections open now
    txgate_build_info{version,h2_engine,pins_backend}           # always 1

Label values are bounded by the configuration (APIs, listeners, upstream targets) and by the
six status classes, never by client input.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any, Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HANDSHAKE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")

# name, help, label names, bucket bounds, the Traffic table holding the rows
HISTOGRAMS = (
    ("txgate_request_duration_seconds", "Request duration (head received to response finished), by API, "
     "listener and status class.", ("api", "listener", "status_class"), REQUEST_BUCKETS, "requests"),
    ("txgate_upstream_response_seconds", "Upstream response time (request sent to response head), by API "
     "and target.", ("api", "target"), REQUEST_BUCKETS, "upstream"),
    ("txgate_tls_handshake_duration_seconds", "Downstream TLS handshake duration (connection accepted to "
     "handshake done), by listener.", ("listener",), HANDSHAKE_BUCKETS, "handshakes"),
)
BYTES = (
    ("txgate_received_bytes", "Request bytes received from clients, by API and listener.", 0),
    ("txgate_sent_bytes", "Response bytes sent to clients, by API and listener.", 1),
)
OPEN_CONNECTIONS = ("txgate_open_connections", "Downstream connections open now, by listener.", ("listener",))
BUILD_INFO = ("txgate_build_info", "txgate's version and the engines it runs on (always 1).",
              ("version", "h2_engine", "pins_backend"))


def status_class(status: int) -> str:
    """The status class label of an HTTP status ("2xx"...; "none" when no response was started)."""
    i = status // 100
    return STATUS_CLASSES[i] if 0 <= i < 6 else "none"


class Traffic:
    """The traffic tables of one process (rows: non-cumulative bucket counts, then the sum)."""

    def __init__(self) -> None:
        # (api, listener, status class) -> [bucket counts..., +Inf count, sum, bytes in, bytes out]
        self.requests: dict[tuple[str, str, str], list] = {}
        self.upstream: dict[tuple[str, str], list] = {}  # (api, target) -> [buckets..., +Inf, sum]
        self.handshakes: dict[tuple[str], list] = {}  # (listener,) -> [buckets..., +Inf, sum]
        self.connections: dict[str, int] = {}  # listener -> open now

    # -- hot path ----------------------------------------------------------------------------
    def request(self, api: str, listener: str, status: int, seconds: float, bytes_in: int, bytes_out: int,
                target: str | None = None, upstream_seconds: float | None = None) -> None:
        """One finished request; with ``upstream_seconds``, also its upstream response time from ``target``."""
        i = status // 100
        key = (api, listener, STATUS_CLASSES[i] if 0 <= i < 6 else "none")
        row = self.requests.get(key)
        if row is None:
            row = self.requests[key] = [0] * (len(REQUEST_BUCKETS) + 1) + [0.0, 0, 0]
        row[bisect_left(REQUEST_BUCKETS, seconds)] += 1
        row[-3] += seconds
        row[-2] += bytes_in
        row[-1] += bytes_out
        if upstream_seconds is not None:
            # (the upstream row here, not through _observe: one call per request)
            row = self.upstream.get((api, target))
            if row is None:
                row = self.upstream[(api, target)] = [0] * (len(REQUEST_BUCKETS) + 1) + [0.0]
            row[bisect_left(REQUEST_BUCKETS, upstream_seconds)] += 1
            row[-1] += upstream_seconds

    def handshake_seconds(self, listener: str, seconds: float) -> None:
        """One completed downstream handshake."""
        _observe(self.handshakes, (listener,), HANDSHAKE_BUCKETS, seconds)

    def opened(self, listener: str) -> None:
        """A downstream connection was accepted."""
        self.connections[listener] = self.connections.get(listener, 0) + 1

    def closed(self, listener: str) -> None:
        """A downstream connection is gone."""
        self.connections[listener] = self.connections.get(listener, 0) - 1

    # -- scrape ------------------------------------------------------------------------------
    def bytes_rows(self) -> dict[tuple[str, str], list[int]]:
        """(api, listener) -> [bytes in, bytes out], summed over status classes."""
        out: dict[tuple[str, str], list[int]] = {}
        for (api, listener, _), row in self.requests.items():
            acc = out.setdefault((api, listener), [0, 0])
            acc[0] += row[-2]
            acc[1] += row[-1]
        return out

    def families(self) -> Iterable[Any]:
        """The traffic families (build info excluded) for a scrape."""
        for name, doc, labels, bounds, attr in HISTOGRAMS:
            fam = HistogramMetricFamily(name, doc, labels=labels)
            for key, row in sorted(getattr(self, attr).items()):
                fam.add_metric(key, cumulative_buckets(bounds, row), row[len(bounds) + 1])
            yield fam
        rows = sorted(self.bytes_rows().items())
        for name, doc, col in BYTES:
            fam = CounterMetricFamily(name, doc, labels=("api", "listener"))
            for key, both in rows:
                fam.add_metric(key, both[col])
            yield fam
        name, doc, labels = OPEN_CONNECTIONS
        gauge = GaugeMetricFamily(name, doc, labels=labels)
        for listener, n in sorted(self.connections.items()):
            gauge.add_metric((listener,), n)
        yield gauge


def traffic_descriptions() -> list:
    """Empty families naming every traffic series (a registry's duplicate check; no scrape)."""
    out: list = [HistogramMetricFamily(name, "", labels=labels) for name, _, labels, _, _ in HISTOGRAMS]
    out += [CounterMetricFamily(name, "", labels=("api", "listener")) for name, _, _ in BYTES]
    out.append(GaugeMetricFamily(OPEN_CONNECTIONS[0], "", labels=OPEN_CONNECTIONS[2]))
    out.append(GaugeMetricFamily(BUILD_INFO[0], "", labels=BUILD_INFO[2]))
    return out


def _observe(table: dict, key: tuple, bounds: tuple, seconds: float) -> None:
    row = table.get(key)
    if row is None:
        row = table[key] = [0] * (len(bounds) + 1) + [0.0]
    row[bisect_left(bounds, seconds)] += 1
    row[len(bounds) + 1] += seconds


def cumulative_buckets(bounds: tuple, row: list) -> list[tuple[str, float]]:
    """[(le, cumulative count)] of a non-cumulative row, ending with +Inf."""
    out, acc = [], 0
    for i, le in enumerate(bounds + (float("inf"),)):
        acc += row[i]
        out.append((floatToGoString(le), acc))
    return out


def build_info() -> GaugeMetricFamily:
    """``txgate_build_info``: version, HTTP/2 engine and pin backend of this process."""
    from txgate import __version__
    from txgate.http.h2engine import select_engine
    from txgate.pins import BACKEND

    name, doc, labels = BUILD_INFO
    fam = GaugeMetricFamily(name, doc, labels=labels)
    fam.add_metric((__version__, select_engine("auto").name, BACKEND), 1)
    return fam


def add_platform_collectors(registry) -> None:
    """prometheus_client's process (CPU, memory, fds) and platform (Python version) collectors."""
    from prometheus_client import PlatformCollector, ProcessCollector

    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


class TrafficFlusher:
    """A worker's traffic rows as multiprocess files: deltas since the last flush (see txgate.metrics_multiprocess)."""

    def __init__(self, traffic: Traffic) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.traffic = traffic
        self.histograms = [(Histogram(name, doc, labels, buckets=bounds, registry=None), bounds, attr)
                           for name, doc, labels, bounds, attr in HISTOGRAMS]
        self.bytes = [(Counter(name, doc, ("api", "listener"), registry=None), col) for name, doc, col in BYTES]
        name, doc, labels = OPEN_CONNECTIONS
        self.connections = Gauge(name, doc, labels, registry=None, multiprocess_mode="livesum")
        self.sent: dict[tuple, list] = {}

    def flush(self) -> None:
        """Add what changed since the last flush; set the open-connections gauge."""
        sent = self.sent
        for hist, bounds, attr in self.histograms:
            n = len(bounds) + 1
            for key, row in list(getattr(self.traffic, attr).items()):
                prev = sent.get((attr, key))
                if prev is not None and prev == row[:n + 1]:
                    continue
                child = hist.labels(*key)
                for i in range(n):
                    d = row[i] - (prev[i] if prev else 0)
                    if d:
                        child._buckets[i].inc(d)  # prometheus_client keeps one value per bucket
                child._sum.inc(row[n] - (prev[n] if prev else 0.0))
                sent[(attr, key)] = row[:n + 1]
        for key, both in self.traffic.bytes_rows().items():
            prev = sent.get(("bytes", key), [0, 0])
            for counter, col in self.bytes:
                if both[col] != prev[col]:
                    counter.labels(*key).inc(both[col] - prev[col])
            sent[("bytes", key)] = both
        for listener, n in self.traffic.connections.items():
            self.connections.labels(listener).set(n)
