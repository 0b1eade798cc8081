# -*- test-case-name: tests.test_records13_props -*-
"""Properties of txgate.tls.records13's receiver (hypothesis): any split of a valid record stream reads
the same; garbage ends in RecordError (never another exception) with at most one record buffered;
KeyUpdate floods, zero-length and padded records, close_notify and alerts do what RFC 8446 says."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txgate.tls.records13 import (ALERT, APPLICATION_DATA, BAD_RECORD_MAC, CLOSE_NOTIFY, HANDSHAKE, MAX_CIPHERTEXT,
                                  INTERNAL_ERROR, MAX_PLAINTEXT, RECORD_OVERFLOW, SUITES, UNEXPECTED_MESSAGE, RecordError,
                                  Records)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pair(suite: str = "TLS_AES_128_GCM_SHA256") -> tuple[Records, Records]:
    """A server `Records` and the client's mirror (the same two secrets, the other way round)."""
    hash_len = 48 if suite.endswith("SHA384") else 32
    c, s = os.urandom(hash_len), os.urandom(hash_len)
    return Records(suite, c, s), Records(suite, s, c)


def key_update(sender: Records, requested: bool) -> None:
    sender._protect_one(b"\x18\x00\x00\x01" + (b"\x01" if requested else b"\x00"), HANDSHAKE)
    sender.write.update(sender.suite)


# One client action: ("data", bytes) | ("ku", requested) | ("pad", bytes, zeros)
actions = st.lists(st.one_of(
    st.tuples(st.just("data"), st.binary(max_size=300)),
    st.tuples(st.just("big"), st.integers(MAX_PLAINTEXT - 2, MAX_PLAINTEXT)),
    st.tuples(st.just("ku"), st.booleans()),
    st.tuples(st.just("pad"), st.binary(max_size=40), st.integers(1, 200)),
), max_size=12)


def play(client: Records, script) -> list[bytes]:
    """Protect the script's records; the non-empty application data it carries, record by record."""
    sent = []
    for action in script:
        if action[0] == "data":
            client.protect(action[1])
            if action[1]:
                sent.append(action[1])
        elif action[0] == "big":
            data = bytes(range(256)) * (action[1] // 256 + 1)
            client.protect(data[:action[1]])
            sent.append(data[:action[1]])
        elif action[0] == "ku":
            key_update(client, action[1])
        else:
            client._protect_one(action[1] + bytes((APPLICATION_DATA,)) + b"\x00" * action[2], 0)
            if action[1]:
                sent.append(action[1])
    return sent


@SETTINGS
@given(script=actions, cuts=st.lists(st.integers(0, 1 << 20), max_size=20), suite=st.sampled_from(sorted(SUITES)))
def test_any_split_of_a_valid_stream_reads_the_same(script, cuts, suite):
    server, client = pair(suite)
    sent = play(client, script)
    wire = client.take_output()
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    got = []
    for a, b in zip(points, points[1:]):
        got += server.unprotect(wire[a:b])
    assert got == sent
    assert not server.pending_input()
    # Whatever the server owes (KeyUpdate answers) and writes next, the client reads in order.
    server.protect(b"reply")
    assert client.unprotect(server.take_output()) == [b"reply"]
    assert server.read.seq == client.write.seq and server.write.seq == client.read.seq


@SETTINGS
@given(script=actions, garbage=st.binary(min_size=1, max_size=3000), split=st.integers(0, 3000))
def test_garbage_after_valid_records_ends_in_record_error_or_waits_for_one_record(script, garbage, split):
    server, client = pair()
    play(client, script)
    wire = client.take_output() + garbage
    split %= len(wire) + 1
    try:
        server.unprotect(wire[:split])
        server.unprotect(wire[split:])
    except RecordError as e:
        assert isinstance(e.alert, int)
        return
    # No verdict yet: what waits is part of one record, never more.
    assert len(server._buf) < 5 + MAX_CIPHERTEXT


@SETTINGS
@given(header=st.binary(min_size=5, max_size=5), body=st.binary(max_size=200))
def test_a_forged_record_is_refused(header, body):
    server, _ = pair()
    try:
        got = server.unprotect(header + body)
    except RecordError:
        return
    assert got == [] and len(server._buf) == 5 + len(body)  # waits for the rest of the announced record


def test_a_key_update_split_across_records_is_reassembled():
    server, client = pair()
    client._protect_one(b"\x18\x00", HANDSHAKE)
    client._protect_one(b"\x00\x01", HANDSHAKE)
    client._protect_one(b"\x01", HANDSHAKE)
    client.write.update(client.suite)
    client.protect(b"after")
    assert server.unprotect(client.take_output()) == [b"after"]
    server.protect(b"x")
    assert client.unprotect(server.take_output()) == [b"x"]


def test_data_between_the_pieces_of_a_split_key_update_is_unexpected():
    server, client = pair()
    client._protect_one(b"\x18\x00", HANDSHAKE)
    client.protect(b"data")
    with pytest.raises(RecordError) as e:
        server.unprotect(client.take_output())
    assert e.value.alert == UNEXPECTED_MESSAGE


def test_a_key_update_followed_by_more_in_its_record_is_unexpected():
    server, client = pair()
    client._protect_one(b"\x18\x00\x00\x01\x00\x18\x00\x00\x01\x00", HANDSHAKE)
    with pytest.raises(RecordError) as e:
        server.unprotect(client.take_output())
    assert e.value.alert == UNEXPECTED_MESSAGE


def test_a_flood_of_requested_key_updates_is_answered_once_before_the_next_data():
    """RFC 8446 4.6.3: the answer goes before the next application data record, so a receiver that is
    silent meanwhile answers many requests with one update: a peer that floods requests and reads
    nothing queues nothing."""
    server, client = pair()
    for _ in range(1000):
        key_update(client, True)
    assert server.unprotect(client.take_output()) == []
    assert server.take_output() == b""
    server.protect(b"now")
    out = server.take_output()
    assert client.unprotect(out) == [b"now"]
    assert len(out) == (5 + 5 + 1 + 16) + (5 + 3 + 1 + 16)  # one KeyUpdate record, then the data
    assert client.read.secret == server.write.secret and server.write.seq == 1


def test_zero_length_application_records_deliver_nothing():
    server, client = pair()
    for _ in range(100):
        client.protect(b"")
    client.protect(b"x")
    assert server.unprotect(client.take_output()) == [b"x"]


def test_an_all_padding_record_is_unexpected_message():
    server, client = pair()
    client._protect_one(b"\x00" * 100, 0)
    with pytest.raises(RecordError) as e:
        server.unprotect(client.take_output())
    assert e.value.alert == UNEXPECTED_MESSAGE


def test_records_of_the_largest_sizes():
    server, client = pair()
    client.protect(b"m" * MAX_PLAINTEXT)
    # padded to the limit: content, type, 299 zeros and _protect_one's "type" 0 are 2^14 + 1 bytes
    client._protect_one(b"p" * (MAX_PLAINTEXT - 300) + bytes((APPLICATION_DATA,)) + b"\x00" * 299, 0)
    assert server.unprotect(client.take_output()) == [b"m" * MAX_PLAINTEXT, b"p" * (MAX_PLAINTEXT - 300)]
    client._protect_one(b"o" * (MAX_PLAINTEXT + 1), APPLICATION_DATA)  # content over 2^14
    with pytest.raises(RecordError) as e:
        server.unprotect(client.take_output())
    assert e.value.alert == RECORD_OVERFLOW
    server, client = pair()
    client._protect_one(b"o" * (MAX_PLAINTEXT + 1) + bytes((APPLICATION_DATA,)) + b"\x00" * 30, 0)  # and padded
    with pytest.raises(RecordError) as e:
        server.unprotect(client.take_output())
    assert e.value.alert == RECORD_OVERFLOW
    server, _ = pair()
    with pytest.raises(RecordError) as e:
        server.unprotect(b"\x17\x03\x03" + (MAX_CIPHERTEXT + 1).to_bytes(2, "big"))
    assert e.value.alert == RECORD_OVERFLOW


@pytest.mark.parametrize("content", [0, 1, 100, MAX_PLAINTEXT])
def test_padding_beyond_2_14_plus_1_bytes_of_inner_plaintext_is_record_overflow(content):
    """Section 5.4: the whole TLSInnerPlaintext (content, type, padding) is at most 2^14 + 1 bytes;
    padding that takes it past is refused with record_overflow, however short the content (as
    BoringSSL does), while up to the limit is read (the largest-sizes test above)."""
    for suite in SUITES:
        server, client = pair(suite)
        # one byte over: content, type, zeros and _protect_one's "type" 0 are 2^14 + 2 bytes
        client._protect_one(b"q" * content + bytes((APPLICATION_DATA,)) + b"\x00" * (MAX_PLAINTEXT - content), 0)
        wire = client.take_output()
        assert len(wire) == 5 + MAX_PLAINTEXT + 2 + 16
        with pytest.raises(RecordError) as e:
            server.unprotect(wire)
        assert e.value.alert == RECORD_OVERFLOW, suite
    server, client = pair()  # padded to the longest ciphertext a record may have (2^14 + 256)
    client._protect_one(b"x" + bytes((APPLICATION_DATA,)) + b"\x00" * (MAX_CIPHERTEXT - 16 - 3), 0)
    wire = client.take_output()
    assert len(wire) == 5 + MAX_CIPHERTEXT
    with pytest.raises(RecordError) as e:
        server.unprotect(wire)
    assert e.value.alert == RECORD_OVERFLOW and "TLSInnerPlaintext" in str(e.value)


def test_nothing_after_close_notify_is_read():
    server, client = pair()
    client.protect(b"before")
    client.alert(CLOSE_NOTIFY)
    client.closed_by_us = False
    client.protect(b"after")  # a peer that goes on: ignored
    assert server.unprotect(client.take_output()) == [b"before"]
    assert server.closed_by_peer


def test_a_change_cipher_spec_after_the_handshake_is_unexpected():
    server, _ = pair()
    with pytest.raises(RecordError) as e:
        server.unprotect(b"\x14\x03\x03\x00\x01\x01")
    assert e.value.alert == UNEXPECTED_MESSAGE


@pytest.mark.parametrize("description", [10, 20, 40, 42, 46, 48, 80, 90, 109, 116, 255])
def test_every_other_alert_ends_the_connection_without_an_answer(description):
    server, client = pair()
    client._protect_one(bytes((2, description)), ALERT)
    with pytest.raises(RecordError) as e:
        server.unprotect(client.take_output())
    assert e.value.alert < 0 and str(description) in str(e.value)


def test_a_tampered_byte_anywhere_is_bad_record_mac():
    for i in range(5, 5 + 16 + 6):
        server, client = pair()
        client.protect(b"hello")
        wire = bytearray(client.take_output())
        wire[i] ^= 0x80
        with pytest.raises(RecordError) as e:
            server.unprotect(bytes(wire))
        assert e.value.alert == BAD_RECORD_MAC


def test_no_secret_in_repr_or_errors():
    server, client = pair()
    secrets = [server.read.secret.hex(), server.write.secret.hex(), server.read.secret, server.write.secret]
    texts = [repr(server), repr(server.read), repr(server.write), str(server.__slots__)]
    client.protect(b"x")
    wire = bytearray(client.take_output())
    wire[-1] ^= 1
    try:
        server.unprotect(bytes(wire))
    except RecordError as e:
        texts += [str(e), repr(e), repr(e.args)]
    for text in texts:
        for secret in secrets:
            assert (secret if isinstance(secret, str) else secret.hex()) not in text


def test_the_write_key_is_updated_before_the_aes_gcm_record_limit():
    """Section 5.5: a key update before 2^24.5 records under one AES-GCM key; ours at 2^24."""
    server, client = pair()
    server.write.seq = client.read.seq = (1 << 24) - 1
    old = server.write.secret
    server.protect(b"last under the first key")
    assert server.write.secret == old
    server.protect(b"first under the next key")
    assert server.write.secret != old and server.write.seq == 1
    assert client.unprotect(server.take_output()) == [b"last under the first key", b"first under the next key"]
    assert client.read.secret == server.write.secret


def test_a_read_sequence_number_is_never_wrapped():
    """Section 5.3: the connection ends before the peer's sequence number would wrap (2^64 - 1)."""
    server, client = pair()
    client.write.seq = server.read.seq = (1 << 64) - 2
    client._protect_one(b"last", APPLICATION_DATA)  # not protect(): it would update its key first
    client._protect_one(b"one too many", APPLICATION_DATA)
    wire = client.take_output()
    first = 5 + int.from_bytes(wire[3:5], "big")
    assert server.unprotect(wire[:first]) == [b"last"]
    with pytest.raises(RecordError) as e:
        server.unprotect(wire[first:])
    assert e.value.alert == INTERNAL_ERROR
