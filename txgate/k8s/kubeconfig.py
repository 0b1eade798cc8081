# -*- test-case-name: tests.test_k8s_unit,tests.test_k8s_kubeconfig -*-
"""How to reach the API server: a kubeconfig (context, cluster, user) or the in-cluster service account.

The reading is the official ``kubernetes`` package's (``kubernetes.config``): ``KubeConfigMerger``
reads and merges the files of ``$KUBECONFIG`` (entries keep the file they came from, so relative
paths resolve against it), ``KubeConfigLoader`` picks the context, its cluster and user, ``FileOrData``
resolves each ``*-data`` / file pair, and ``InClusterConfigLoader`` checks the service-account
settings. Only this module imports it, and only when a config uses Kubernetes certificates.

What txgate adds: the refusals (exec and auth-provider plugins, checked before the library resolves
any credential, so nothing is ever run; basic auth; plain http; proxies), and it keeps the token
file's *path* (``ClusterAccess.token_file``) so ``txgate.k8s.client.TokenSource`` re-reads it when it
rotates. No API server I/O happens here: that is Twisted's (``txgate.k8s.client``).
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_INSTALL = "pip install 'txgate[kubernetes]'"


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

    def credentials(self) -> str:
        """How txgate authenticates, for the startup log line (no secret in it)."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        said = []
        if self.client_cert_pem:
            try:
                subject = x509.load_pem_x509_certificates(self.client_cert_pem)[0].subject
                names = [f"CN={a.value}" for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
                names += [f"O={a.value}" for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
                said.append(f"client certificate {', '.join(names) or '(no CN)'}")
            except ValueError:
                said.append("client certificate (not PEM)")
        if self.token_file:
            said.append(f"token file {self.token_file}")
        elif self.token:
            said.append("token")
        return " and ".join(said) or "no credentials"


def _library(source: str):
    """The ``kubernetes.config`` modules, or a clear error naming the extra to install."""
    try:
        from kubernetes.config import config_exception, incluster_config, kube_config
    except ImportError:
        raise KubeconfigError(f"{source}: reading Kubernetes credentials needs the kubernetes package "
                              f"({_INSTALL})") from None
    return kube_config, incluster_config, config_exception.ConfigException


def _why(error: Exception) -> str:
    """The library's message without its generic prefix."""
    text = str(error).strip()
    for prefix in ("Invalid kube-config file. ", "Invalid kube-config. "):
        text = text.removeprefix(prefix)
    return text


def _base_path(node, base_dir: str | None) -> str:
    """The directory relative paths of an entry resolve against (the library's rule: the entry's own file)."""
    if base_dir is not None:
        return base_dir
    return os.path.dirname(os.path.abspath(node.path)) if node.path else ""


def _named(root, kind: str, name: str, field: str, source: str):
    """The ``field`` node of the entry called ``name`` in the list ``kind`` (the library's lookup; clear error)."""
    entry = root[kind].get_with_name(name, safe=True) if root.safe_get(kind) else None
    if entry is None:
        raise KubeconfigError(f"{source}: no {field} named '{name}'")
    return entry[field]


def _pem(kube_config, node, file_key: str, base: str, source: str) -> bytes | None:
    """``FILE_KEY-data`` (base64) or the file ``FILE_KEY`` names, as bytes (None when neither is set)."""
    try:
        text = kube_config.FileOrData(node, file_key, file_base_path=base).as_data()
    except OSError as e:
        raise KubeconfigError(f"{source}: {file_key} {e.filename}: {e.strerror}") from None
    except ValueError:
        raise KubeconfigError(f"{source}: {file_key}: not a PEM (text) file") from None
    if not text:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise KubeconfigError(f"{source}: {file_key}-data is not base64") from None


def _resolve(libs, root, base_dir: str | None, source: str, context: str | None) -> ClusterAccess:
    """ClusterAccess for ``context`` of a kubeconfig held in the library's ``ConfigNode`` ``root``."""
    kube_config, _incluster, ConfigException = libs
    ctx_name = context or root.safe_get("current-context")
    if not ctx_name:
        raise KubeconfigError(f"{source}: no current-context (set [kubernetes] context)")
    try:
        found = root["contexts"].get_with_name(ctx_name, safe=True)
    except ConfigException:
        found = None
    if found is None:
        raise KubeconfigError(f"{source}: no context named '{ctx_name}'")
    try:
        ctx = found["context"]
        cluster = _named(root, "clusters", ctx["cluster"], "cluster", source)
        user_name = ctx.safe_get("user")
        user = _named(root, "users", user_name, "user", source) if user_name else None
        loader = kube_config.KubeConfigLoader(root, active_context=ctx_name, config_base_path=base_dir)
    except ConfigException as e:
        raise KubeconfigError(f"{source}: {_why(e)}") from None
    user_fields = user.value if user is not None and isinstance(user.value, dict) else {}
    # Before any credential is resolved: txgate runs no credential programs.
    if user_fields.get("exec") or user_fields.get("auth-provider"):
        plugin = "exec" if user_fields.get("exec") else "auth-provider"
        raise KubeconfigError(f"{source}: user '{user_name}' uses an {plugin} plugin, which txgate does not "
                              "run: give it a token, tokenFile or client certificate")
    if user_fields.get("username") or user_fields.get("password"):
        raise KubeconfigError(f"{source}: basic authentication is not supported: use a token or client certificate")
    server = str(cluster.safe_get("server") or "")
    if not server.startswith("https://"):
        raise KubeconfigError(f"{source}: cluster '{ctx['cluster']}': server must be an https:// URL, got "
                              f"'{server}'")
    for unsupported in ("proxy-url", "tls-server-name"):
        if cluster.safe_get(unsupported):
            raise KubeconfigError(f"{source}: cluster '{ctx['cluster']}': {unsupported} is not supported by txgate")
    cluster_base = _base_path(cluster, base_dir)
    cert = key = token_file = None
    if user is not None:
        user_base = _base_path(user, base_dir)
        cert = _pem(kube_config, user, "client-certificate", user_base, source)
        key = _pem(kube_config, user, "client-key", user_base, source)
        if user_fields.get("tokenFile") and not user_fields.get("token"):
            # Only the path: the token is read (and re-read when it rotates) by txgate.k8s.client.TokenSource.
            token_file = os.path.normpath(os.path.join(user_base, user_fields["tokenFile"]))
    if (cert is None) != (key is None):
        raise KubeconfigError(f"{source}: user '{user_name}' has a client certificate without its key "
                              "(or a key without its certificate)")
    return ClusterAccess(
        server=server.rstrip("/"),
        ca_pem=_pem(kube_config, cluster, "certificate-authority", cluster_base, source),
        token=str(user_fields.get("token") or "") or None,
        token_file=token_file,
        client_cert_pem=cert,
        client_key_pem=key,
        namespace=loader.current_context["context"].get("namespace") or "default",
        insecure=bool(cluster.safe_get("insecure-skip-tls-verify")),
        source=source,
    )


def parse_kubeconfig(data, base_dir: str, source: str, context: str | None = None) -> ClusterAccess:
    """A loaded kubeconfig document -> ClusterAccess for ``context`` (default: current-context)."""
    libs = _library(source)
    if not isinstance(data, dict):
        raise KubeconfigError(f"{source}: not a kubeconfig (expected a YAML mapping)")
    return _resolve(libs, libs[0].ConfigNode("kube-config", data), base_dir, source, context)


def in_cluster(environ, sa_dir: str = SA_DIR) -> ClusterAccess:
    """The in-cluster access: KUBERNETES_SERVICE_HOST/_PORT, the service-account token file and ca.crt."""
    if not environ.get("KUBERNETES_SERVICE_HOST") or not environ.get("KUBERNETES_SERVICE_PORT"):
        raise KubeconfigError("no kubeconfig ([kubernetes] kubeconfig, $KUBECONFIG) and not in a cluster "
                              "(KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set)")
    _kube, incluster, ConfigException = _library("in-cluster")
    from kubernetes.client import Configuration

    token_file, ca_file = os.path.join(sa_dir, "token"), os.path.join(sa_dir, "ca.crt")
    settings = Configuration()
    try:
        incluster.InClusterConfigLoader(token_filename=token_file, cert_filename=ca_file, try_refresh_token=False,
                                        environ=environ).load_and_set(settings)
        with open(settings.ssl_ca_cert, "rb") as f:
            ca = f.read()
    except ConfigException as e:
        raise KubeconfigError(f"in-cluster ({sa_dir}): {_why(e)} (is a service account token mounted?)") from None
    except OSError as e:
        raise KubeconfigError(f"in-cluster: {e.filename}: {e.strerror}") from None
    namespace = "default"
    try:
        with open(os.path.join(sa_dir, "namespace"), encoding="utf-8") as f:
            namespace = f.read().strip() or namespace
    except OSError:
        pass
    return ClusterAccess(server=settings.host, ca_pem=ca, token_file=token_file, namespace=namespace,
                         source="in-cluster")


def find_access(kubeconfig: str | None, context: str | None, environ=None) -> ClusterAccess:
    """The kubeconfig named in gw.ini, else the files of $KUBECONFIG (merged as kubectl does), else in-cluster."""
    environ = os.environ if environ is None else environ
    if kubeconfig:
        paths = [kubeconfig]
        if not os.path.exists(kubeconfig):
            raise KubeconfigError(f"{kubeconfig}: No such file or directory")
    else:
        paths = [os.path.expanduser(p) for p in (environ.get("KUBECONFIG") or "").split(os.pathsep) if p]
        if not paths:
            return in_cluster(environ)
        paths = [p for p in paths if os.path.exists(p)]
        if not paths:
            raise KubeconfigError(f"none of the files in $KUBECONFIG ({environ['KUBECONFIG']}) exists")
    source = os.pathsep.join(paths)
    libs = _library(source)
    kube_config, _incluster, ConfigException = libs
    import yaml  # a dependency of the kubernetes package

    merger = kube_config.KubeConfigMerger("")  # then one load_config per path: a ':' in a path is not a list
    for path in paths:
        try:
            merger.load_config(path)
        except OSError as e:
            raise KubeconfigError(f"{path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise KubeconfigError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
        except ConfigException as e:
            raise KubeconfigError(f"{path}: {_why(e)}") from None
        except (AttributeError, TypeError, KeyError):
            raise KubeconfigError(f"{path}: not a kubeconfig (expected a YAML mapping)") from None
    if context is None:
        # kubectl takes the first current-context set (the library, the last): follow kubectl.
        context = next((c["current-context"] for c in merger.config_files.values()
                        if isinstance(c, dict) and c.get("current-context")), None)
    return _resolve(libs, merger.config, None, source, context)
