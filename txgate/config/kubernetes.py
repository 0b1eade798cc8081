# -*- test-case-name: tests.test_k8s_unit -*-
"""The Kubernetes syntax of gw.ini: the `[kubernetes]` section, the `k8s-secret:` / `k8s-csr:` certificate words
and the `k8s-secret:NS/NAME#KEY` CA source (``client_ca``, ``upstream_ca``).

A Kubernetes certificate or CA bundle is kept in the certificate store under a derived name
(``store_name_*``): the Kubernetes source (``txgate.k8s``) writes it there, and the plan reads it
like a `store:NAME`.
"""
from __future__ import annotations

import hashlib
import re

from txgate.config.model import CertSpec, KubernetesConfig

KUBERNETES_KEYS = {"kubeconfig", "context", "csr_expiration_seconds", "startup_timeout", "pod_name"}
SECRET_PREFIX = "k8s-secret:"
CSR_PREFIX = "k8s-csr:"
# The API server refuses expirationSeconds below 600.
MIN_CSR_SECONDS = 600

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A signer name is a domain-qualified path: example.com/my-signer, kubernetes.io/kube-apiserver-client.
_SIGNER = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")  # a Secret's data key
_STORE_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def parse_kubernetes(section) -> KubernetesConfig:
    """Validate `[kubernetes]` (a ``txgate.config.sections.Section``)."""
    pod = section.str("pod_name")
    if pod is not None and not _DNS_SUBDOMAIN.match(pod):
        section.fail("pod_name", f"'{pod}' is not a Kubernetes object name (lower-case letters, digits, '-', '.')")
    return KubernetesConfig(
        kubeconfig=section.str("kubeconfig"),
        context=section.str("context"),
        csr_expiration_seconds=section.number("csr_expiration_seconds", 86400, integer=True,
                                              minimum=MIN_CSR_SECONDS),
        startup_timeout=section.number("startup_timeout", 10.0),
        pod_name=pod,
    )


def parse_k8s_spec(section, key: str, word: str, use: str | None = None) -> CertSpec:
    """`k8s-secret:NAMESPACE/NAME` or `k8s-csr:SIGNER` as a CertSpec; ``use`` tells sni entries apart."""
    if word.startswith(SECRET_PREFIX):
        ref = word[len(SECRET_PREFIX):]
        ns, sep, name = ref.partition("/")
        if not sep or not _DNS_LABEL.match(ns) or not _DNS_SUBDOMAIN.match(name):
            section.fail(key, f"'{word}': expected k8s-secret:NAMESPACE/NAME (a namespace and a Secret name: "
                              "lower-case letters, digits, '-' and, in the name, '.')")
        return CertSpec(local=False, k8s_secret=ref, store_ref=store_name_secret(ns, name))
    signer = word[len(CSR_PREFIX):]
    if not _SIGNER.match(signer):
        section.fail(key, f"'{word}': expected k8s-csr:SIGNER_NAME (a domain-qualified signer such as "
                          "example.com/my-signer or kubernetes.io/kube-apiserver-client)")
    where = ".".join(p for p in (section.name, key, use) if p)
    return CertSpec(local=False, k8s_csr=signer, store_ref=store_name_csr(where))


def secret_ca_ref(word: str) -> tuple[str, str, str] | None:
    """(namespace, name, data key) of a `k8s-secret:NS/NAME#KEY` CA source; None for a file path."""
    if not word.startswith(SECRET_PREFIX) or "#" not in word:
        return None
    ref, _, key = word[len(SECRET_PREFIX):].partition("#")
    ns, _, name = ref.partition("/")
    return ns, name, key


def check_ca_source(section, key: str, word: str | None) -> None:
    """A `client_ca` / `upstream_ca` value naming the cluster must be `k8s-secret:NAMESPACE/NAME#KEY`."""
    if word is None or not word.startswith(("k8s-", "k8s_")):
        return
    expected = ("expected k8s-secret:NAMESPACE/NAME#KEY (the Secret and the key of its CA bundle, "
                "e.g. k8s-secret:web/site-tls#ca.crt)")
    if not word.startswith(SECRET_PREFIX):
        section.fail(key, f"'{word}': a CA bundle comes from a Secret: {expected}")
    ref = secret_ca_ref(word)
    if ref is None:
        section.fail(key, f"'{word}': name the Secret's key that holds the CA bundle: {expected}")
    ns, name, data_key = ref
    if not _DNS_LABEL.match(ns) or not _DNS_SUBDOMAIN.match(name) or not _DATA_KEY.match(data_key):
        section.fail(key, f"'{word}': {expected}")


def store_name_secret_ca(word: str) -> str:
    """The store name the CA bundle of a `k8s-secret:NS/NAME#KEY` is kept under: k8s-secret-ca.NS.NAME.KEY."""
    ns, name, key = secret_ca_ref(word)
    return _bounded(f"k8s-secret-ca.{ns}.{name}.{key}")


def is_k8s_word(word: str) -> bool:
    """Whether a certificate word names a Kubernetes source."""
    return word.startswith((SECRET_PREFIX, CSR_PREFIX))


def _bounded(name: str) -> str:
    """A store name (at most 128 characters): long names keep their start and gain a digest."""
    name = _STORE_UNSAFE.sub("_", name).strip("._-") or "x"
    if len(name) <= 128:
        return name
    return name[:111] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def store_name_secret(namespace: str, name: str) -> str:
    """The store name a Secret's certificate is kept under: k8s-secret.NAMESPACE.NAME."""
    return _bounded(f"k8s-secret.{namespace}.{name}")


def store_name_csr(where: str) -> str:
    """The store name a CSR-issued certificate is kept under: k8s-csr.SECTION.KEY[.SNI NAME]."""
    return _bounded(f"k8s-csr.{where.replace(':', '.').replace('*', 'wildcard')}")
