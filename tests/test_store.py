"""The certificate store (directory backend here; tests/test_store_redis.py runs the same tests on Redis)."""
from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.logger import formatEvent, globalLogPublisher

from conftest import poll
from certs_helpers import NOW, make_ca, make_leaf, pem_chain, pem_key
from txgate import pins
from txgate.lifecycle import CA, sign_csr
from txgate.store import DeferredStore, StoreError, load_secret, open_store, split_pem_bundle

SECRET = b"correct horse battery staple 0123456789"
OTHER_SECRET = b"another secret that is long enough!!"


class DirBackend:
    """Opens directory stores on one state_dir and shows every byte they keep."""

    name = "dir"

    def __init__(self, tmp_path) -> None:
        self.state_dir = str(tmp_path / "state")
        self.opened: list = []

    def make(self, secret=SECRET, clock=None):
        store = open_store("dir", self.state_dir, secret, clock=clock)
        self.opened.append(store)
        return store

    def raw(self) -> bytes:
        out = []
        for root, _dirs, files in os.walk(os.path.join(self.state_dir, "store")):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    out.append(fh.read())
        return b"\n".join(out)

    def close(self) -> None:
        for s in self.opened:
            s.close()


@pytest.fixture
def backend(tmp_path):
    b = DirBackend(tmp_path)
    yield b
    b.close()


@pytest.fixture(scope="module")
def ca():
    return make_ca("Store Test CA")


def leaf(ca, name="svc.example", **kw):
    return make_leaf(ca, [name], **kw)


def leaf_id(ck) -> str:
    return hashlib.sha256(ck.leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def key_der(ck) -> bytes:
    return ck.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())


def assert_code(exc_info, code: str, reason: str | None = None) -> None:
    assert exc_info.value.code == code, exc_info.value
    if reason is not None:
        assert exc_info.value.reason == reason


# --- names, versions, IDs ---------------------------------------------------------------------------


def test_put_get_by_name_version_and_id(backend, ca):
    store = backend.make()
    v1, v2 = leaf(ca), leaf(ca)
    e1 = store.put("api", pem_chain(v1), pem_key(v1))
    assert (e1.id, e1.name, e1.version) == (leaf_id(v1), "api", 1)
    e2 = store.put("api", pem_chain(v2).decode(), pem_key(v2).decode())  # text is fine too
    assert (e2.id, e2.version) == (leaf_id(v2), 2)
    got = store.get("api")
    assert got.id == e2.id and got.version == 2 and got.name == "api"
    assert got.chain[0] == v2.leaf and got.key.public_key() == v2.key.public_key()
    assert store.get("api@1").id == e1.id and store.get("api@1").info.current is False
    by_id = store.get(e1.id)
    assert by_id.chain[0] == v1.leaf and by_id.name is None
    assert store.get(e1.id.upper()).id == e1.id
    ck = got.certified_key()
    assert ck.cert_path == "store:api" and ck.leaf == v2.leaf
    assert store.resolve("api") == e2


def test_the_same_chain_twice_adds_no_version_and_ids_are_stable_across_reopen(backend, ca):
    store = backend.make()
    ck = leaf(ca)
    e1 = store.put("web", pem_chain(ck), pem_key(ck))
    assert store.put("web", pem_chain(ck)) == e1  # re-adding the chain alone keeps the key
    assert store.get("web").has_key
    reopened = backend.make()
    assert reopened.resolve("web") == e1
    assert reopened.get(e1.id).chain_pem == pem_chain(ck)


def test_rollback_goes_back_one_version_and_keeps_history(backend, ca):
    store = backend.make()
    c1, c2, c3 = leaf(ca), leaf(ca), leaf(ca)
    for ck in (c1, c2):
        store.put("api", pem_chain(ck), pem_key(ck))
    back = store.rollback("api")
    assert (back.id, back.version) == (leaf_id(c1), 1)
    assert store.get("api").id == leaf_id(c1)
    assert [(i.version, i.current) for i in store.history("api")] == [(1, True), (2, False)]
    with pytest.raises(StoreError) as e:
        store.rollback("api")
    assert_code(e, "no_previous_version", "store entry 'api' has no version before 1")
    assert e.value.http_status == 409
    e3 = store.put("api", pem_chain(c3), pem_key(c3))
    assert e3.version == 3 and store.get("api@2").id == leaf_id(c2)
    assert store.list()[0].versions == (1, 2, 3)


def test_list_gives_metadata_of_current_versions_and_unnamed_entries(backend, ca):
    store = backend.make()
    a1, a2 = make_leaf(ca, ["a.example", "10.0.0.1"]), make_leaf(ca, ["a.example", "10.0.0.2"])
    store.put("a", pem_chain(a1), pem_key(a1))
    store.put("a", pem_chain(a2), pem_key(a2))
    loose = leaf(ca, "loose.example")
    store.put(None, pem_chain(loose))
    infos = store.list()
    assert [(i.name, i.version) for i in infos] == [("a", 2), (None, None)]
    a = infos[0]
    assert a.id == a.fingerprint == leaf_id(a2)
    assert a.subject == "CN=a.example" and a.issuer == "CN=Store Test CA"
    assert a.sans == ("a.example", "10.0.0.2")
    assert a.not_after == a2.leaf.not_valid_after_utc and a.has_key and a.versions == (1, 2)
    assert a.spki_pin == pins.format_pin(pins.spki_sha256(a2.leaf.public_bytes(serialization.Encoding.DER)))
    assert infos[1].id == leaf_id(loose) and not infos[1].has_key
    d = a.as_dict()
    assert d["not_after"] == a2.leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert d["versions"] == [1, 2] and d["sans"] == ["a.example", "10.0.0.2"]


def test_delete_a_name_or_an_unnamed_id(backend, ca):
    store = backend.make()
    ck, shared, loose = leaf(ca), leaf(ca), leaf(ca)
    e = store.put("gone", pem_chain(ck), pem_key(ck))
    store.put("gone", pem_chain(shared))
    store.put("kept", pem_chain(shared))
    with pytest.raises(StoreError) as exc:
        store.delete(e.id)
    assert_code(exc, "in_use", f"entry {e.id} is a version of gone; delete the name instead")
    with pytest.raises(StoreError) as exc:
        store.delete("gone@1")
    assert_code(exc, "invalid_ref")
    store.delete("gone")
    with pytest.raises(StoreError) as exc:
        store.get("gone")
    assert_code(exc, "not_found", "no store entry named 'gone'")
    assert exc.value.http_status == 404
    with pytest.raises(StoreError) as exc:
        store.get(e.id)
    assert_code(exc, "not_found")
    assert store.get("kept").id == leaf_id(shared)  # still held by another name
    le = store.put(None, pem_chain(loose))
    store.delete(le.id)
    assert [i.name for i in store.list()] == ["kept"]


@pytest.mark.parametrize("ref, code", [("", "invalid_ref"), ("bad name", "invalid_name"), ("a@0", "invalid_ref"),
                                       ("a@x", "invalid_ref"), ("x" * 200, "invalid_name")])
def test_bad_refs_are_rejected(backend, ref, code):
    with pytest.raises(StoreError) as e:
        backend.make().get(ref)
    assert_code(e, code)


# --- validation ----------------------------------------------------------------------------------------


def test_put_validation_reasons(backend, ca):
    store = backend.make()
    good, other = leaf(ca), leaf(ca)
    expired = leaf(ca, not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(days=1))
    future = leaf(ca, not_before=NOW + timedelta(days=2), not_after=NOW + timedelta(days=30))
    cases = [
        ((b"hello",), "malformed_pem", "not a PEM certificate chain"),
        ((b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",), "malformed_pem",
         "malformed PEM certificate chain"),
        ((pem_chain(good) + pem_key(good),), "malformed_pem", "the chain contains a private key; pass the key separately"),
        ((pem_chain(expired),), "certificate_expired",
         f"certificate expired on {expired.leaf.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ')}"),
        ((pem_chain(future),), "certificate_not_yet_valid", None),
        ((pem_chain(good), pem_key(other)), "key_mismatch", "the private key does not match the certificate"),
        ((pem_chain(good), b"garbage"), "malformed_key", "private key: not a PEM private key"),
        ((pem_chain(good), pem_key(good, b"pw")), "malformed_key",
         "private key: private key is encrypted (a passphrase is not supported)"),
    ]
    for args, code, reason in cases:
        with pytest.raises(StoreError) as e:
            store.put("x", *args)
        assert_code(e, code, reason)
        assert e.value.http_status == 400
    assert store.list() == []
    # With an injected clock the expired certificate is fine in the past.
    past = backend.make(clock=lambda: NOW - timedelta(days=10))
    assert past.put("x", pem_chain(expired)).version == 1


def test_split_pem_bundle_separates_the_key(ca):
    ck = leaf(ca)
    chain, key = split_pem_bundle(pem_chain(ck) + pem_key(ck))
    assert x509.load_pem_x509_certificates(chain)[0] == ck.leaf
    assert serialization.load_pem_private_key(key, None).public_key() == ck.key.public_key()
    assert split_pem_bundle(pem_chain(ck)) == (pem_chain(ck), None)


# --- encryption at rest -----------------------------------------------------------------------------------


def _key_traces(ck) -> list[bytes]:
    der = key_der(ck)
    pem = pem_key(ck)
    body = b"".join(pem.splitlines()[1:-1])
    return [pem, body, body[:40], der, der[-32:], base64.b64encode(der), base64.b64encode(der)[:40]]


def test_keys_are_encrypted_at_rest(backend, ca):
    store = backend.make()
    ck = leaf(ca)
    store.put("enc", pem_chain(ck), pem_key(ck))
    csr = store.create_pending_key("pend", ["pend.example"])
    assert csr.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    raw = backend.raw()
    assert pem_chain(ck).splitlines()[1] in raw  # chains are stored readable
    for trace in _key_traces(ck):
        assert trace not in raw
    assert b"PRIVATE KEY" not in raw and b"AES-256-GCM" in raw


def test_wrong_secret_fails_to_decrypt_with_a_clear_error(backend, ca):
    ck = leaf(ca)
    e = backend.make().put("enc", pem_chain(ck), pem_key(ck))
    wrong = backend.make(secret=OTHER_SECRET)
    assert wrong.list()[0].has_key  # metadata needs no secret
    with pytest.raises(StoreError) as exc:
        wrong.get("enc")
    assert_code(exc, "decrypt_failed",
                f"cannot decrypt the private key of store entry {e.id}: wrong store secret, or the record was altered")


def test_ciphertext_is_bound_to_its_entry_id(backend, ca):
    store = backend.make()
    a, b = leaf(ca), leaf(ca)
    ea = store.put("a", pem_chain(a), pem_key(a))
    eb = store.put("b", pem_chain(b), pem_key(b))
    rec_a, rec_b = store._r_get_entry(ea.id), store._r_get_entry(eb.id)
    rec_b["key"] = rec_a["key"]  # move a's sealed key onto b
    store._r_put_entry(eb.id, rec_b)
    with pytest.raises(StoreError) as exc:
        store.get("b")
    assert_code(exc, "decrypt_failed")
    assert store.get("a").key.public_key() == a.key.public_key()


def test_without_a_secret_chains_are_stored_but_keys_refused(backend, ca):
    store = backend.make(secret=None)
    ck = leaf(ca)
    with pytest.raises(StoreError) as exc:
        store.put("k", pem_chain(ck), pem_key(ck))
    assert_code(exc, "no_secret", "cannot store a private key: no store secret (set store_secret_file or TXGATE_STORE_SECRET)")
    assert store.put("k", pem_chain(ck)).version == 1
    assert store.get("k").key is None
    backend.make().put("keyed", pem_chain(ck), pem_key(ck))
    with pytest.raises(StoreError) as exc:
        store.get("keyed")
    assert_code(exc, "no_secret", f"cannot decrypt the private key of store entry keyed: no store secret "
                "(set store_secret_file or TXGATE_STORE_SECRET)")
    with pytest.raises(StoreError) as exc:
        store.create_pending_key("p", ["p.example"])
    assert_code(exc, "no_secret")


def test_load_secret_from_file_or_environment(tmp_path):
    f = tmp_path / "secret"
    f.write_bytes(SECRET + b"\n")
    assert load_secret(str(f), {}) == SECRET
    assert load_secret(None, {"TXGATE_STORE_SECRET": "from-env-0123456789"}) == b"from-env-0123456789"
    assert load_secret(None, {}) is None
    with pytest.raises(StoreError) as exc:
        load_secret(str(tmp_path / "missing"), {})
    assert_code(exc, "bad_secret", f"{tmp_path}/missing: cannot read the store secret: No such file or directory")
    with pytest.raises(StoreError) as exc:
        open_store("dir", str(tmp_path), b"short")
    assert_code(exc, "bad_secret", "the store secret is too short: at least 16 bytes are required")
    with pytest.raises(StoreError) as exc:
        open_store("ftp://x", str(tmp_path), SECRET)
    assert_code(exc, "invalid_url")


# --- pending CSR keys ------------------------------------------------------------------------------------


def test_pending_csr_flow_pairs_the_signed_chain_with_the_kept_key(backend, ca):
    store = backend.make()
    csr_pem = store.create_pending_key("edge", ["edge.example"], ["192.0.2.1"])
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["edge.example"]
    assert store.pending_names() == ["edge"] and store.pending_csr("edge") == csr_pem
    signer = CA(certificate=ca.leaf, key=ca.key)
    cert = sign_csr(signer, csr, now=NOW)
    # A chain for another key is refused, and the pending key stays.
    stranger = leaf(ca, "edge.example")
    with pytest.raises(StoreError) as exc:
        store.complete_pending("edge", pem_chain(stranger))
    assert_code(exc, "key_mismatch", "the certificate's public key is not the pending key of 'edge'")
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.leaf.public_bytes(serialization.Encoding.PEM)
    entry = store.complete_pending("edge", chain)
    assert entry.name == "edge" and entry.version == 1
    got = store.get("edge")
    assert got.has_key and got.key.public_key() == csr.public_key() and got.chain[0] == cert
    assert store.pending_names() == []
    with pytest.raises(StoreError) as exc:
        store.complete_pending("edge", chain)
    assert_code(exc, "no_pending_key", "no pending key for 'edge' (create a CSR first)")
    with pytest.raises(StoreError) as exc:
        store.create_pending_key("bad", ["not a name"])
    assert_code(exc, "invalid_request", "invalid --dns 'not a name': not a DNS name")


# --- no secrets in logs and reprs ----------------------------------------------------------------------------


def test_no_private_key_in_logs_reprs_or_errors(backend, ca):
    events = []
    globalLogPublisher.addObserver(events.append)
    texts = []
    try:
        store = backend.make()
        ck, other = leaf(ca), leaf(ca)
        entry = store.put("s", pem_chain(ck), pem_key(ck))
        got = store.get("s")
        texts += [repr(store), repr(entry), repr(got), str(got), repr(got.info), repr(got.certified_key())]
        texts += [repr(store._box), repr(DeferredStore(store, reactor=_SyncReactor(), threadpool=_SyncPool()))]
        for args in [(pem_chain(ck), pem_key(other)), (pem_chain(other), pem_key(ck)), (pem_chain(ck), pem_key(ck)[:-40])]:
            with pytest.raises(StoreError) as exc:
                store.put("s", *args)
            texts += [str(exc.value), repr(exc.value)]
        csr = store.create_pending_key("p", ["p.example"])
        texts.append(csr.decode())
        with pytest.raises(StoreError) as exc:
            backend.make(secret=OTHER_SECRET).get("s")
        texts += [str(exc.value), repr(exc.value)]
        store.delete("s")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("store: put s version 1" in (formatEvent(e) or "") for e in events)
    texts += [formatEvent(e) or "" for e in events] + [repr(e) for e in events]
    blob = "\n".join(texts).encode()
    for ck_ in (ck, other):
        for trace in _key_traces(ck_):
            assert trace not in blob
    assert b"PRIVATE KEY" not in blob and SECRET not in blob and OTHER_SECRET not in blob


# --- change callbacks and DeferredStore ----------------------------------------------------------------------


class _SyncReactor:
    def __init__(self):
        self.calls = []
        self._lock = threading.Lock()

    def callFromThread(self, f, *a, **kw):
        with self._lock:
            self.calls.append(a)
            f(*a, **kw)

    def getThreadPool(self):
        return _SyncPool()


class _SyncPool:
    def callInThreadWithCallback(self, on_result, f, *a, **kw):
        try:
            result = f(*a, **kw)
        except BaseException:
            from twisted.python.failure import Failure

            on_result(False, Failure())
        else:
            on_result(True, result)


def test_change_callbacks_run_through_the_injected_call(backend, ca):
    store = backend.make()
    other_instance = backend.make()
    reactor = _SyncReactor()
    seen = []
    sub = other_instance.subscribe(seen.append, call=reactor.callFromThread)
    ck, ck2 = leaf(ca), leaf(ca)
    store.put("n", pem_chain(ck))
    store.put("n", pem_chain(ck2))
    store.rollback("n")
    store.create_pending_key("p", ["p.example"])
    store.delete("n")
    poll(lambda: len(seen) >= 5, 2.0, what="five change callbacks")  # Redis delivers from its thread
    assert seen == ["n", "n", "n", "p", "n"] and len(reactor.calls) == 5
    sub.close()  # returns once nothing more can be delivered
    store.put("m", pem_chain(ck))
    assert len(seen) == 5


def test_deferred_store_runs_calls_in_the_pool_and_fails_with_store_error(backend, ca):
    ds = DeferredStore(backend.make(), reactor=_SyncReactor(), threadpool=_SyncPool())
    ck = leaf(ca)
    results, errors = [], []
    ds.put("d", pem_chain(ck), pem_key(ck)).addCallback(results.append)
    ds.get("missing").addErrback(lambda f: errors.append(f.value))
    assert results[0].name == "d" and results[0].version == 1
    assert isinstance(errors[0], StoreError) and errors[0].code == "not_found"


def test_directory_layout_modes(backend, ca):
    store = backend.make()
    ck = leaf(ca)
    e = store.put("m", pem_chain(ck), pem_key(ck))
    root = os.path.join(backend.state_dir, "store")
    for d in (root, f"{root}/entries", f"{root}/names", f"{root}/pending"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in (f"{root}/entries/{e.id}.json", f"{root}/names/m.json"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
