"""Traffic metrics: the tables (buckets, status classes), then a real gateway (one process and two workers)
with real requests, scraped from /metrics and parsed back with prometheus_client's parser."""
from __future__ import annotations

import http.client
import ssl
import timeit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import poll
from txgate.metrics import Metrics
from txgate.metrics_traffic import REQUEST_BUCKETS, Traffic, status_class


def parse(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, family: str, sample: str, **labels) -> float | None:
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


class Handler:
    def __init__(self, api, upstream_seconds=None, upstream_label=None) -> None:
        self.api = api
        self.last_error = None
        self.upstream_seconds = upstream_seconds
        self.upstream_label = upstream_label


def test_status_classes_are_six_labels():
    assert [status_class(s) for s in (0, 101, 200, 204, 308, 404, 503, 999)] == [
        "none", "1xx", "2xx", "2xx", "3xx", "4xx", "5xx", "none"]


def test_request_histogram_buckets_are_cumulative_with_sum_and_count():
    m = Metrics(platform=False)
    m.request_done(Handler("a"), 200, "main", 0.0004, 10, 100)
    m.request_done(Handler("a"), 201, "main", 0.003, 20, 200)
    m.request_done(Handler("a"), 502, "main", 7.0, 5, 50)
    fams = parse(m.exposition()[0].decode())
    fam, name = "txgate_request_duration_seconds", "txgate_request_duration_seconds_bucket"
    ok = dict(api="a", listener="main", status_class="2xx")
    assert value(fams, fam, name, le="0.0005", **ok) == 1
    assert value(fams, fam, name, le="0.0025", **ok) == 1
    assert value(fams, fam, name, le="0.005", **ok) == 2
    assert value(fams, fam, name, le="+Inf", **ok) == 2
    assert value(fams, fam, fam + "_count", **ok) == 2
    assert value(fams, fam, fam + "_sum", **ok) == pytest.approx(0.0034)
    assert value(fams, fam, name, le="5.0", status_class="5xx") == 0
    assert value(fams, fam, name, le="10.0", status_class="5xx") == 1
    assert value(fams, "txgate_received_bytes", "txgate_received_bytes_total", api="a", listener="main") == 35
    assert value(fams, "txgate_sent_bytes", "txgate_sent_bytes_total", api="a", listener="main") == 350


def test_upstream_handshake_connections_and_build_info():
    m = Metrics(platform=False)
    m.request_done(Handler("a", 0.02, "https://10.0.0.1:443"), 200, "main", 0.03)
    m.request_done(Handler("a"), 404, "main", 0.001)  # no upstream answer: not observed
    m.handshake("main", "TLSv1.3", "ok", 0.004)
    m.connection_opened("main")
    m.connection_opened("main")
    m.connection_closed("main")
    fams = parse(m.exposition()[0].decode())
    up = "txgate_upstream_response_seconds"
    assert value(fams, up, up + "_count", api="a", target="https://10.0.0.1:443") == 1
    assert value(fams, up, up + "_bucket", le="0.01", api="a") == 0
    assert value(fams, up, up + "_bucket", le="0.025", api="a") == 1
    hs = "txgate_tls_handshake_duration_seconds"
    assert value(fams, hs, hs + "_bucket", le="0.005", listener="main") == 1
    assert value(fams, "txgate_open_connections", "txgate_open_connections", listener="main") == 1
    info = fams["txgate_build_info"].samples[0]
    assert info.value == 1 and set(info.labels) == {"version", "h2_engine", "pins_backend"}


def test_process_and_platform_collectors_are_served():
    fams = parse(Metrics().exposition()[0].decode())
    assert "process_cpu_seconds" in fams and "python_info" in fams


def test_observing_a_request_stays_cheap():
    t = Traffic()
    n = 20000
    per = timeit.timeit(lambda: t.request("api", "main", 200, 0.003, 120, 800), number=n) / n
    assert per < 20e-6, f"{per * 1e6:.2f} us per request"  # measured ~0.5 us; generous for a loaded machine


# -- a real gateway ------------------------------------------------------------------------------------

GW = """
[gateway]
state_dir = ./txgate-state

[listener:main]
bind = 127.0.0.1:0

[api:echo]
path = /echo
upstream = builtin:echo

[api:back]
path = /back
upstream = {backend}

[admin]
bind = 127.0.0.1:0
"""

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def requests(port: int, path: str, n: int) -> list[int]:
    conn = http.client.HTTPSConnection("localhost", port, context=CTX, timeout=20)
    out = []
    try:
        for _ in range(n):
            conn.request("POST", path, body=b"x" * 100)
            resp = conn.getresponse()
            resp.read()
            out.append(resp.status)
    finally:
        conn.close()
    return out


def scrape(port: int) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    return c.getresponse().read().decode()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_real_traffic_fills_the_histograms(gateway_factory, backend, workers):
    gw = gateway_factory(GW.format(backend=backend.url()), workers=workers)
    admin = gw.admin_port
    assert requests(gw.port, "/echo/x", 5) == [200] * 5
    assert requests(gw.port, "/back/y", 3) == [200] * 3
    assert requests(gw.port, "/nowhere", 2) == [404] * 2

    def ready():
        # A worker's flush writes one family after another while the admin API reads the files: poll until
        # every family this test reads has caught up (a scrape may land between two families of one flush).
        fams = parse(scrape(admin))
        d, up, hs = "txgate_request_duration_seconds", "txgate_upstream_response_seconds", \
            "txgate_tls_handshake_duration_seconds"
        done = (value(fams, d, d + "_count", api="echo", listener="main", status_class="2xx") == 5
                and value(fams, d, d + "_count", api="back", status_class="2xx") == 3
                and value(fams, d, d + "_count", api="-", status_class="4xx") == 2
                and value(fams, up, up + "_count", api="back", target=backend.url()) == 3
                and value(fams, hs, hs + "_count", listener="main") == value(
                    fams, "txgate_tls_handshakes", "txgate_tls_handshakes_total", listener="main", result="ok"))
        return done and fams

    fams = poll(ready, 15, what="10 requests in the duration histograms, 3 upstream responses, the handshakes")
    d = "txgate_request_duration_seconds"
    assert value(fams, d, d + "_bucket", le="+Inf", api="echo", status_class="2xx") == 5
    assert value(fams, d, d + "_bucket", le="30.0", api="echo", status_class="2xx") == 5
    assert value(fams, d, d + "_sum", api="echo", status_class="2xx") > 0
    up = "txgate_upstream_response_seconds"
    assert value(fams, up, up + "_count", api="back", target=backend.url()) == 3
    assert value(fams, "txgate_received_bytes", "txgate_received_bytes_total", api="echo",
                 listener="main") >= 500
    assert value(fams, "txgate_sent_bytes", "txgate_sent_bytes_total", api="back", listener="main") > 0
    hs = "txgate_tls_handshake_duration_seconds"
    handshakes = value(fams, "txgate_tls_handshakes", "txgate_tls_handshakes_total", listener="main", result="ok")
    assert value(fams, hs, hs + "_count", listener="main") == handshakes >= 3
    # The three client connections are closed: poll until every process has seen it and flushed.
    poll(lambda: value(parse(scrape(admin)), "txgate_open_connections", "txgate_open_connections",
                       listener="main") == 0, 15, what="no open connection")
    conn = http.client.HTTPSConnection("localhost", gw.port, context=CTX, timeout=20)
    conn.connect()
    try:
        poll(lambda: value(parse(scrape(admin)), "txgate_open_connections", "txgate_open_connections",
                           listener="main") == 1, 15, what="one open connection")
    finally:
        conn.close()
    text = scrape(admin)
    assert "txgate_build_info{" in text and "process_cpu_seconds_total" in text
    assert text.count("# TYPE txgate_request_duration_seconds histogram") == 1
