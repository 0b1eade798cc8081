"""What the STAND-IN API server (tests/k8s_apiserver.py) shows kubectl beyond JSON objects: OpenAPI v3 and Tables.

* OpenAPI v3 (``/openapi/v3`` and one document per group version), minimal but valid, for the two kinds
  it serves: ``kubectl apply`` (with its default ``--validate=strict``) looks for the ``fieldValidation``
  query parameter on the kind's PATCH operation, then leaves validation to the server (``strict_errors``
  is that check: unknown fields are a 400 BadRequest, as the real API answers), and builds its strategic
  merge patch from the kind's schema.
* Tables (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``), which ``kubectl get`` asks for:
  the columns and cells of kube-apiserver's printers (``pkg/printers/internalversion``): Secrets NAME,
  TYPE, DATA, AGE; CSRs NAME, AGE, SIGNERNAME, REQUESTOR, REQUESTEDDURATION, CONDITION.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

CORE = "api/v1"
CERTS = "apis/certificates.k8s.io/v1"
META = "io.k8s.apimachinery.pkg.apis.meta.v1"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _map(value: dict) -> dict:
    return {"type": "object", "additionalProperties": value}


STRING, BYTES = {"type": "string"}, {"type": "string", "format": "byte"}
TIME = {"type": "string", "format": "date-time"}

OBJECT_META = {"type": "object", "properties": {
    "annotations": _map(STRING), "creationTimestamp": TIME, "deletionGracePeriodSeconds": {"type": "integer"},
    "deletionTimestamp": TIME, "finalizers": {"type": "array", "items": STRING}, "generateName": STRING,
    "generation": {"type": "integer", "format": "int64"}, "labels": _map(STRING),
    "managedFields": {"type": "array", "items": {"type": "object"}}, "name": STRING, "namespace": STRING,
    "ownerReferences": {"type": "array", "items": {"type": "object"}}, "resourceVersion": STRING,
    "selfLink": STRING, "uid": STRING}}
LIST_META = {"type": "object", "properties": {"continue": STRING, "remainingItemCount": {"type": "integer"},
                                              "resourceVersion": STRING, "selfLink": STRING}}


def _kind(group: str, kind: str, properties: dict, required=()) -> dict:
    schema = {"type": "object", "properties": {"apiVersion": STRING, "kind": STRING,
                                               "metadata": {"allOf": [_ref(f"{META}.ObjectMeta")], "default": {}},
                                               **properties},
              "x-kubernetes-group-version-kind": [{"group": group, "kind": kind, "version": "v1"}]}
    if required:
        schema["required"] = list(required)
    return schema


def _list(group: str, kind: str, item: str) -> dict:
    return {"type": "object", "required": ["items"], "properties": {
        "apiVersion": STRING, "kind": STRING, "items": {"type": "array", "items": _ref(item)},
        "metadata": {"allOf": [_ref(f"{META}.ListMeta")], "default": {}}},
        "x-kubernetes-group-version-kind": [{"group": group, "kind": f"{kind}List", "version": "v1"}]}


SECRET = "io.k8s.api.core.v1.Secret"
CSR = "io.k8s.api.certificates.v1.CertificateSigningRequest"
SCHEMAS = {
    CORE: {
        SECRET: _kind("", "Secret", {"data": _map(BYTES), "immutable": {"type": "boolean"},
                                     "stringData": _map(STRING), "type": STRING}),
        f"{SECRET}List": _list("", "Secret", SECRET),
    },
    CERTS: {
        CSR: _kind("certificates.k8s.io", "CertificateSigningRequest", {
            "spec": _ref(f"{CSR}Spec"),
            "status": {"allOf": [_ref(f"{CSR}Status")], "default": {}}}, required=["spec"]),
        f"{CSR}Spec": {"type": "object", "required": ["request", "signerName"], "properties": {
            "expirationSeconds": {"type": "integer", "format": "int32"},
            "extra": _map({"type": "array", "items": STRING}),
            "groups": {"type": "array", "items": STRING, "x-kubernetes-list-type": "atomic"},
            "request": BYTES, "signerName": STRING, "uid": STRING,
            "usages": {"type": "array", "items": STRING, "x-kubernetes-list-type": "atomic"},
            "username": STRING}},
        f"{CSR}Status": {"type": "object", "properties": {
            "certificate": BYTES,
            "conditions": {"type": "array", "items": _ref(f"{CSR}Condition"), "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]}}},
        f"{CSR}Condition": {"type": "object", "required": ["type", "status"], "properties": {
            "lastTransitionTime": TIME, "lastUpdateTime": TIME, "message": STRING, "reason": STRING,
            "status": STRING, "type": STRING}},
        f"{CSR}List": _list("certificates.k8s.io", "CertificateSigningRequest", CSR),
    },
}
# (URL path, kind's schema, namespaced) per group version
RESOURCES = {CORE: ("/api/v1/namespaces/{namespace}/secrets", SECRET, "Secret", ""),
             CERTS: ("/apis/certificates.k8s.io/v1/certificatesigningrequests", CSR, "CertificateSigningRequest",
                     "certificates.k8s.io")}


def _param(name: str, where: str = "query", required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "schema": STRING}


def _op(action: str, gvk: dict, schema: str, params: list[dict], body: list[str] | None = None) -> dict:
    op = {"operationId": f"{action}{gvk['kind']}", "parameters": params, "x-kubernetes-action": action,
          "x-kubernetes-group-version-kind": gvk,
          "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _ref(schema)}}},
                        "401": {"description": "Unauthorized"}}}
    if body:
        op["requestBody"] = {"required": True, "content": {t: {"schema": {"type": "object"}} for t in body}}
    return op


def openapi_document(gv: str) -> dict:
    """The OpenAPI v3 document of ``gv`` ("api/v1" or "apis/certificates.k8s.io/v1")."""
    collection, schema, kind, group = RESOURCES[gv]
    gvk = {"group": group, "version": "v1", "kind": kind}
    scope = [_param("namespace", "path")] if "{namespace}" in collection else []
    write = [_param("dryRun"), _param("fieldManager"), _param("fieldValidation")]
    one = scope + [_param("name", "path")]
    patch_types = ["application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json",
                   "application/strategic-merge-patch+json"]
    paths = {
        collection: {
            "get": _op("list", gvk, f"{schema}List", scope + [_param("fieldSelector"), _param("limit"),
                                                             _param("resourceVersion"), _param("watch")]),
            "post": _op("post", gvk, schema, scope + write, ["application/json"]),
        },
        collection + "/{name}": {
            "get": _op("get", gvk, schema, one),
            "put": _op("put", gvk, schema, one + write, ["application/json"]),
            "patch": _op("patch", gvk, schema, one + write + [_param("force")], patch_types),
        },
    }
    schemas = {f"{META}.ObjectMeta": OBJECT_META, f"{META}.ListMeta": LIST_META, **SCHEMAS[gv]}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes (stand-in)", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": schemas}}


def _hash(gv: str) -> str:
    return hashlib.sha512(json.dumps(openapi_document(gv), sort_keys=True).encode()).hexdigest()[:128].upper()


def openapi_root() -> dict:
    """``/openapi/v3``: where each group version's document is (kubectl caches them by hash)."""
    return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={_hash(gv)}"} for gv in RESOURCES}}


def _schema(name: str, gv: str) -> dict:
    return {f"{META}.ObjectMeta": OBJECT_META, f"{META}.ListMeta": LIST_META, **SCHEMAS[gv]}[name]


def strict_errors(gv: str, obj) -> list[str]:
    """Unknown fields of an object or patch of ``gv``'s kind (``fieldValidation=Strict``; patch directives pass)."""
    return _unknown(_schema(RESOURCES[gv][1], gv), obj, gv, "")


def _unknown(schema: dict, value, gv: str, path: str) -> list[str]:
    if "allOf" in schema:
        schema = schema["allOf"][0]
    if "$ref" in schema:
        schema = _schema(schema["$ref"].rsplit("/", 1)[-1], gv)
    props = schema.get("properties")
    if props is None or not isinstance(value, dict):
        return []
    errors = []
    for key, sub in value.items():
        if key.startswith("$"):  # strategic merge patch directives
            continue
        if key not in props:
            errors.append(f'unknown field "{path}{key}"')
        else:
            errors += _unknown(props[key], sub, gv, f"{path}{key}.")
    return errors


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: dict) -> str:
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return human_duration((datetime.now(timezone.utc) - then).total_seconds())


def csr_condition(obj: dict) -> str:
    """The CONDITION column (extractCSRStatus): Denied / Approved / Pending, then ,Failed and ,Issued."""
    types = {c.get("type") for c in obj.get("status", {}).get("conditions") or ()}
    text = "Denied" if "Denied" in types else "Approved" if "Approved" in types else "Pending"
    if "Failed" in types:
        text += ",Failed"
    if obj.get("status", {}).get("certificate"):
        text += ",Issued"
    return text


def _column(name: str, fmt: str = "") -> dict:
    return {"name": name, "type": "string", "format": fmt, "description": "", "priority": 0}


def _cells(resource: str, obj: dict) -> list:
    name = obj["metadata"]["name"]
    if resource == "secrets":
        return [name, obj.get("type", "Opaque"), len(obj.get("data") or {}), _age(obj)]
    spec = obj.get("spec", {})
    seconds = spec.get("expirationSeconds")
    return [name, _age(obj), spec.get("signerName") or "<none>", spec.get("username", ""),
            human_duration(seconds) if seconds else "<none>", csr_condition(obj)]


COLUMNS = {"secrets": ["Name", "Type", "Data", "Age"],
           "certificatesigningrequests": ["Name", "Age", "SignerName", "Requestor", "RequestedDuration", "Condition"]}


def wants_table(accept: str) -> bool:
    """Whether an Accept header asks for a meta.k8s.io Table (as ``kubectl get`` does)."""
    return any("as=Table" in part and "g=meta.k8s.io" in part for part in accept.split(","))


def table(resource: str, items: list[dict], resource_version: str | None = None) -> dict:
    """A meta.k8s.io/v1 Table of ``items``, rows carrying PartialObjectMetadata (includeObject=Metadata)."""
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version or ""},
        "columnDefinitions": [_column(n, "name" if n == "Name" else "") for n in COLUMNS[resource]],
        "rows": [{"cells": _cells(resource, o), "object": {
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}}
            for o in items],
    }
