"""txgate's speed harness: ``python -m benchmarks`` (see docs/benchmarks.md).

A harness, not a test: it starts a backend (nginx when installed, else a built-in one) and the
gateway as a real ``twistd`` process pinned to one core, drives load from another core, and prints
requests/s, latency percentiles and gateway CPU seconds beside the targets of issue 2.
"""
