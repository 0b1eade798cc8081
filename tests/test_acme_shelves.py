"""Where pending ACME challenges are kept: key validation, the directory shelf (another process reads what
the orderer wrote), the RFC 8737 certificate rebuilt by a reader, and which shelf a gateway process uses."""
# -*- test-case-name: tests.test_acme_shelves -*-
from __future__ import annotations

import os
import stat

import pytest
from cryptography import x509

from txgate.acme.challenges import ACME_IDENTIFIER_OID, ChallengeBoard
from txgate.acme.shelves import DirectoryShelf, MemoryShelf, open_shelf, shelf_kind, valid_key

PREFIX = "/.well-known/acme-challenge/"


@pytest.mark.parametrize("kind, key, ok", [
    ("http", "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0", True),
    ("http", "a-b_c", True),
    ("http", "", False),
    ("http", "..", False),
    ("http", "a/b", False),
    ("http", "a.b", False),
    ("http", "tok=", False),
    ("http", "x" * 257, False),
    ("alpn", "www.example.com", True),
    ("alpn", "xn--bcher-kva.example", True),
    ("alpn", "WWW.example.com", False),  # the board lower-cases first
    ("alpn", "..", False),
    ("alpn", "a/b.example", False),
    ("alpn", ".example.com", False),
    ("alpn", "-a.example.com", False),
    ("alpn", "a" * 64 + ".example", False),
    ("other", "x", False),
])
def test_valid_key(kind, key, ok):
    assert valid_key(kind, key) is ok


def test_invalid_keys_never_reach_the_shelf(tmp_path):
    board = ChallengeBoard(DirectoryShelf(str(tmp_path / "ch")))
    with pytest.raises(ValueError):
        board.add_http("../../gw.ini", "x")
    assert board.http_answer(PREFIX + "../../gw.ini") is None
    assert board.alpn_pair("../x") is None
    assert not (tmp_path / "ch").exists()


def test_directory_shelf_files_are_private_and_read_by_another_board(tmp_path):
    path = str(tmp_path / "run" / "acme-challenges")
    writer, reader = ChallengeBoard(DirectoryShelf(path)), ChallengeBoard(DirectoryShelf(path))
    assert reader.http_answer(PREFIX + "tok") is None  # no directory yet: nothing pending
    writer.add_http("tok", "tok.thumb")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(path, "http-tok")).st_mode) == 0o600
    assert reader.http_answer(PREFIX + "tok") == "tok.thumb"
    assert reader.pending == 1
    writer.remove_http("tok")
    assert reader.http_answer(PREFIX + "tok") is None
    assert os.listdir(path) == []


def test_a_reader_rebuilds_the_alpn_certificate_once_per_key_authorization(tmp_path):
    path = str(tmp_path / "ch")
    writer, reader = ChallengeBoard(DirectoryShelf(path)), ChallengeBoard(DirectoryShelf(path))
    writer.add_alpn("WWW.Example.com.", "tok.thumb")
    assert os.listdir(path) == ["alpn-www.example.com"]
    cert, _key = reader.alpn_pair("www.example.com")
    assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID).critical
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["www.example.com"]
    assert reader.alpn_pair("www.example.com.")[0] is cert  # cached
    writer.add_alpn("www.example.com", "tok2.thumb")  # a new order: a new certificate
    assert reader.alpn_pair("www.example.com")[0] is not cert
    writer.remove_alpn("www.example.com")
    assert reader.alpn_pair("www.example.com") is None
    assert reader.alpn_pair(None) is None


def test_shelf_kind():
    assert shelf_kind("single", False) == "memory"
    assert shelf_kind("supervisor", False) == "directory"
    assert shelf_kind("worker", False) == "directory"
    assert shelf_kind("single", True) == "redis"
    assert shelf_kind("worker", True) == "redis"


def test_a_supervisor_starts_with_an_empty_directory_and_a_worker_keeps_it(tmp_path):
    state = str(tmp_path)
    assert isinstance(open_shelf("single", state), MemoryShelf)
    ChallengeBoard(open_shelf("worker", state)).add_http("old", "old.thumb")
    assert ChallengeBoard(open_shelf("worker", state)).pending == 1
    assert ChallengeBoard(open_shelf("supervisor", state)).pending == 0


# -- Redis: every gateway of a fleet answers -------------------------------------------------------
from test_store_redis import redis_server  # noqa: E402,F401 (a fixture)


@pytest.fixture
def two_stores(redis_server, tmp_path):  # noqa: F811
    from test_store import SECRET, open_store

    redis_server.client().flushdb()
    stores = [open_store(redis_server.url(), str(tmp_path / f"s{i}"), SECRET) for i in range(2)]
    yield stores
    for s in stores:
        s.close()


def test_redis_shelf_answers_on_the_gateway_that_did_not_write(two_stores, redis_server):  # noqa: F811
    from conftest import poll
    from txgate.acme.redis_shelf import RedisShelf

    ordering = ChallengeBoard(open_shelf("single", "unused", two_stores[0]))
    ordering.add_http("early", "early.thumb")  # before the other gateway follows: found by its first re-read
    other = ChallengeBoard(RedisShelf.for_store(two_stores[1], settle=0))
    poll(lambda: other.http_answer(PREFIX + "early") == "early.thumb", 5, 0.01, "the re-read entry")
    ordering.add_http("tok", "tok.thumb")
    ordering.add_alpn("www.example.com", "a.thumb")
    poll(lambda: other.http_answer(PREFIX + "tok") == "tok.thumb", 5, 0.01, "the published http-01 entry")
    cert, _key = poll(lambda: other.alpn_pair("www.example.com"), 5, 0.01, "the published tls-alpn-01 entry")
    assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID).critical
    ttl = redis_server.client().ttl("txgate:store:acme-challenge:http:tok")
    assert 0 < ttl <= 900
    ordering.remove_http("tok")
    ordering.remove_alpn("www.example.com")
    poll(lambda: other.http_answer(PREFIX + "tok") is None and other.alpn_pair("www.example.com") is None, 5, 0.01,
         "the removals")
    # A key that expired (no message) is dropped by the next re-read.
    redis_server.client().delete("txgate:store:acme-challenge:http:early")
    other.shelf.follower.resync_every = 0.1
    poll(lambda: other.http_answer(PREFIX + "early") is None, 5, 0.01, "the expired entry gone")
    # Closing the store stops the follower thread.
    two_stores[1].close()
    assert not other.shelf.follower._thread.is_alive()
