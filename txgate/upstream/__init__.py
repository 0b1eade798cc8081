"""Upstream connection pools and the upstream HTTP/1.1 client."""
