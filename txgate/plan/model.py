# -*- test-case-name: tests.test_config -*-
"""The Plan: everything checked and loaded from a Config, ready to run, before anything binds."""
from __future__ import annotations

from dataclasses import dataclass, field

from txgate.config import Config


@dataclass
class Plan:
    """Everything validated and loaded from a Config, before anything binds."""

    config: Config
    server_tls: dict = field(default_factory=dict)  # listener name -> ServerTLS
    upstream_tls: dict = field(default_factory=dict)  # (api name, target label) -> UpstreamTLS
    warnings: list = field(default_factory=list)
    local_ca_path: str | None = None
    allowlists: dict = field(default_factory=dict)  # api name -> clientauth.Allowlist (mtls = require)
    client_verifiers: dict = field(default_factory=dict)  # listener name -> clientverify.ClientVerifier
    # Every certificate held, for expiry monitoring: (name, role, x509.Certificate).
    held: list = field(default_factory=list)
    # store ref as written (NAME, NAME@V or ID) -> the entry ID it resolved to.
    store_ids: dict = field(default_factory=dict)
    # CA sources from Secrets (`k8s-secret:NS/NAME#KEY`) -> a digest of the bundle in use.
    ca_stamps: dict = field(default_factory=dict)
    # False when the default admin bind (not written in gw.ini) is busy: the admin API is then off.
    admin_available: bool = True
    # The HTTP/2 engine class `[gateway] h2_engine` resolves to (txgate.http.h2engine).
    h2_engine: type | None = None
    # OCSP stapling: txgate.ocsp.check.cert_key -> txgate.ocsp.staple.StapleTarget (holders in the contexts).
    staples: dict = field(default_factory=dict)
    # ACME certificates not issued yet (a local-CA placeholder serves meanwhile): (section, names).
    acme_placeholders: list = field(default_factory=list)

    def warn(self, section: str, key: str, text: str) -> None:
        """Add a startup warning naming the file, section and key."""
        self.warnings.append(f"{self.config.path}: [{section}] {key}: {text}")
