"""The stand-in API server's views for kubectl (tests/k8s_kubectl_views.py): valid OpenAPI, the printers' cells."""
from __future__ import annotations

import pytest

import k8s_kubectl_views as views


@pytest.mark.parametrize("gv", sorted(views.RESOURCES))
def test_openapi_documents_are_valid_and_offer_field_validation(gv):
    import openapi_spec_validator

    doc = views.openapi_document(gv)
    openapi_spec_validator.validate(doc)
    patches = [op for item in doc["paths"].values() for m, op in item.items() if m == "patch"]
    assert len(patches) == 1
    assert {"name": "fieldValidation", "in": "query", "required": False, "schema": {"type": "string"}} in (
        patches[0]["parameters"])
    assert views.openapi_root()["paths"][gv]["serverRelativeURL"].startswith(f"/openapi/v3/{gv}?hash=")


def test_strict_errors_name_unknown_fields_and_pass_patch_directives():
    assert views.strict_errors("api/v1", {"kind": "Secret", "metadata": {"name": "s", "labelz": {}},
                                          "data": {"tls.crt": "x"}, "$retainKeys": ["data"], "tipe": "x"}) == [
        'unknown field "metadata.labelz"', 'unknown field "tipe"']
    assert views.strict_errors("apis/certificates.k8s.io/v1", {"spec": {"request": "x", "signer": "y"}}) == [
        'unknown field "spec.signer"']


@pytest.mark.parametrize("seconds, text", [(-5, "<invalid>"), (-1, "0s"), (119, "119s"), (150, "2m30s"),
                                           (600, "10m"), (3600, "60m"), (3 * 3600 + 60, "3h1m"), (86400, "24h"),
                                           (50 * 3600, "2d2h"), (400 * 86400, "400d"), (800 * 86400, "2y70d")])
def test_human_duration_as_kubernetes_prints_it(seconds, text):
    assert views.human_duration(seconds) == text


def test_csr_condition_column():
    def csr(*types, cert=False):
        return {"status": {"conditions": [{"type": t} for t in types], **({"certificate": "x"} if cert else {})}}

    assert [views.csr_condition(c) for c in (csr(), csr("Approved", cert=True), csr("Denied"),
                                             csr("Approved", "Failed"))] == [
        "Pending", "Approved,Issued", "Denied", "Approved,Failed"]
    assert views.wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert not views.wants_table("application/json, */*")
