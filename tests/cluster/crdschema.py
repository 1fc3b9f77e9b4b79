"""Check objects against a CRD's openAPIV3Schema the way the API server would, in tests:
translate the OpenAPI v3.0 dialect (nullable, boolean exclusiveMinimum) to JSON Schema, and
make unknown fields errors, because the API server would silently *prune* them, and a pruned
field would make the mirror revert forever."""
from __future__ import annotations

from typing import Any

import jsonschema


def to_jsonschema(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out: dict = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format"):
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(v) for v in value]
        elif key == "exclusiveMinimum" and value is True:
            out["exclusiveMinimum"] = node["minimum"]
        elif key == "exclusiveMaximum" and value is True:
            out["exclusiveMaximum"] = node["maximum"]
        elif key in ("minimum", "maximum") and node.get("exclusive" + key[0].upper() + key[1:3] + "imum") is True:
            continue
        else:
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_validator(crd: dict) -> jsonschema.protocols.Validator:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    translated = to_jsonschema(schema)
    translated["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(translated)


def errors(crd: dict, obj: dict) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in crd_validator(crd).iter_errors(obj)]
