# -*- test-case-name: tests.test_ocsp_unit -*-
"""OCSP: stapled status for the gateway's certificates and status checks of client certificates.

``check`` (requests and response verification, pure), ``schedule`` (when to refresh, pure),
``cache`` (responses kept in state_dir), ``fetch`` (Twisted HTTP client), ``staple`` (holders read
by the TLS callback and the refreshers that fill them), ``client`` (client-certificate checks).
"""
