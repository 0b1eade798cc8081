"""txgate's speed harness: ``python -m benchmarks`` (see docs/benchmarks.md).

A harness, not a test: it starts a backend (nginx when installed, else a built-in one) and the
gateway as a real ``twistd`` process pinned to one core, drives load from another core (then the same
load through an nginx TLS-terminating proxy, a peer), and prints requests/s, latency percentiles and
CPU per request beside txgate's goals on one core.
"""
