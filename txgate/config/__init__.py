# -*- test-case-name: tests.test_config -*-
"""gw.ini -> frozen, typed configuration objects; every error names file, section and key.

``model`` holds the objects, ``ini`` (with ``sections`` and ``apis``) the syntax, ``hostnames`` the
host-name rules and ``tokens`` the pin/fingerprint words. Nothing here touches the file system
beyond reading gw.ini itself: ``txgate.plan.files.check_files`` checks the files a Config names.
"""
# -*- test-case-name: tests.test_config -*-
from __future__ import annotations

from txgate.config.hostnames import host_name_problem, host_pattern_rank, is_ip, is_loopback, select_by_host
from txgate.config.ini import DEFAULT_CONFIG, default_config, load, parse_text
from txgate.config.model import (
    TLS_VERSIONS,
    AdminConfig,
    AdminConfigError,
    ApiConfig,
    CertSpec,
    Config,
    ConfigError,
    GatewayConfig,
    KubernetesConfig,
    ListenerConfig,
    SecurityConfig,
    Target,
)


def __getattr__(name: str):
    # ``check_state_dir`` lived here before the file-system checks moved to ``txgate.plan.files``;
    # imported lazily so this package keeps importing the standard library only.
    if name == "check_state_dir":
        from txgate.plan.files import check_state_dir

        return check_state_dir
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_CONFIG", "TLS_VERSIONS", "AdminConfig", "AdminConfigError", "ApiConfig", "CertSpec", "Config",
    "ConfigError", "GatewayConfig", "KubernetesConfig", "ListenerConfig", "SecurityConfig", "Target", "default_config",
    "host_name_problem", "host_pattern_rank", "is_ip", "is_loopback", "load", "parse_text", "select_by_host",
]
