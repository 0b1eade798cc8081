"""X-Request-Id and error bodies (issue 15): IDs made or kept, sent upstream, returned, logged; error bodies
carry a code, a generic message and the ID, the details go to the log (in the body with error_detail = on)."""
from __future__ import annotations

import json
import re

import pytest

from conftest import curl, poll
from memory_fixtures import make, pki  # noqa: F401 (fixtures)
from txgate.http.requestid import new_request_id, request_id_of, valid_request_id
from txgate.testing import Hang, MemoryGateway, Respond, gateway_ini

RID = re.compile(r"[0-9a-f]{18,}")


def test_made_ids_are_unique_and_client_ids_are_kept_only_when_sane():
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(RID.fullmatch(i.decode()) for i in ids)
    assert request_id_of([(b"x-request-id", b"abc-123_x.y:z/w+q=@e")]) == b"abc-123_x.y:z/w+q=@e"
    for bad in (b"", b"a b", b'a"b', b"a\x01b", b"x" * 129, "é".encode()):
        assert not valid_request_id(bad)
        assert RID.fullmatch(request_id_of([(b"x-request-id", bad)]).decode())
    assert RID.fullmatch(request_id_of([(b"other", b"v")]).decode())


@pytest.mark.parametrize("alpn", [("http/1.1",), ("h2",)])
def test_a_made_id_goes_upstream_and_back(make, alpn):
    gw = make()
    up = gw.upstream("http://a.internal:8080").queue(Respond(body=b"ok", headers=(("X-Request-Id", "upstream-own"),)))
    response = gw.client(alpn=alpn).get("/a/x")
    gw.flush()
    assert response.status == 200
    rid = response.request_id
    assert RID.fullmatch(rid), response.headers
    assert up.requests[0].header_values("x-request-id") == [rid]
    # Ours, once: the upstream's own X-Request-Id does not replace it.
    assert [v for k, v in response.headers if k.lower() == "x-request-id"] == [rid]


@pytest.mark.parametrize("alpn", [("http/1.1",), ("h2",)])
def test_the_clients_id_is_kept_and_a_bad_one_replaced(make, alpn):
    gw = make()
    up = gw.upstream("http://a.internal:8080").queue(Respond(body=b"1"), Respond(body=b"2"))
    client = gw.client(alpn=alpn)
    kept = client.request("GET", "/a/1", headers=[("x-request-id", "trace-42")])
    gw.flush()
    bad = client.request("GET", "/a/2", headers=[("x-request-id", "has space")])
    gw.flush()
    assert kept.request_id == "trace-42" and up.requests[0].header_values("x-request-id") == ["trace-42"]
    assert RID.fullmatch(bad.request_id) and up.requests[1].header_values("x-request-id") == [bad.request_id]


def test_an_error_body_has_code_generic_message_and_id_and_the_log_has_the_details(make):
    gw = make("timeout = 2\n")
    gw.upstream("http://a.internal:8080").queue(Hang())
    response = gw.client().request("GET", "/a/slow", headers=[("x-request-id", "req-7")])
    gw.advance(3)
    assert response.status == 504
    assert response.json() == {"error": "upstream_timeout", "message": "the upstream service did not answer in time",
                                "request_id": "req-7"}
    assert "a.internal" not in response.body.decode()
    line = gw.logs.matching(r"\(request req-7 on main\)")
    assert len(line) == 1 and "http://a.internal:8080: no response within 2s" in line[0]
    event = next(e for e in gw.logs.events if e.get("request_id") == "req-7")
    assert event["log_level"].name == "warn"


def test_error_detail_on_puts_the_details_in_the_body(pki):  # noqa: F811
    ini = gateway_ini(pki.issue("localhost"), "[api:a]\npath = /a\nupstream = http://a.internal:8080\ntimeout = 2\n",
                      gateway="error_detail = on\n")
    gw = MemoryGateway(ini, pki=pki)
    try:
        gw.upstream("http://a.internal:8080").queue(Hang())
        response = gw.client().get("/a/slow")
        gw.advance(3)
        assert response.json() == {"error": "upstream_timeout", "message": "http://a.internal:8080: no response within 2s",
                                   "request_id": response.request_id}
        missing = gw.client().get("/nowhere")
        gw.flush()
        assert missing.status == 404 and "'/nowhere'" in missing.message
    finally:
        gw.stop()


def test_the_access_log_carries_the_id(gateway_factory, tmp_path):
    log_path = tmp_path / "access.json"
    gw = gateway_factory(f"[gateway]\naccess_log = {log_path}\nlog_format = json\n[admin]\nbind = 127.0.0.1:0\n[listener:main]\nbind = 127.0.0.1:0\n"
                         "[api:echo]\npath = /echo\nupstream = builtin:echo\n")
    r = curl("-H", "X-Request-Id: from-curl-1", "--cacert", gw.ca, gw.url("/echo/id"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["headers"]["x-request-id"] == "from-curl-1"
    rec = poll(lambda: log_path.exists() and [json.loads(x) for x in log_path.read_text().splitlines()], what="line")
    assert rec[-1]["request_id"] == "from-curl-1" and rec[-1]["path"] == "/echo/id"
