"""txgate.http.paths: the one request-path normalization, and the refusals it decides (no sockets)."""
from __future__ import annotations

import pytest

from txgate.errors import BadRequest
from txgate.http.paths import UnsafePath, normalize_path, remove_dot_segments, routing_path


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"/", "/"),
        (b"/api/v1/users", "/api/v1/users"),
        (b"/%61pi//v1/./x/../users", "/api/v1/users"),
        (b"/caf\xe9", "/caf\xe9"),  # latin-1 bytes map one to one
        (b"/a/b/..", "/a/"),
    ],
)
def test_routing_path_normalizes(raw, expected):
    assert routing_path(raw) == expected


@pytest.mark.parametrize("raw", [b"/admin%2fusers", b"/a%5cb", b"/a\\b", b"/a%00b", b"/a\x00b"])
def test_routing_path_refuses_ambiguous_paths_with_400(raw):
    with pytest.raises(BadRequest) as e:
        routing_path(raw)
    assert e.value.status == 400 and e.value.code == "bad_request"
    assert e.value.message.startswith("ambiguous request path: ")


@pytest.mark.parametrize("raw", [b"*", b"", b"api/x"])
def test_routing_path_refuses_targets_that_are_not_absolute_paths(raw):
    with pytest.raises(BadRequest) as e:
        routing_path(raw)
    assert e.value.message == "request target must be an absolute path"


def test_unsafe_path_is_a_value_error():
    with pytest.raises(ValueError):
        normalize_path("/a%2Fb")
    assert issubclass(UnsafePath, ValueError)


def test_escapes_other_than_unreserved_stay_upper_cased():
    assert normalize_path("/a%3fb%3Dc") == "/a%3Fb%3Dc"


def test_a_lone_or_truncated_percent_is_left_alone():
    assert normalize_path("/100%") == "/100%"
    assert normalize_path("/a%4") == "/a%4"
    assert normalize_path("/a%zz") == "/a%zz"


def test_dot_segments_never_climb_above_the_root():
    assert remove_dot_segments("/../../..") == "/"
    assert normalize_path("/%2e%2e/%2e%2e/etc") == "/etc"
