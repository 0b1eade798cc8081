"""Header rules without sockets: hop-by-hop, Proxy-*, forwarding headers replaced, Via, multi-values."""
from __future__ import annotations

from txgate.http.headers import VIA_H1, connection_named, downstream_response_headers, upstream_request_headers


def up(headers, client_ip="192.0.2.1", proto=b"https", host=b"api.test", via=b"1.1 txgate"):
    return upstream_request_headers(headers, client_ip=client_ip, proto=proto, original_host=host, via=via)


def names(headers):
    return [k for k, _ in headers]


def values(headers, name):
    return [v for k, v in headers if k == name]


def test_hop_by_hop_removed_upstream():
    out = up([
        (b"host", b"api.test"),
        (b"connection", b"keep-alive, X-Secret, x-other"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"trailer", b"x-t"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"proxy-authorization", b"Basic abc"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-foo", b"bar"),
        (b"x-secret", b"s"),
        (b"x-other", b"o"),
        (b"content-length", b"5"),
        (b"expect", b"100-continue"),
        (b"accept", b"*/*"),
    ])
    n = names(out)
    for gone in (b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
                 b"proxy-authorization", b"proxy-connection", b"proxy-foo", b"x-secret", b"x-other",
                 b"host", b"content-length", b"expect"):
        assert gone not in n, gone
    assert (b"accept", b"*/*") in out


def test_connection_named_tokens():
    assert connection_named([(b"connection", b" Close , X-A,,x-b "), (b"connection", b"X-C")]) == {
        b"close", b"x-a", b"x-b", b"x-c"}
    assert connection_named([(b"accept", b"x")]) == frozenset()


def test_forwarding_headers_replaced_not_trusted():
    out = up([
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"evil.test"),
        (b"x-forwarded-port", b"1"),
        (b"forwarded", b"for=6.6.6.6;proto=http"),
        (b"x-real-ip", b"6.6.6.6"),
        (b"x-forwarded-client-cert", b"Hash=forged"),
    ], client_ip="192.0.2.1", host=b"api.test:8443")
    assert values(out, b"x-forwarded-for") == [b"192.0.2.1"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [b"api.test:8443"]
    assert values(out, b"forwarded") == [b'for=192.0.2.1;proto=https;host="api.test:8443"']
    for gone in (b"x-forwarded-port", b"x-real-ip", b"x-forwarded-client-cert"):
        assert gone not in names(out)
    assert b"6.6.6.6" not in b"".join(v for _, v in out)


def test_forwarded_ipv6_is_quoted_and_bracketed():
    out = up([], client_ip="::1", host=b"api.test")
    assert values(out, b"forwarded") == [b'for="[::1]";proto=https;host=api.test']
    assert values(out, b"x-forwarded-for") == [b"::1"]


def test_forwarded_host_with_unsafe_bytes_is_omitted():
    out = up([], host=b'a"b')
    assert values(out, b"forwarded") == [b"for=192.0.2.1;proto=https"]


def test_via_appended_to_existing():
    out = up([(b"via", b"1.0 fred"), (b"via", b"1.1 p.example")])
    assert values(out, b"via") == [b"1.0 fred, 1.1 p.example, 1.1 txgate"]
    out = up([], via=b"2 txgate")
    assert values(out, b"via") == [b"2 txgate"]


def test_multi_valued_headers_kept_in_order():
    out = up([(b"accept", b"a"), (b"x-multi", b"1"), (b"x-multi", b"2"), (b"cookie", b"a=1; b=2")])
    assert values(out, b"x-multi") == [b"1", b"2"]
    assert values(out, b"cookie") == [b"a=1; b=2"]


def test_response_headers_hop_by_hop_removed_and_set_cookie_kept():
    out = downstream_response_headers([
        (b"content-type", b"text/plain"),
        (b"connection", b"keep-alive, X-Hop"),
        (b"x-hop", b"secret"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"10"),
        (b"proxy-authenticate", b"Basic"),
        (b"upgrade", b"h2c"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"via", b"1.1 backend"),
    ], b"1.1 txgate")
    assert values(out, b"set-cookie") == [b"a=1", b"b=2"]
    assert values(out, b"via") == [b"1.1 backend, 1.1 txgate"]
    for gone in (b"connection", b"x-hop", b"keep-alive", b"transfer-encoding", b"content-length",
                 b"proxy-authenticate", b"upgrade"):
        assert gone not in names(out)
    assert (b"content-type", b"text/plain") in out


def test_connection_keep_alive_alone_and_with_other_names():
    plain = downstream_response_headers(
        [(b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"x-a", b"1")], VIA_H1)
    assert plain == [(b"x-a", b"1"), (b"via", VIA_H1)]
    named = downstream_response_headers(
        [(b"connection", b"keep-alive, x-a"), (b"keep-alive", b"timeout=5"), (b"x-a", b"1"), (b"x-b", b"2")], VIA_H1)
    assert named == [(b"x-b", b"2"), (b"via", VIA_H1)]


def test_connection_close_drops_a_header_named_close_only_when_it_names_it():
    # "Connection: close" costs no lookup of named headers, yet still names a header called "close".
    assert downstream_response_headers([(b"connection", b"close"), (b"x-a", b"1")], VIA_H1) == [
        (b"x-a", b"1"), (b"via", VIA_H1)]
    for conn in (b"close", b"Close", b"x-b, close"):
        out = downstream_response_headers([(b"close", b"1"), (b"connection", conn), (b"x-a", b"2")], VIA_H1)
        assert out == [(b"x-a", b"2"), (b"via", VIA_H1)]
        up = upstream_request_headers([(b"x-a", b"2"), (b"connection", conn), (b"close", b"1")], "10.0.0.1",
                                      b"https", b"h", VIA_H1)
        assert b"close" not in [k for k, _ in up] and (b"x-a", b"2") in up
    kept = downstream_response_headers([(b"close", b"1"), (b"connection", b"keep-alive")], VIA_H1)
    assert kept == [(b"close", b"1"), (b"via", VIA_H1)]
    assert (b"close", b"1") in upstream_request_headers([(b"close", b"1")], "10.0.0.1", b"https", b"h", VIA_H1)


def test_field_bytes_counts_name_value_and_four_from_start():
    from txgate.http.headers import field_bytes, header_lines

    fields = [(b"a", b"bc"), (b"host", b""), (b"x-y", b"zzzz")]
    assert field_bytes(fields) == (1 + 2 + 4) + (4 + 0 + 4) + (3 + 4 + 4)
    assert field_bytes(fields, 2) == 3 + 4 + 4 and field_bytes(fields, 3) == 0 == field_bytes([])
    assert header_lines(fields) == b"a: bc\r\nhost: \r\nx-y: zzzz\r\n" and header_lines([]) == b""


def test_memo_computes_a_missing_key_once_and_keeps_at_most_its_limit():
    from txgate.http.headers import LOWER_NAMES
    from txgate.http.memo import Memo

    calls = []
    memo = Memo(lambda k: calls.append(k) or k.upper(), 3)
    assert memo[b"a"] == b"A" and memo[b"a"] == b"A" and calls == [b"a"]
    for k in (b"b", b"c", b"d", b"e"):
        assert memo[k] == k.upper()
    assert len(memo) <= 3 and calls == [b"a", b"b", b"c", b"d", b"e"]
    assert LOWER_NAMES[b"Content-Type"] == b"content-type" == LOWER_NAMES[b"content-TYPE"]
    for i in range(5000):  # names that never repeat: the table stays bounded
        assert LOWER_NAMES[b"X-N%d" % i] == b"x-n%d" % i
    assert len(LOWER_NAMES) <= LOWER_NAMES.limit
    long = b"X-" + b"a" * LOWER_NAMES.max_key  # a long key is computed, not kept
    assert LOWER_NAMES[long] == long.lower() and long not in LOWER_NAMES


def test_forwarding_headers_of_a_long_host_are_not_kept():
    """A hostile client's long, ever-new Hosts: computed per request, not kept in the per-Host table."""
    from txgate.http import headers as h

    long_host = b"x" * 300 + b".example"
    out = h.upstream_request_headers([], "192.0.2.1", b"https", long_host, h.VIA_H1)
    assert (b"x-forwarded-host", long_host) in out
    assert not any(key[2] == long_host for key in h._TAILS)
    h.upstream_request_headers([], "192.0.2.1", b"https", b"short.example", h.VIA_H1)
    assert ("192.0.2.1", b"https", b"short.example") in h._TAILS
