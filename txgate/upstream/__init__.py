# -*- test-case-name: tests.test_proxy_unit -*-
"""Upstream connection pools and the upstream HTTP/1.1 client."""
