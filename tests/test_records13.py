"""txgate.tls.records13 and txgate.tls.handover, in memory: OpenSSL (pyOpenSSL, the gateway's) does
the handshake against a real TLS client (CPython's ssl module: the system OpenSSL, another build),
then `Records` carries the connection on; the client must read what it protects and it must read
what the client protects."""
from __future__ import annotations

import ssl

import pytest
from OpenSSL import SSL

from cryptography.hazmat.primitives.serialization import Encoding

from certs_helpers import make_ca, make_leaf
from txgate.tls import handover
from txgate.tls.records13 import (ALERT, BAD_RECORD_MAC, CLOSE_NOTIFY, HANDSHAKE, MAX_PLAINTEXT, RECORD_OVERFLOW,
                                  SUITES, UNEXPECTED_MESSAGE, RecordError, Records, expand_label)
from txgate.tls.server import ServerTLS
from txgate.tls.serverconn import read_tls_output


class Pair:
    """A gateway-side pyOpenSSL connection and a CPython ssl client over memory BIOs."""

    def __init__(self, server_tls: ServerTLS, cafile: str, *, max_tls=ssl.TLSVersion.TLSv1_3) -> None:
        self.server = server_tls.serverConnectionForTLS(None)
        self.server.set_accept_state()
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(cafile)
        cctx.maximum_version = max_tls
        cctx.set_alpn_protocols(["h2", "http/1.1"])
        self.cin, self.cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = cctx.wrap_bio(self.cin, self.cout, server_hostname="localhost")
        self.records: Records | None = None

    def handshake(self) -> bytes:
        """Run the handshake; return what the server wrote in its last step (not yet given to the client)."""
        last = b""
        for _ in range(10):
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            if last:
                self.cin.write(last)
                last = b""
                try:
                    self.client.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            data = self.cout.read()
            if data:
                self.server.bio_write(data)
            try:
                self.server.do_handshake()
                return read_tls_output(self.server)
            except SSL.WantReadError:
                last = read_tls_output(self.server)
        raise AssertionError("handshake did not complete")

    def hand_over(self) -> None:
        out = self.handshake()
        taken = handover.take(self.server, out)
        assert taken is not None
        self.records, rest = taken
        assert rest == b""
        self.to_client()

    def to_client(self) -> None:
        self.cin.write(self.records.take_output())

    def client_read(self) -> bytes:
        got = b""
        while True:
            try:
                got += self.client.read(1 << 16)
            except ssl.SSLWantReadError:
                return got

    def client_sends(self, data: bytes) -> list[bytes]:
        self.client.write(data)
        return self.records.unprotect(self.cout.read())


@pytest.fixture(scope="module")
def ca():
    return make_ca("records13 test CA")


@pytest.fixture(scope="module")
def cafile(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("records13") / "ca.pem"
    path.write_bytes(ca.chain[0].public_bytes(Encoding.PEM))
    return str(path)


@pytest.fixture(scope="module")
def leaf(ca):
    return make_leaf(ca, ["localhost"])


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_each_suite_carries_data_both_ways_after_the_hand_over(leaf, cafile, suite):
    tls = ServerTLS(default=leaf, tls13_ciphersuites=suite, hand_over=True)
    p = Pair(tls, cafile)
    p.hand_over()
    assert p.client.cipher()[0] == suite
    assert p.records.alpn == b"h2"
    # OpenSSL sent its session tickets under the application key before the hand-over: the first
    # record of ours must carry the next sequence number, or the client fails to decrypt it.
    assert p.records.write.seq >= 1
    assert p.client_sends(b"GET / HTTP/1.1\r\n\r\n") == [b"GET / HTTP/1.1\r\n\r\n"]
    p.records.protect(b"HTTP/1.1 200 OK\r\n\r\nhello")
    p.to_client()
    assert p.client_read() == b"HTTP/1.1 200 OK\r\n\r\nhello"
    # Many exchanges: the sequence numbers keep step on both sides.
    for i in range(50):
        assert p.client_sends(b"ping %d" % i) == [b"ping %d" % i]
        p.records.protect(b"pong %d" % i)
        p.to_client()
        assert p.client_read() == b"pong %d" % i


def test_openssl_session_object_is_freed_after_the_hand_over(leaf, cafile):
    import gc
    import weakref

    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    ref = weakref.ref(p.server)
    p.server = None
    gc.collect()
    assert ref() is None


def test_large_writes_are_split_into_records_of_at_most_2_14_bytes(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    body = bytes(range(256)) * 300  # 76,800 bytes
    p.records.protect(body)
    out = p.records.take_output()
    assert handover.count_records(out) == 5
    p.cin.write(out)
    assert p.client_read() == body
    big = b"x" * 100_000
    p.client.write(big)
    got = p.records.unprotect(p.cout.read())
    assert b"".join(got) == big and all(len(x) <= MAX_PLAINTEXT for x in got)


def test_records_split_at_every_byte_boundary_are_reassembled(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    p.client.write(b"first")
    p.client.write(b"second")
    wire = p.cout.read()
    boundaries = {5 + int.from_bytes(wire[3:5], "big"), len(wire)}
    got = []
    for i in range(len(wire)):
        got += p.records.unprotect(wire[i:i + 1])
        assert p.records.pending_input() == (i + 1 not in boundaries)
    assert got == [b"first", b"second"]


def test_tls12_connections_stay_with_openssl(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile, max_tls=ssl.TLSVersion.TLSv1_2)
    out = p.handshake()
    assert p.server.get_protocol_version_name() == "TLSv1.2"
    assert handover.take(p.server, out) is None
    assert p.server.traffic is None


def test_a_connection_that_stays_with_openssl_keeps_no_copy_of_its_secrets(leaf, cafile, monkeypatch):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    out = p.handshake()
    assert len(p.server.traffic) == 2
    monkeypatch.setattr(handover, "_SSL_pending", lambda ssl: 1)  # decrypted bytes inside OpenSSL: it keeps them
    assert handover.take(p.server, out) is None
    assert p.server.traffic is None


def test_without_hand_over_no_secret_is_recorded(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=False), cafile)
    p.handshake()
    assert p.server.traffic is None


def test_input_openssl_did_not_read_is_returned_by_the_hand_over(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    # The client's Finished and its first request arrive in one read.
    for _ in range(10):
        try:
            p.client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        p.server.bio_write(p.cout.read())
        try:
            p.server.do_handshake()
        except SSL.WantReadError:
            pass
        p.cin.write(read_tls_output(p.server))
    p.client.write(b"GET /early HTTP/1.1\r\n\r\n")
    p.server.bio_write(p.cout.read())
    p.server.do_handshake()
    p.records, rest = handover.take(p.server, read_tls_output(p.server))
    assert rest and p.records.unprotect(rest) == [b"GET /early HTTP/1.1\r\n\r\n"]


def test_a_tampered_record_is_refused_with_bad_record_mac_and_the_client_sees_the_alert(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    p.client.write(b"hello")
    wire = bytearray(p.cout.read())
    wire[-1] ^= 1
    with pytest.raises(RecordError) as e:
        p.records.unprotect(bytes(wire))
    assert e.value.alert == BAD_RECORD_MAC
    p.records.alert(e.value.alert)
    p.to_client()
    with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC|bad record mac"):
        p.client.read(10)


def test_close_notify_both_ways(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    p.client.write(b"last words")
    try:
        p.client.unwrap()  # the client's close_notify
    except ssl.SSLWantReadError:
        pass
    assert p.records.unprotect(p.cout.read()) == [b"last words"]
    assert p.records.closed_by_peer
    p.records.alert(CLOSE_NOTIFY)
    p.to_client()
    with pytest.raises(ssl.SSLZeroReturnError):
        p.client.read(10)


def test_unprotected_records_after_the_handshake_are_unexpected(leaf, cafile):
    for record in (b"\x14\x03\x03\x00\x01\x01", b"\x15\x03\x03\x00\x02\x02\x28", b"\x16\x03\x03\x00\x04\x18\x00\x00\x00"):
        p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
        p.hand_over()
        with pytest.raises(RecordError) as e:
            p.records.unprotect(record)
        assert e.value.alert == UNEXPECTED_MESSAGE


def test_an_oversized_record_is_refused_before_it_is_buffered(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    with pytest.raises(RecordError) as e:
        p.records.unprotect(b"\x17\x03\x03\x48\x01")  # 18,433 bytes announced: above 2^14 + 256
    assert e.value.alert == RECORD_OVERFLOW


def _mirror(server: Records) -> Records:
    """A client-side Records for the same connection (reads with the server's secret)."""
    suite_name = next(n for n, s in SUITES.items() if s is server.suite)
    return Records(suite_name, server.write.secret, server.read.secret,
                   read_seq=server.write.seq, write_seq=server.read.seq)


def test_key_update_requested_by_the_peer_is_answered_and_both_keys_move_on(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    server = p.records
    client = _mirror(server)
    old_read, old_write = server.read.secret, server.write.secret
    client._protect_one(b"\x18\x00\x00\x01\x01", HANDSHAKE)  # KeyUpdate(update_requested)
    client.write.update(client.suite)
    client.protect(b"after update")
    assert server.unprotect(client.take_output()) == [b"after update"]
    assert server.read.secret == expand_label(old_read, b"traffic upd", len(old_read), server.suite[2])
    # The server's answer (KeyUpdate(update_not_requested)) precedes its next data (section 4.6.3).
    assert server.write.secret == old_write and not server.out
    server.protect(b"answer")
    assert server.write.secret != old_write and server.write.seq == 1
    assert client.unprotect(server.take_output()) == [b"answer"]
    assert client.read.secret == server.write.secret


def test_key_update_not_requested_moves_only_the_read_key(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    server = p.records
    client = _mirror(server)
    old_write = server.write.secret
    client._protect_one(b"\x18\x00\x00\x01\x00", HANDSHAKE)
    client.write.update(client.suite)
    client.protect(b"x")
    assert server.unprotect(client.take_output()) == [b"x"]
    assert server.write.secret == old_write and not server.out


@pytest.mark.parametrize("message", [b"\x04\x00\x00\x01\x00", b"\x18\x00\x00\x02\x00\x00", b"\x18\x00\x00\x01\x07",
                                     b"\x18\x00\x00\x01\x00extra"])
def test_post_handshake_messages_other_than_a_well_formed_key_update_end_the_connection(leaf, cafile, message):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    client = _mirror(p.records)
    client._protect_one(message, HANDSHAKE)
    with pytest.raises(RecordError):
        p.records.unprotect(client.take_output())


def test_other_alerts_end_the_connection_without_an_answer(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    client = _mirror(p.records)
    client._protect_one(b"\x02\x28", ALERT)  # fatal handshake_failure
    with pytest.raises(RecordError) as e:
        p.records.unprotect(client.take_output())
    assert e.value.alert < 0


def test_padding_is_removed_and_an_all_zero_record_is_refused(leaf, cafile):
    p = Pair(ServerTLS(default=leaf, hand_over=True), cafile)
    p.hand_over()
    client = _mirror(p.records)
    client._protect_one(b"padded\x17" + b"\x00" * 1000, 0)  # content, type 23, zeros; then "type" 0 = more zeros
    assert p.records.unprotect(client.take_output()) == [b"padded"]
    client._protect_one(b"\x00" * 10, 0)
    with pytest.raises(RecordError) as e:
        p.records.unprotect(client.take_output())
    assert e.value.alert == UNEXPECTED_MESSAGE


def test_count_records():
    assert handover.count_records(b"") == 0
    assert handover.count_records(b"\x17\x03\x03\x00\x02ab" * 3) == 3
    assert handover.count_records(b"\x17\x03\x03\x00\x02a") is None
    assert handover.count_records(b"\x17\x03") is None


# RFC 8448 section 3 (a simple 1-RTT handshake, TLS_AES_128_GCM_SHA256): the application traffic
# secrets, the keys and IVs derived from them, and the first application data record each way (the
# server's is its second record under that key: its NewSessionTicket went first).
RFC8448_CLIENT_SECRET = "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5"
RFC8448_SERVER_SECRET = "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643"
RFC8448_CLIENT_KEY, RFC8448_CLIENT_IV = "17422dda596ed5d9acd890e3c63f5051", "5b78923dee08579033e523d9"
RFC8448_SERVER_KEY, RFC8448_SERVER_IV = "9f02283b6c9c07efc26bb9f2ac92e356", "cf782b88dd83549aadf1e984"
RFC8448_CLIENT_RECORD = (
    "1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b9819a8a5b46b395bd54a9a20441e2b"
    "62974e1f5a6292a2977014bd1e3deae63aeebb21694915e4")
RFC8448_SERVER_RECORD = (
    "17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e30efaf97d90e6dffc602dcb501a59a8"
    "fcc49c4bf2e5f0a21c0047c2abf332540dd032e167c2955d")


def test_keys_ivs_and_records_match_the_rfc_8448_trace():
    client, server = bytes.fromhex(RFC8448_CLIENT_SECRET), bytes.fromhex(RFC8448_SERVER_SECRET)
    assert expand_label(client, b"key", 16, "sha256").hex() == RFC8448_CLIENT_KEY
    assert expand_label(client, b"iv", 12, "sha256").hex() == RFC8448_CLIENT_IV
    assert expand_label(server, b"key", 16, "sha256").hex() == RFC8448_SERVER_KEY
    assert expand_label(server, b"iv", 12, "sha256").hex() == RFC8448_SERVER_IV
    records = Records("TLS_AES_128_GCM_SHA256", client, server, write_seq=1)
    assert records.read.iv == int(RFC8448_CLIENT_IV, 16) and records.write.iv == int(RFC8448_SERVER_IV, 16)
    assert records.unprotect(bytes.fromhex(RFC8448_CLIENT_RECORD)) == [bytes(range(50))]
    records.protect(bytes(range(50)))
    assert records.take_output().hex() == RFC8448_SERVER_RECORD


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_each_suites_key_and_iv_are_hkdf_expand_label_of_the_secret_and_of_its_update(suite):
    """Against cryptography's HKDF-Expand (another implementation), SHA-384 included."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    aead, key_len, hash_name = SUITES[suite][:3]
    algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[hash_name]

    def label(secret: bytes, name: bytes, length: int) -> bytes:
        full = b"tls13 " + name
        info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
        return HKDFExpand(algorithm, length, info).derive(secret)

    secret = bytes(range(100, 100 + algorithm.digest_size))
    records = Records(suite, secret, secret)
    for _ in range(3):
        for direction in (records.read, records.write):
            assert direction.iv == int.from_bytes(label(secret, b"iv", 12), "big")
            nonce = bytes(12)
            expected = aead(label(secret, b"key", key_len)).encrypt(nonce, b"m", b"")
            assert direction.aead.encrypt(nonce, b"m", b"") == expected
            direction.update(records.suite)
        secret = label(secret, b"traffic upd", algorithm.digest_size)
        assert records.read.secret == records.write.secret == secret


def _records13_without_hashlib(monkeypatch):
    """A second copy of `records13` imported as on a CPython without ``_hashlib``: its fallback."""
    import hmac
    import importlib.util
    import sys

    from txgate.tls import records13

    monkeypatch.setitem(sys.modules, "_hashlib", None)  # `from _hashlib import ...` raises ImportError
    spec = importlib.util.spec_from_file_location("records13_without_hashlib", records13.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._hmac_new is hmac.new and records13._hmac_new is not hmac.new
    return module


def test_without_hashlib_the_rfc_8448_trace_still_matches(monkeypatch):
    fallback = _records13_without_hashlib(monkeypatch)
    client, server = bytes.fromhex(RFC8448_CLIENT_SECRET), bytes.fromhex(RFC8448_SERVER_SECRET)
    records = fallback.Records("TLS_AES_128_GCM_SHA256", client, server, write_seq=1)
    assert records.read.iv == int(RFC8448_CLIENT_IV, 16) and records.write.iv == int(RFC8448_SERVER_IV, 16)
    assert records.unprotect(bytes.fromhex(RFC8448_CLIENT_RECORD)) == [bytes(range(50))]
    records.protect(bytes(range(50)))
    assert records.take_output().hex() == RFC8448_SERVER_RECORD


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_without_hashlib_each_suites_keys_ivs_and_updates_are_the_same(monkeypatch, suite):
    """The fallback (hmac.new) and _hashlib.hmac_new give the same key and IV, generation after
    generation: each side reads the other's records through three key updates."""
    fallback = _records13_without_hashlib(monkeypatch)
    size = 48 if suite.endswith("SHA384") else 32
    c, s = bytes(range(7, 7 + size)), bytes(range(200, 200 + size))
    ours, theirs = Records(suite, c, s), fallback.Records(suite, s, c)
    for generation in range(4):
        assert ours.read.iv == theirs.write.iv and ours.write.iv == theirs.read.iv
        assert ours.read.secret == theirs.write.secret and ours.write.secret == theirs.read.secret
        ours.protect(b"to them %d" % generation)
        theirs.protect(b"to us %d" % generation)
        assert theirs.unprotect(ours.take_output()) == [b"to them %d" % generation]
        assert ours.unprotect(theirs.take_output()) == [b"to us %d" % generation]
        theirs._protect_one(b"\x18\x00\x00\x01\x01", HANDSHAKE)  # update_requested: both keys move on
        theirs.write.update(theirs.suite)
        assert ours.unprotect(theirs.take_output()) == []
        ours.protect(b"")  # our answer (their read key moves on as they read it), then our new key
        assert theirs.unprotect(ours.take_output()) == []
