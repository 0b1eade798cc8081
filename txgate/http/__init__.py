# -*- test-case-name: tests.test_h1_unit -*-
"""Downstream HTTP/1.1 and HTTP/2 protocols, the router, header rules, error responses."""
