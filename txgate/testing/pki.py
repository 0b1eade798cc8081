# -*- test-case-name: tests.test_testing_harness -*-
"""Test certificates: a private CA that issues server and client certificates into a directory."""
from __future__ import annotations

import ipaddress
import os
from datetime import datetime, timezone

import attrs
from cryptography.hazmat.primitives import serialization

from txgate.fileio import write_private_file, write_public_file
from txgate.lifecycle.ca import CA, build_ca_certificate
from txgate.lifecycle.issue import issue_certificate
from txgate.lifecycle.keys import generate_key
from txgate.tls.certs import CertifiedKey, private_key_pem


class TestPKI:
    """A CA (``ca.pem`` in ``directory``) and the certificates it issues, written next to it.

    Every issued `CertifiedKey` carries ``cert_path``/``key_path``, ready for gw.ini
    (``certificate = {ck.cert_path} {ck.key_path}``) and for `UpstreamDouble` certificates.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, directory: str | os.PathLike[str], name: str = "txgate test CA") -> None:
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        now = datetime.now(timezone.utc)
        key = generate_key("ec")
        self.ca = CA(certificate=build_ca_certificate(key, name=name, days=3650, now=now), key=key,
                     directory=self.directory)
        self.ca_path = os.path.join(self.directory, f"{_slug(name)}.pem")
        write_public_file(self.ca_path, self.ca.pem())

    def issue(self, *names: str, client: bool = False, common_name: str | None = None,
              file_name: str | None = None) -> CertifiedKey:
        """A leaf for DNS names and IP addresses (a client certificate with ``client=True``), written to files."""
        dns, ips = _split_names(names)
        ck = issue_certificate(
            self.ca, dns=dns, ips=ips, client=client, now=datetime.now(timezone.utc), common_name=common_name,
        )
        base = os.path.join(self.directory, _slug(file_name or common_name or (names[0] if names else "client")))
        n = 0
        while os.path.exists(f"{base}{n or ''}.pem"):
            n += 1
        cert_path, key_path = f"{base}{n or ''}.pem", f"{base}{n or ''}-key.pem"
        write_public_file(cert_path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ck.chain[:1]))
        write_private_file(key_path, private_key_pem(ck.key))
        # The CA stays out of the chain file (as a server's chain usually does): clients trust ca_path.
        return attrs.evolve(ck, chain=ck.chain[:1], cert_path=cert_path, key_path=key_path)


def _split_names(names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of a list of certificate names."""
    dns: list[str] = []
    ips: list[str] = []
    for name in names:
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return dns, ips


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text.lower()).strip("-") or "cert"
