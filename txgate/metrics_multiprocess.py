# -*- test-case-name: tests.test_workers_unit,tests.test_workers_e2e -*-
"""Metrics across worker processes, in prometheus_client's multiprocess mode.

Each worker counts on the hot path exactly as a single gateway does (``txgate.metrics.Metrics``:
plain ints), and every ``FLUSH`` seconds (and when it stops) adds what changed to prometheus_client
``Counter``s, ``Histogram``s (txgate.metrics_traffic) and ``livesum`` ``Gauge``s that live in ``PROMETHEUS_MULTIPROC_DIR``
(``state_dir/metrics``, one file per process and kind). The supervisor serves ``/metrics``: the
library's ``MultiProcessCollector`` sums the workers' files, the supervisor's own counts (its admin
API handshakes) are added to the same series, and it adds ``txgate_workers`` and
``txgate_worker_restarts_total``. Counter files of dead workers stay (their counts remain in the
totals); their live gauges are dropped with ``mark_process_dead``. The directory is emptied when
the supervisor starts.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.samples import Sample

from txgate.metrics import RECENT_FAILURES, Metrics
from txgate.metrics_traffic import TrafficFlusher

FLUSH = 0.5


class WorkerMetrics(Metrics):
    """A worker's metrics: the usual hot-path counts, flushed into the multiprocess files."""

    def __init__(self) -> None:
        super().__init__()
        from prometheus_client import Counter, Gauge

        self._requests = Counter("txgate_requests", "Requests answered, by API and HTTP status.",
                                 ("api", "status"), registry=None)
        self._handshakes = Counter("txgate_tls_handshakes", "TLS handshakes, by listener, protocol version and "
                                   "result (ok or a reason).", ("listener", "version", "result"), registry=None)
        self._upstream = Gauge("txgate_upstream_connections", "Open upstream connections per API.", ("api",),
                               registry=None, multiprocess_mode="livesum")
        # OCSP (txgate.ocsp): each worker staples for itself; the oldest live staple is what matters.
        self._ocsp_failures = Counter("txgate_ocsp_fetch_failures", "OCSP fetches without a usable answer, by "
                                      "reason.", ("reason",), registry=None)
        self._staple_age = Gauge("txgate_ocsp_staple_age_seconds", "Seconds since thisUpdate of each current "
                                 "staple.", ("certificate",), registry=None, multiprocess_mode="livemax")
        self._staple_missing = Gauge("txgate_ocsp_must_staple_missing", "1 for a Must-Staple certificate with no "
                                     "valid response to staple.", ("certificate",), registry=None,
                                     multiprocess_mode="livemax")
        self._sent: dict[tuple, int] = {}
        self._traffic = TrafficFlusher(self.traffic)  # durations, bytes, open connections
        self._failures_sent: tuple | None = None

    def flush(self) -> None:
        """Add the counts since the last flush to the shared files; set the upstream gauge."""
        sent = self._sent
        for counter, counts in ((self._requests, self.requests), (self._handshakes, self.handshakes),
                                (self._ocsp_failures, self.ocsp_failures)):
            for key, n in list(counts.items()):
                skey = (counter, key)
                delta = n - sent.get(skey, 0)
                if delta:
                    counter.labels(*(str(k) for k in key)).inc(delta)
                    sent[skey] = n
        self._traffic.flush()
        if self.failures and self.failures[-1] != self._failures_sent:
            _write_failures(list(self.failures))
            self._failures_sent = self.failures[-1]
        facade = self._facade
        if facade is not None:
            for api, n in facade.upstream_connections().items():
                self._upstream.labels(api).set(n)
        if self.ocsp_source is not None:
            for name, age, missing in self.ocsp_source():
                if age is not None:
                    self._staple_age.labels(name).set(age)
                self._staple_missing.labels(name).set(1 if missing else 0)


def _write_failures(rows: list) -> None:
    """This worker's recent failed handshakes, as JSON beside its metrics files (read by the supervisor)."""
    d = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    path = os.path.join(d, f"failures_{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(rows, f)
    os.replace(path + ".tmp", path)


def worker_gone(metrics_dir: str, pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)


class SupervisorMetrics(Metrics):
    """The supervisor's /metrics: every worker's series summed by prometheus_client, plus its own."""

    def __init__(self, metrics_dir: str) -> None:
        self.metrics_dir = metrics_dir
        self.supervisor: Any = None  # txgate.runtime.workers.Supervisor (workers, restarts)
        super().__init__()

    def recent_handshake_failures(self) -> list[tuple[float, str, str, str]]:
        """Every worker's remembered failed handshakes and the supervisor's own, newest first."""
        rows = list(self.failures)
        for path in glob.glob(os.path.join(self.metrics_dir, "failures_*.json")):
            try:
                with open(path) as f:
                    rows.extend(tuple(r) for r in json.load(f))
            except (OSError, ValueError):
                continue  # a worker replacing its file right now: the next look has it
        return sorted(rows, reverse=True)[:RECENT_FAILURES]

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = {f.name: f for f in MultiProcessCollector(None, path=self.metrics_dir).collect()}
        for family in super().collect():
            if family.name == "txgate_upstream_connections":
                continue  # the supervisor holds no upstream connection: the workers' gauge says it all
            have = merged.get(family.name)
            if have is None:
                merged[family.name] = family
            else:
                _add_samples(have, family.samples)
        yield from merged.values()
        sup = self.supervisor
        workers = GaugeMetricFamily("txgate_workers", "Worker processes serving traffic.")
        workers.add_metric((), 0 if sup is None else sum(1 for w in sup.slots if w is not None and w.ready
                                                           and not w.ended))
        yield workers
        restarts = CounterMetricFamily("txgate_worker_restarts", "Workers replaced after they died.")
        restarts.add_metric((), 0 if sup is None else sup.restarts)
        yield restarts


def _add_samples(family, samples: list) -> None:
    """Add ``samples`` into ``family`` (summing those with the same name and labels)."""
    index = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(family.samples)}
    for s in samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        i = index.get(key)
        if i is None:
            index[key] = len(family.samples)
            family.samples.append(s)
        else:
            old = family.samples[i]
            family.samples[i] = Sample(old.name, old.labels, old.value + s.value, old.timestamp, old.exemplar)
