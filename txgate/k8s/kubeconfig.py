# -*- test-case-name: tests.test_k8s_unit -*-
"""How to reach the API server: a kubeconfig file (context, cluster, user) or the in-cluster service account.

Pure parsing: ``parse_kubeconfig(data, base_dir)`` takes the loaded YAML; ``find_access`` picks the
source ($KUBECONFIG, then in-cluster) and reads the files. Credentials are a bearer token (inline or
a file re-read when it rotates) and/or a client certificate; exec and auth-provider plugins are
refused with a clear error (txgate runs no external programs to get credentials).
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeconfigError(Exception):
    """A kubeconfig or in-cluster setting txgate cannot use (one line, no secret in it)."""


@dataclass(frozen=True)
class ClusterAccess:
    """The API server URL, the CA to verify it with, and the credentials."""

    server: str  # https://HOST:PORT
    ca_pem: bytes | None = None  # None: the system trust store
    token: str | None = None
    token_file: str | None = None  # re-read when it changes (projected service-account tokens rotate)
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    namespace: str = "default"
    insecure: bool = False
    source: str = ""  # for messages: the kubeconfig path or "in-cluster"


def _named(items, name: str, kind: str, source: str) -> dict:
    for item in items or ():
        if isinstance(item, dict) and item.get("name") == name:
            return item.get(kind) or {}
    raise KubeconfigError(f"{source}: no {kind} named '{name}'")


def _data_or_file(obj: dict, data_key: str, file_key: str, base_dir: str, source: str) -> bytes | None:
    if obj.get(data_key):
        try:
            return base64.b64decode(obj[data_key], validate=True)
        except ValueError:
            raise KubeconfigError(f"{source}: {data_key} is not base64") from None
    if obj.get(file_key):
        path = os.path.join(base_dir, os.path.expanduser(obj[file_key]))
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise KubeconfigError(f"{source}: {file_key} {path}: {e.strerror}") from None
    return None


def parse_kubeconfig(data, base_dir: str, source: str, context: str | None = None) -> ClusterAccess:
    """A loaded kubeconfig document -> ClusterAccess for ``context`` (default: current-context)."""
    if not isinstance(data, dict):
        raise KubeconfigError(f"{source}: not a kubeconfig (expected a YAML mapping)")
    ctx_name = context or data.get("current-context")
    if not ctx_name:
        raise KubeconfigError(f"{source}: no current-context (set [kubernetes] context)")
    ctx = _named(data.get("contexts"), ctx_name, "context", source)
    cluster = _named(data.get("clusters"), ctx.get("cluster", ""), "cluster", source)
    user = _named(data.get("users"), ctx.get("user", ""), "user", source) if ctx.get("user") else {}
    if user.get("exec") or user.get("auth-provider"):
        plugin = "exec" if user.get("exec") else "auth-provider"
        raise KubeconfigError(f"{source}: user '{ctx.get('user')}' uses an {plugin} plugin, which txgate does not "
                              "run: give it a token, tokenFile or client certificate")
    if user.get("username") or user.get("password"):
        raise KubeconfigError(f"{source}: basic authentication is not supported: use a token or client certificate")
    server = cluster.get("server") or ""
    if not server.startswith("https://"):
        raise KubeconfigError(f"{source}: cluster '{ctx.get('cluster')}': server must be an https:// URL, got "
                              f"'{server}'")
    cert = _data_or_file(user, "client-certificate-data", "client-certificate", base_dir, source)
    key = _data_or_file(user, "client-key-data", "client-key", base_dir, source)
    if (cert is None) != (key is None):
        raise KubeconfigError(f"{source}: user '{ctx.get('user')}' has a client certificate without its key "
                              "(or a key without its certificate)")
    token_file = user.get("tokenFile")
    return ClusterAccess(
        server=server.rstrip("/"),
        ca_pem=_data_or_file(cluster, "certificate-authority-data", "certificate-authority", base_dir, source),
        token=user.get("token") or None,
        token_file=os.path.join(base_dir, token_file) if token_file else None,
        client_cert_pem=cert,
        client_key_pem=key,
        namespace=ctx.get("namespace") or "default",
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        source=source,
    )


def in_cluster(environ, sa_dir: str = SA_DIR) -> ClusterAccess:
    """The in-cluster access: KUBERNETES_SERVICE_HOST/_PORT, the service-account token file and ca.crt."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeconfigError("no kubeconfig ([kubernetes] kubeconfig, $KUBECONFIG) and not in a cluster "
                              "(KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set)")
    host = f"[{host}]" if ":" in host else host
    token_file = os.path.join(sa_dir, "token")
    if not os.path.exists(token_file):
        raise KubeconfigError(f"in-cluster: {token_file} does not exist (is a service account token mounted?)")
    try:
        with open(os.path.join(sa_dir, "ca.crt"), "rb") as f:
            ca = f.read()
    except OSError as e:
        raise KubeconfigError(f"in-cluster: {sa_dir}/ca.crt: {e.strerror}") from None
    namespace = "default"
    try:
        with open(os.path.join(sa_dir, "namespace"), encoding="utf-8") as f:
            namespace = f.read().strip() or namespace
    except OSError:
        pass
    return ClusterAccess(server=f"https://{host}:{port}", ca_pem=ca, token_file=token_file, namespace=namespace,
                         source="in-cluster")


def find_access(kubeconfig: str | None, context: str | None, environ=None) -> ClusterAccess:
    """The kubeconfig named in gw.ini, else the first file of $KUBECONFIG, else the in-cluster settings."""
    environ = os.environ if environ is None else environ
    path = kubeconfig or (environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or None
    if path is None:
        return in_cluster(environ)
    try:
        import yaml
    except ImportError:
        raise KubeconfigError(f"{path}: reading a kubeconfig needs PyYAML (pip install 'txgate[kubernetes]')") from None
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise KubeconfigError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise KubeconfigError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    return parse_kubeconfig(data, os.path.dirname(os.path.abspath(path)), path, context)
