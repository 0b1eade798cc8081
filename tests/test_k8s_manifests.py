"""deploy/kubernetes/: the manifests hang together (names, labels, ports, probes) and the RBAC is the minimal one."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from txgate.config import parse_text

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def objects() -> dict:
    """(kind, name) -> object, over every manifest file."""
    out = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def one(objects: dict, kind: str) -> dict:
    found = [o for (k, _n), o in objects.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_the_files_the_issue_lists_are_there():
    assert {p.name for p in DEPLOY.glob("*.yaml")} == {"deployment.yaml", "service.yaml", "serviceaccount.yaml",
                                                       "rbac.yaml"}


def test_deployment_service_and_service_account_agree(objects):
    dep, svc, sa = one(objects, "Deployment"), one(objects, "Service"), one(objects, "ServiceAccount")
    pod = dep["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert dep["metadata"]["namespace"] == svc["metadata"]["namespace"] == sa["metadata"]["namespace"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    assert any(e["name"] == "POD_NAME" and e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
               for e in container["env"])


def test_probes_ask_the_admin_health_endpoint_the_config_binds(objects):
    cm, dep = one(objects, "ConfigMap"), one(objects, "Deployment")
    cfg = parse_text(cm["data"]["gw.ini"], "gw.ini")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    https = next(p["containerPort"] for p in container["ports"] if p["name"] == "https")
    assert https == cfg.listeners[0].port
    for probe in ("readinessProbe", "livenessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        url = re.search(r"http://[^'\" ]+", command).group(0)
        assert url == f"http://{cfg.admin.host}:{cfg.admin.port}/health", (probe, url)


def test_rbac_is_the_minimal_set(objects):
    sa = one(objects, "ServiceAccount")
    cm = one(objects, "ConfigMap")
    cfg = parse_text(cm["data"]["gw.ini"], "gw.ini")
    secret_namespaces = {spec.k8s_secret.split("/")[0] for *_x, spec in cfg.kubernetes_specs() if spec.k8s_secret}
    roles = [o for (k, _n), o in objects.items() if k in ("Role", "ClusterRole")]
    grants = set()
    for role in roles:
        for rule in role["rules"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    grants.add((role["kind"], role["metadata"].get("namespace"), tuple(rule["apiGroups"]), res, verb))
    assert grants == {("Role", ns, ("",), "secrets", v) for ns in secret_namespaces for v in ("get", "list", "watch")} | {
        ("ClusterRole", None, ("certificates.k8s.io",), "certificatesigningrequests", v)
        for v in ("create", "get", "list", "watch")}
    # Every role is bound to the ServiceAccount, and nothing else is bound.
    bindings = [o for (k, _n), o in objects.items() if k in ("RoleBinding", "ClusterRoleBinding")]
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == {
        (r["kind"], r["metadata"]["name"]) for r in roles}
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                  "namespace": sa["metadata"]["namespace"]}]
