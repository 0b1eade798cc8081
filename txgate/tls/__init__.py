# -*- test-case-name: tests.test_tls_unit -*-
"""Server and upstream TLS: contexts, certificate loading, the local CA."""
