"""End to end: CA bundles from Secrets (`client_ca` / `upstream_ca = k8s-secret:NS/NAME#ca.crt`) on the stand-in API
server, with Secrets made and changed by the real kubectl; a change is a hot reload."""
from __future__ import annotations

import os

import pytest
from certs_helpers import make_ca, make_leaf, pem_chain, pem_key
from conftest import Backend, curl, poll, run_gateway_once
from cryptography.hazmat.primitives import serialization

from k8s_apiserver import FakeApiServer
from test_k8s_e2e import config, kubectl


@pytest.fixture(scope="module")
def site_ca():
    return make_ca("site CA")


@pytest.fixture
def api(tmp_path):
    server = FakeApiServer(tmp_path)
    yield server
    server.close()


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def ca_pem(ca) -> bytes:
    return ca.leaf.public_bytes(serialization.Encoding.PEM)


def apply_ca_secret(api, tmp_path, name: str, ca_file: str, *, create: bool = False) -> None:
    """`kubectl create secret generic NAME --from-file=ca.crt=FILE` (or its --dry-run manifest through `kubectl apply`)."""
    args = ["-n", "web", "create", "secret", "generic", name, f"--from-file=ca.crt={ca_file}"]
    if create:
        kubectl(api, tmp_path, *args)
        return
    manifest = kubectl(api, tmp_path, *args, "--dry-run=client", "-o", "yaml")
    kubectl(api, tmp_path, "-n", "web", "apply", "--validate=false", "-f", "-", stdin=manifest)


def mtls_config(api, tmp_path, client_ca: str) -> str:
    """A listener on the local CA asking for client certificates issued under ``client_ca``."""
    return config(api.kubeconfig(tmp_path / "kubeconfig"), "local").replace(
        "certificate = local\n", f"certificate = local\nclient_auth = require\nclient_ca = {client_ca}\n")


def client_ok(gw, tmp_path, client, cacert: str | None = None) -> bool:
    """A curl request with ``client``'s certificate gets 200 (False for a refused handshake or another status);
    the gateway's certificate is verified under ``cacert`` (default: its local CA)."""
    crt = write(tmp_path, f"client-{client.leaf.serial_number}.crt", pem_chain(client))
    key = write(tmp_path, f"client-{client.leaf.serial_number}.key", pem_key(client))
    r = curl("--cacert", cacert or gw.ca, "--cert", crt, "--key", key, f"https://localhost:{gw.port}/echo", "-o", os.devnull,
             "-w", "%{http_code}")
    return r.returncode == 0 and r.stdout == b"200"


def test_client_ca_from_a_secret_follows_its_updates(api, tmp_path, gateway_factory):
    ca1, ca2 = make_ca("client CA one"), make_ca("client CA two")
    alice, bob = make_leaf(ca1, ["alice"], client=True), make_leaf(ca2, ["bob"], client=True)
    apply_ca_secret(api, tmp_path, "client-ca", write(tmp_path, "ca1.pem", ca_pem(ca1)), create=True)
    gw = gateway_factory(mtls_config(api, tmp_path, "k8s-secret:web/client-ca#ca.crt"))
    assert client_ok(gw, tmp_path, alice)
    assert not client_ok(gw, tmp_path, bob)  # another CA: refused
    # The Secret now holds the other CA: the new client gets in, without a restart, within a few seconds.
    pid = gw.proc.pid
    apply_ca_secret(api, tmp_path, "client-ca", write(tmp_path, "ca2.pem", ca_pem(ca2)))
    poll(lambda: client_ok(gw, tmp_path, bob), 5, what="the client of the new CA accepted")
    assert not client_ok(gw, tmp_path, alice)
    assert gw.proc.pid == pid and gw.proc.poll() is None
    # A bad PEM in the Secret keeps the CA in use, with one log line naming the Secret and the key.
    apply_ca_secret(api, tmp_path, "client-ca", write(tmp_path, "bad.pem", b"-----BEGIN CERTIFICATE-----\nnope\n"))
    gw.wait_log(r"k8s-secret:web/client-ca#ca.crt: ca.crt: not a PEM certificate; keeping the previous CA")
    assert client_ok(gw, tmp_path, bob)
    assert gw.output().count("keeping the previous CA") == 1


def test_client_ca_secret_without_the_key_is_a_startup_error(api, tmp_path):
    ca = make_ca("client CA")
    apply_ca_secret(api, tmp_path, "client-ca", write(tmp_path, "ca.pem", ca_pem(ca)), create=True)
    text = mtls_config(api, tmp_path, "k8s-secret:web/client-ca#ca.pem")
    r = run_gateway_once(tmp_path, text)
    assert r.returncode != 0
    assert ("gw.ini: [listener:main] client_ca: k8s-secret:web/client-ca#ca.pem: Secret web/client-ca: "
            "no ca.pem in the Secret (its keys: ca.crt)") in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    # A Secret that does not exist (and no bundle read before): also an error naming the key and the Secret.
    r = run_gateway_once(tmp_path, text.replace("client-ca#ca.pem", "nothing#ca.crt"))
    assert r.returncode != 0
    assert ("[listener:main] client_ca: k8s-secret:web/nothing#ca.crt: cannot read the Secret web/nothing "
            '(404 NotFound: secrets "nothing" not found)') in r.stdout + r.stderr


def upstream_config(api, tmp_path, port: int) -> str:
    """The echo API proxied to https://127.0.0.1:PORT, verified under the CA bundle of the Secret web/upstream-ca."""
    return config(api.kubeconfig(tmp_path / "kubeconfig"), "local").replace(
        "upstream = builtin:echo", f"upstream = https://127.0.0.1:{port}\nupstream_server_name = backend.example\n"
                                   "upstream_ca = k8s-secret:web/upstream-ca#ca.crt")


def test_upstream_ca_from_a_secret_follows_its_updates(api, tmp_path, gateway_factory):
    right, wrong = make_ca("upstream CA"), make_ca("some other CA")
    leaf = make_leaf(right, ["backend.example"])
    backend = Backend(tls=(write(tmp_path, "backend.crt", pem_chain(leaf)), write(tmp_path, "backend.key", pem_key(leaf))))
    try:
        apply_ca_secret(api, tmp_path, "upstream-ca", write(tmp_path, "wrong.pem", ca_pem(wrong)), create=True)
        gw = gateway_factory(upstream_config(api, tmp_path, backend.port))

        def status() -> bytes:
            return curl("--cacert", gw.ca, f"https://localhost:{gw.port}/x", "-o", os.devnull,
                        "-w", "%{http_code}").stdout

        assert status() == b"502"  # the backend's certificate is not under the Secret's CA
        apply_ca_secret(api, tmp_path, "upstream-ca", write(tmp_path, "right.pem", ca_pem(right)))
        poll(lambda: status() == b"200", 5, what="the upstream verified under the updated CA")
    finally:
        backend.close()


def test_a_reload_that_names_a_secret_ca_reads_it_and_then_follows_it(api, tmp_path, gateway_factory, site_ca):
    import signal

    from test_k8s_e2e import apply_secret, served

    ca1, ca2, ca3 = make_ca("file CA"), make_ca("secret CA"), make_ca("secret CA, updated")
    alice, bob, carol = (make_leaf(ca, [n], client=True) for ca, n in ((ca1, "alice"), (ca2, "bob"), (ca3, "carol")))
    leaf = make_leaf(site_ca, ["localhost"])
    apply_secret(api, tmp_path, "web", "site-tls", leaf)
    apply_ca_secret(api, tmp_path, "client-ca", write(tmp_path, "ca2.pem", ca_pem(ca2)), create=True)
    text = config(api.kubeconfig(tmp_path / "kubeconfig"), "k8s-secret:web/site-tls").replace(
        "certificate = k8s-secret:web/site-tls\n",
        f"certificate = k8s-secret:web/site-tls\nclient_auth = require\nclient_ca = {write(tmp_path, 'ca1.pem', ca_pem(ca1))}\n")
    gw = gateway_factory(text)
    assert served(gw.port) == leaf.leaf
    site = write(tmp_path, "site-ca.pem", ca_pem(site_ca))
    assert client_ok(gw, tmp_path, alice, site) and not client_ok(gw, tmp_path, bob, site)
    gw.config_path.write_text(text.replace(str(tmp_path / "ca1.pem"), "k8s-secret:web/client-ca#ca.crt"))
    gw.signal(signal.SIGHUP)
    poll(lambda: client_ok(gw, tmp_path, bob, site), 10, what="the client of the Secret's CA accepted after the reload")
    assert not client_ok(gw, tmp_path, alice, site)
    apply_ca_secret(api, tmp_path, "client-ca", write(tmp_path, "ca3.pem", ca_pem(ca3)))
    poll(lambda: client_ok(gw, tmp_path, carol, site), 5, what="the Secret followed after the reload")
