"""docs/admin-api.yaml: loads, is a valid OpenAPI document, and matches the routes the API serves."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from txgate.admin.api import AdminResource
from txgate.store import CODE_STATUS

import yaml  # noqa: E402  (a test dependency: setup.py extras "test")

DOC = Path(__file__).resolve().parent.parent / "docs" / "admin-api.yaml"


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(DOC.read_text())


def test_openapi_document_is_valid(spec):
    assert spec["openapi"].startswith("3.")
    import openapi_spec_validator as validator
    validator.validate(spec)


def test_every_served_route_is_documented_and_nothing_else(spec):
    served = set()
    for method, pattern, _handler, _auth in AdminResource(facade=None)._routes:
        # The doc names the segment ({ref} or {name}); the router only knows it is one segment.
        served.add((method.decode().lower(), "/" + "/".join(pattern)))
    documented = set()
    for path, ops in spec["paths"].items():
        for method in ops:
            if method in ("get", "put", "post", "delete", "patch"):
                documented.add((method, re.sub(r"\{[^}]+\}", "*", path)))
    assert documented == served


def test_refs_resolve_and_store_error_codes_are_listed(spec):
    text = DOC.read_text()
    for ref in set(re.findall(r'\$ref: "#/([^"]+)"', text)):
        node = spec
        for part in ref.split("/"):
            node = node[part]
    described = spec["components"]["schemas"]["Error"]["properties"]["error"]["description"]
    for code in CODE_STATUS:
        if code != "invalid_url":  # a startup problem, never an API answer
            assert f"`{code}`" in described, code


def test_unauthenticated_health_is_the_only_exception(spec):
    open_ops = [(p, m) for p, ops in spec["paths"].items() for m, op in ops.items()
                if isinstance(op, dict) and op.get("security") == []]
    assert open_ops == [("/health", "get")]


def test_browser_refusals_and_body_types_are_documented(spec):
    from txgate.admin.api import JSON_BODY_TYPES, PEM_BODY_TYPES

    described = spec["components"]["schemas"]["Error"]["properties"]["error"]["description"]
    for code in ("forbidden_origin", "unsupported_media_type"):
        assert f"`{code}`" in described, code
    bodies = {op["operationId"]: set(op["requestBody"]["content"])
              for ops in spec["paths"].values() for op in ops.values()
              if isinstance(op, dict) and "requestBody" in op}
    assert bodies == {"uploadCertificate": set(PEM_BODY_TYPES), "completeCertificate": set(PEM_BODY_TYPES),
                      "createCsr": set(JSON_BODY_TYPES)}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if isinstance(op, dict) and "responses" in op:
                assert "403" in op["responses"], (path, method)
                assert ("415" in op["responses"]) == ("requestBody" in op), (path, method)
