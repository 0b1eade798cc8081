"""ACME (RFC 8555): certificates from an ACME CA, issued and renewed into the store, which reloads the gateway.

``challenges`` answers HTTP-01 and TLS-ALPN-01 (RFC 8737), ``schedule`` decides when to order (pure),
``client`` talks to the CA (blocking, run in threads), ``account`` keeps the account key, ``service``
drives it all on the reactor.
"""
# -*- test-case-name: tests.test_acme_unit -*-
