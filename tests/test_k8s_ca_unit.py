"""CA bundles from Secrets (`k8s-secret:NS/NAME#KEY`): gw.ini syntax, what the Kubernetes source follows, the plan."""
from __future__ import annotations

import pytest
from certs_helpers import make_ca
from cryptography.hazmat.primitives import serialization

from txgate.config import ConfigError, parse_text
from txgate.k8s.service import followed_secrets

GW = """\
[listener:main]
bind = 127.0.0.1:0
certificate = {cert}
client_auth = require
client_ca = {client_ca}

[api:echo]
hosts = api.example
upstream = https://10.0.0.1:8443
upstream_ca = {upstream_ca}
"""


def parse(cert="local", client_ca="k8s-secret:web/client-ca#ca.crt", upstream_ca="k8s-secret:web/site-tls#ca.crt"):
    return parse_text(GW.format(cert=cert, client_ca=client_ca, upstream_ca=upstream_ca), "gw.ini")


def test_ca_sources_are_named_store_entries_and_followed_secrets():
    cfg = parse(cert="k8s-secret:web/site-tls")
    assert cfg.kubernetes_cas() == [("listener:main", "client_ca", "k8s-secret:web/client-ca#ca.crt"),
                                    ("api:echo", "upstream_ca", "k8s-secret:web/site-tls#ca.crt")]
    assert cfg.uses_kubernetes
    refs = cfg.store_refs()
    assert refs["k8s-secret-ca.web.client-ca.ca.crt"] == ["listener:main client_ca"]
    assert refs["k8s-secret-ca.web.site-tls.ca.crt"] == ["api:echo upstream_ca"]
    # One follower per Secret: site-tls gives the listener's pair and the upstream CA.
    assert sorted(followed_secrets(cfg)) == [
        ("web", "client-ca", None, (("ca.crt", "k8s-secret-ca.web.client-ca.ca.crt"),)),
        ("web", "site-tls", "k8s-secret.web.site-tls", (("ca.crt", "k8s-secret-ca.web.site-tls.ca.crt"),))]
    assert not parse(client_ca="ca.pem", upstream_ca="ca.pem").uses_kubernetes


@pytest.mark.parametrize("key,word,message", [
    ("client_ca", "k8s-secret:web/client-ca", "name the Secret's key that holds the CA bundle"),
    ("client_ca", "k8s-csr:example.com/s", "a CA bundle comes from a Secret"),
    ("upstream_ca", "k8s-secret:Web/x#ca.crt", "expected k8s-secret:NAMESPACE/NAME#KEY"),
    ("upstream_ca", "k8s-secret:web/x#ca crt", "expected k8s-secret:NAMESPACE/NAME#KEY"),
])
def test_bad_ca_sources_name_section_and_key(key, word, message):
    with pytest.raises(ConfigError) as e:
        parse(**{key: word})
    section = "listener:main" if key == "client_ca" else "api:echo"
    assert str(e.value).startswith(f"gw.ini: [{section}] {key}: '{word}': ")
    assert message in str(e.value)


class MemoryStore:
    """Just enough of a Store for the plan: get() of key-less CA entries."""

    def __init__(self, entries: dict) -> None:
        self.entries = entries

    def get(self, ref):
        from txgate.store import StoreError

        if ref not in self.entries:
            raise StoreError("not_found", f"no store entry {ref!r}")
        return type("Got", (), {"chain": tuple(self.entries[ref]), "key": None})()


def test_plan_takes_the_bundle_from_the_store_and_stamps_it():
    from txgate.plan import prepare
    from txgate.plan.clientauth import client_auth_signature

    one, two = make_ca("one"), make_ca("two")
    cfg = parse(upstream_ca="k8s-secret:web/client-ca#ca.crt")
    store = MemoryStore({"k8s-secret-ca.web.client-ca.ca.crt": [one.leaf]})
    plan = prepare(cfg, check_ports=False, create_state=False, store=store)
    assert list(plan.client_verifiers["main"].anchors) == [one.leaf]
    assert ("listener:main client_ca", "ca", one.leaf) in plan.held
    store.entries["k8s-secret-ca.web.client-ca.ca.crt"] = [two.leaf]
    plan2 = prepare(cfg, check_ports=False, create_state=False, store=store)
    # Same config, another bundle: the listener's client-certificate policy changed (its connections drain).
    assert client_auth_signature(cfg, "main", plan.ca_stamps) != client_auth_signature(cfg, "main", plan2.ca_stamps)
    assert client_auth_signature(cfg, "main", plan2.ca_stamps) == client_auth_signature(cfg, "main", dict(plan2.ca_stamps))


def test_a_bundle_not_read_yet_is_an_error_when_running_and_a_warning_for_check(tmp_path):
    from txgate.plan import prepare

    ca = tmp_path / "x.pem"
    ca.write_bytes(make_ca("x").leaf.public_bytes(serialization.Encoding.PEM))
    cfg = parse_text(GW.format(cert="local", client_ca="k8s-secret:web/client-ca#ca.crt", upstream_ca=str(ca))
                     .replace("[listener:main]", f"[gateway]\nstate_dir = {tmp_path}/state\n\n[listener:main]"),
                     "gw.ini")
    with pytest.raises(ConfigError) as e:
        prepare(cfg, check_ports=False, create_state=True, store=MemoryStore({}))
    assert str(e.value).startswith("gw.ini: [listener:main] client_ca: k8s-secret:web/client-ca#ca.crt: not read "
                                   "from the cluster")
    plan = prepare(cfg, check_ports=False, create_state=False, store=None)
    assert any("[listener:main] client_ca: k8s-secret:web/client-ca#ca.crt: not read from the cluster yet" in w
               for w in plan.warnings)
