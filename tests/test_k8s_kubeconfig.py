"""Kubeconfig and in-cluster reading through the `kubernetes` package: merging, refusals before any credential
is resolved, relative paths per file, and the error when the package is missing."""
from __future__ import annotations

import base64
import sys

import pytest
import yaml

from txgate.config import ConfigError, parse_text
from txgate.k8s.kubeconfig import KubeconfigError, find_access, in_cluster, parse_kubeconfig
from txgate.plan.kubernetes import kubernetes_access


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def doc(user: dict, cluster: dict | None = None, *, context: str = "c") -> dict:
    return {
        "current-context": context,
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ns"}}],
        "clusters": [{"name": "k", "cluster": cluster or {"server": "https://api:6443",
                                                          "certificate-authority-data": b64(b"CA")}}],
        "users": [{"name": "u", "user": user}],
    }


def test_kubeconfig_files_are_merged_and_paths_resolve_against_their_own_file(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "ca.pem").write_bytes(b"CA-ONE")
    (two / "client.pem").write_bytes(b"CERT-TWO")
    (two / "client-key.pem").write_bytes(b"KEY-TWO")
    (one / "config").write_text(yaml.safe_dump({
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://api:6443/", "certificate-authority": "ca.pem"}}],
    }))
    (two / "config").write_text(yaml.safe_dump({
        "users": [{"name": "u", "user": {"client-certificate": "client.pem", "client-key": "client-key.pem"}}],
    }))
    kubeconfig = f"{one / 'config'}:{tmp_path / 'missing'}:{two / 'config'}"
    a = find_access(None, None, {"KUBECONFIG": kubeconfig})
    assert (a.server, a.ca_pem, a.client_cert_pem, a.client_key_pem, a.token) == (
        "https://api:6443", b"CA-ONE", b"CERT-TWO", b"KEY-TWO", None)
    assert a.source == f"{one / 'config'}:{two / 'config'}"
    # As with kubectl, the first file that sets current-context wins.
    (two / "config").write_text(yaml.safe_dump({
        "current-context": "other",
        "contexts": [{"name": "other", "context": {"cluster": "nowhere", "user": "u"}}],
        "users": [{"name": "u", "user": {"client-certificate": "client.pem", "client-key": "client-key.pem"}}],
    }))
    assert find_access(None, None, {"KUBECONFIG": kubeconfig}).server == "https://api:6443"
    with pytest.raises(KubeconfigError, match="no cluster named 'nowhere'"):
        find_access(None, "other", {"KUBECONFIG": kubeconfig})


def test_exec_plugin_is_refused_before_the_library_resolves_anything(tmp_path, monkeypatch):
    import kubernetes.config.kube_config as kube_config

    def never(*args, **kwargs):
        raise AssertionError("the library was asked to run a credential plugin")

    monkeypatch.setattr(kube_config, "ExecProvider", never)
    monkeypatch.setattr(kube_config, "CommandTokenSource", never)
    monkeypatch.setattr(kube_config.FileOrData, "as_data", never)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "/bin/false"},
            "client-certificate": "missing.pem", "client-key": "missing-key.pem"}
    path = tmp_path / "kc"
    path.write_text(yaml.safe_dump(doc(user)))
    with pytest.raises(KubeconfigError, match=f"^{path}: user 'u' uses an exec plugin, which txgate does not run"):
        find_access(str(path), None, {})
    provider = {"auth-provider": {"name": "oidc", "config": {"cmd-path": "/bin/false"}}}
    with pytest.raises(KubeconfigError, match="user 'u' uses an auth-provider plugin"):
        parse_kubeconfig(doc(provider), "/d", "kc")


@pytest.mark.parametrize("cluster, message", [
    ({"server": "https://api:6443", "proxy-url": "http://proxy:3128"}, "cluster 'k': proxy-url is not supported"),
    ({"server": "https://10.0.0.1:6443", "tls-server-name": "api"}, "cluster 'k': tls-server-name is not supported"),
])
def test_cluster_settings_txgate_cannot_honour_are_refused(cluster, message):
    with pytest.raises(KubeconfigError, match=message):
        parse_kubeconfig(doc({"token": "t"}, cluster), "/d", "kc")


def test_library_errors_are_one_line_with_the_source(tmp_path):
    with pytest.raises(KubeconfigError, match=r"^kc: no cluster named 'k'$"):
        parse_kubeconfig({**doc({"token": "t"}), "clusters": []}, "/d", "kc")
    with pytest.raises(KubeconfigError, match=r"^kc: no user named 'u'$"):
        parse_kubeconfig({**doc({"token": "t"}), "users": [{"name": "other", "user": {"token": "t"}}]}, "/d", "kc")
    with pytest.raises(KubeconfigError, match=r"^kc: client-certificate-data is not base64$"):
        parse_kubeconfig(doc({"client-certificate-data": "not base64!", "client-key-data": b64(b"K")}), "/d", "kc")
    with pytest.raises(KubeconfigError, match=r"^kc: client-key /d/nope.pem: No such file or directory$"):
        parse_kubeconfig(doc({"client-certificate-data": b64(b"C"), "client-key": "nope.pem"}), "/d", "kc")
    bad = tmp_path / "bad"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(KubeconfigError, match=rf"^{bad}: not a kubeconfig \(expected a YAML mapping\)$"):
        find_access(str(bad), None, {})
    with pytest.raises(KubeconfigError, match=r"^none of the files in \$KUBECONFIG \(/no/such:/nor/this\) exists$"):
        find_access(None, None, {"KUBECONFIG": "/no/such:/nor/this"})
    with pytest.raises(KubeconfigError, match=r"^/no/such: No such file or directory$"):
        find_access("/no/such", None, {})


def test_in_cluster_through_the_library(tmp_path):
    (tmp_path / "token").write_text("")
    (tmp_path / "ca.crt").write_bytes(b"CA")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeconfigError, match=r"in-cluster \(.*\): Token file exists but empty"):
        in_cluster(env, str(tmp_path))
    (tmp_path / "token").write_text("tok")
    a = in_cluster(env, str(tmp_path))
    assert (a.server, a.ca_pem, a.token, a.token_file, a.namespace) == (
        "https://[fd00::1]:443", b"CA", None, str(tmp_path / "token"), "default")
    (tmp_path / "ca.crt").unlink()
    with pytest.raises(KubeconfigError, match="Service certification file does not exist"):
        in_cluster(env, str(tmp_path))


def test_without_the_kubernetes_package_the_error_names_file_section_and_key(tmp_path, monkeypatch):
    kc = tmp_path / "kc"
    kc.write_text(yaml.safe_dump(doc({"token": "t"})))
    cfg = parse_text(f"[kubernetes]\nkubeconfig = {kc}\n\n[listener:main]\nbind = 127.0.0.1:0\n"
                     "certificate = k8s-secret:web/site\n\n[api:echo]\nhosts = a.example\nupstream = builtin:echo\n",
                     "gw.ini")
    assert kubernetes_access(cfg).token == "t"
    for name in [m for m in sys.modules if m == "kubernetes" or m.startswith("kubernetes.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import kubernetes -> ImportError
    with pytest.raises(ConfigError) as err:
        kubernetes_access(cfg)
    assert str(err.value) == (f"gw.ini: [kubernetes] kubeconfig: {kc}: reading Kubernetes credentials needs the "
                              "kubernetes package (pip install 'txgate[kubernetes]')")


def test_credentials_are_described_without_secrets():
    from txgate.k8s.kubeconfig import ClusterAccess

    assert ClusterAccess("https://a", token="s3cret").credentials() == "token"
    assert ClusterAccess("https://a", token_file="/t").credentials() == "token file /t"
    assert ClusterAccess("https://a").credentials() == "no credentials"
    assert ClusterAccess("https://a", client_cert_pem=b"junk", client_key_pem=b"k").credentials() == (
        "client certificate (not PEM)")
