# -*- test-case-name: tests.test_k8s_unit -*-
"""The Kubernetes API access a Config needs (its kubeconfig or the in-cluster settings), checked like any file."""
from __future__ import annotations

from txgate.config import Config, ConfigError


def kubernetes_access(config: Config):
    """The API server access when the config uses Kubernetes certificates (else None); errors name [kubernetes]."""
    if not config.uses_kubernetes:
        return None
    from txgate.k8s.kubeconfig import KubeconfigError, find_access

    k = config.kubernetes
    try:
        return find_access(k.kubeconfig, k.context)
    except KubeconfigError as e:
        raise ConfigError(config.path, "kubernetes", "kubeconfig", str(e)) from None
