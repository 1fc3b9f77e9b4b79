"""The FineTune custom resource: its CRD (generated from the pydantic spec models), a read-only
mirror of every spec from git into a CR, and the status writer.

Why a mirror and not a source: specs live in git, where review and history are. The CR exists
so that `kubectl get finetunes` shows each spec's phase, run, gate and deployed version, and so
that Argo CD / Flux can read its health. Therefore:

* The CRD's openAPIV3Schema is derived from `FineTune.model_json_schema` (`crd()`), so the CR
  can never drift from the models; `python -m controller.backends.kubernetes_crd` rewrites
  `charts/ftops/crds/finetunes.ftops.dev.yaml`, and a test fails when the committed file is stale.
  The schema carries no `default`s: the API server would otherwise fill them in and the mirror
  would no longer show what git says (defaults are in the descriptions instead).
* `FineTuneMirror.sync` creates a CR per spec, updates it when git changes, and reverts edits
  made to the CR's spec: it records the hash of what it wrote in an annotation, so a spec that
  no longer matches that hash was edited in the cluster (an Event says so), and one whose hash
  matches but differs from git was changed in git. Updates are PUTs guarded by resourceVersion.
* Status is written only through the status subresource (`write_status`), as a merge patch of
  the `controller.status.SpecStatus` wire shape plus `observedGeneration` (kstatus, Flux).

Every write goes through KubernetesBackend, so its `fence` (leader election) guards them all.
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from controller import labels as L
from controller.errors import PermanentError, TemporaryError
from controller.spec.finetune import API_VERSION, KIND, FineTune
from controller.status import SpecStatus

if TYPE_CHECKING:
    from controller.backends.kubernetes import KubernetesBackend

GROUP = "ftops.dev"
VERSION = "v1alpha1"
PLURAL = "finetunes"
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = Path(__file__).resolve().parents[2] / "charts" / "ftops" / "crds" / f"{CRD_NAME}.yaml"

MANAGED_BY = (L.MANAGED_BY, L.MANAGED_BY_VALUE)
OWNER_LABEL = L.OWNER
SOURCE_ANNOTATION = L.SOURCE
HASH_ANNOTATION = L.SPEC_HASH
READ_ONLY_ANNOTATION = L.READ_ONLY
MIRROR_MANAGER = "ftops-mirror"

# ----------------------------------------------------------------------------- CRD (pure)

_KEEP = {"type", "description", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems",
         "maxItems", "multipleOf", "required", "nullable"}
_FORMATS = {"int32", "int64", "float", "double", "byte", "date", "date-time", "password"}


def _resolve(node: dict, defs: dict) -> dict:
    """Inline a $ref, keeping the referring node's own keywords (description) over the target's."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    merged = {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
    return merged


def _describe_default(out: dict, node: dict) -> None:
    if "default" in node and node["default"] is not None:
        text = out.get("description", "")
        suffix = f"Default: {json.dumps(node['default'])}."
        out["description"] = f"{text} {suffix}".strip() if suffix not in text else text


def _structural_only(schema: dict) -> dict:
    """The structure of a schema (types, nesting), without value validations: what two variants
    of a union can share."""
    out = {k: schema[k] for k in ("type", "nullable", "x-kubernetes-preserve-unknown-fields") if k in schema}
    if "items" in schema:
        out["items"] = _structural_only(schema["items"])
    if "properties" in schema:
        out["properties"] = {k: _structural_only(v) for k, v in schema["properties"].items()}
    if "additionalProperties" in schema:
        out["additionalProperties"] = _structural_only(schema["additionalProperties"])
    return out


def structural(node: dict, defs: dict) -> dict:
    """Convert a pydantic (JSON Schema 2020-12) node to a Kubernetes structural schema:
    $refs inlined; `anyOf [X, null]` -> X + nullable; `const` -> one-value enum; numeric
    exclusiveMinimum/Maximum -> the OpenAPI v3.0 boolean form; discriminated unions merged into
    one object (the discriminator an enum of the variants); `additionalProperties: false` dropped
    (unknown fields are pruned anyway); titles, formats Kubernetes does not know and defaults
    dropped (see module docstring)."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        nullable = len(branches) < len(node["anyOf"])
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(branches) == 1:
            out: dict[str, Any] = structural({**_resolve(branches[0], defs), **rest}, defs)
        else:
            out = {"x-kubernetes-preserve-unknown-fields": True}
            if "description" in node:
                out["description"] = node["description"]
        if nullable:
            out["nullable"] = True
        _describe_default(out, node)
        return out
    if "oneOf" in node:
        variants = [structural(v, defs) for v in node["oneOf"]]
        disc = (node.get("discriminator") or {}).get("propertyName")
        props: dict[str, dict] = {}
        for v in variants:
            for name, sch in (v.get("properties") or {}).items():
                if name not in props:
                    props[name] = sch
                elif props[name] != sch:
                    props[name] = _structural_only(props[name])
        if disc:
            values = [x for v in variants for x in (v.get("properties", {}).get(disc, {}).get("enum") or [])]
            props[disc] = {"type": "string", "enum": values,
                           "description": f"Selects the variant: {', '.join(values)}."}
        out = {"type": "object", "properties": props}
        if disc:
            out["required"] = [disc]
        if "description" in node:
            out["description"] = node["description"]
        return out
    out = {}
    for key, value in node.items():
        if key in _KEEP:
            out[key] = copy.deepcopy(value)
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "format" and value in _FORMATS:
            out["format"] = value
    _describe_default(out, node)
    if node.get("type") == "object":
        if "properties" in node:
            out["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = structural(node["additionalProperties"], defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array" and "items" in node:
        out["items"] = structural(node["items"], defs)
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _condition_schema() -> dict:
    return {
        "type": "object",
        "required": ["type", "status", "reason"],
        "properties": {
            "type": {"type": "string", "description": "DataReady, Trained, Evaluated, GatePassed, Deployed, Ready or Stalled."},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "description": "A CamelCase constant (controller.status.Reason)."},
            "message": {"type": "string"},
            "observedRevision": {"type": "string", "nullable": True, "description": "Git revision this was observed at."},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }


def status_schema() -> dict:
    """The CR's status: controller.status.SpecStatus on the wire, plus observedGeneration."""
    return {
        "type": "object",
        "description": "Written by the controller through the status subresource.",
        "properties": {
            "phase": {"type": "string", "description": "Stalled, Ready, or the reason of the first step not done."},
            "observedRevision": {"type": "string", "nullable": True, "description": "Git revision last reconciled."},
            "observedGeneration": {"type": "integer", "format": "int64",
                                   "description": "metadata.generation the status was written for."},
            "runId": {"type": "string", "nullable": True, "description": "Current training run (content hash)."},
            "servingRunId": {"type": "string", "nullable": True, "description": "Run whose model is serving."},
            "evaluationId": {"type": "string", "nullable": True,
                             "description": "Evaluation the spec wants (run + gates): what `ftops plan` compares."},
            "servingId": {"type": "string", "nullable": True,
                          "description": "Serving the spec wants (run + serving block + corpus version)."},
            "ledgerHead": {"type": "object", "required": ["seq", "hash"],
                           "description": "The audit ledger's last record when this status was written: an anchor "
                                          "outside the ledger for `ftops audit verify` (a cut-off tail is caught).",
                           "properties": {"seq": {"type": "integer", "format": "int64"}, "hash": {"type": "string"}}},
            "message": {"type": "string"},
            "conditions": {"type": "array", "items": _condition_schema(),
                           "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        },
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Run", "type": "string", "jsonPath": ".status.runId"},
    {"name": "Gate", "type": "string", "jsonPath": '.status.conditions[?(@.type=="GatePassed")].reason'},
    {"name": "Deployed", "type": "string", "jsonPath": ".status.servingRunId",
     "description": "Run id of the model that is serving"},
    {"name": "Revision", "type": "string", "jsonPath": ".status.observedRevision", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict:
    """The FineTune CustomResourceDefinition (apiextensions.k8s.io/v1)."""
    schema = FineTune.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    spec = structural(schema["properties"]["spec"], defs)
    spec["description"] = ("A read-only mirror of specs/<name>.yaml in git (edits here are reverted). "
                           + spec.get("description", ""))
    root = {
        "type": "object",
        "description": "A FineTune spec mirrored from git, with its status.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status_schema(),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {L.PART_OF: "ftops"},
                     "annotations": {L.GENERATED_BY: "python -m controller.backends.kubernetes_crd"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": "finetune",
                      "shortNames": ["ft"], "categories": ["ftops"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def crd_yaml() -> str:
    import yaml

    header = ("# Generated from controller/spec/ by `python -m controller.backends.kubernetes_crd`; do not edit.\n"
              "# tests/cluster/test_crd.py fails when this file is stale.\n")
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


_STRUCTURAL_FORBIDDEN = {"$ref", "$defs", "definitions", "const", "title", "discriminator", "patternProperties",
                         "propertyNames", "prefixItems", "additionalItems", "dependencies", "id", "$schema"}
_JUNCTOR_FORBIDDEN = {"type", "description", "default", "additionalProperties", "nullable"}


def structural_problems(schema: dict, path: str = "") -> list[str]:
    """Violations of the Kubernetes structural-schema rules (apiextensions v1) in `schema`: every
    node typed unless it preserves unknown fields or is int-or-string; no $ref or keywords
    apiextensions does not know; properties and additionalProperties not together; no type,
    description, default, additionalProperties or nullable under allOf/anyOf/oneOf/not."""
    problems: list[str] = []
    where = path or "<root>"
    for key in schema:
        if key in _STRUCTURAL_FORBIDDEN:
            problems.append(f"{where}: '{key}' is not allowed in a CRD schema")
    if "type" not in schema and not (schema.get("x-kubernetes-preserve-unknown-fields")
                                     or schema.get("x-kubernetes-int-or-string")):
        problems.append(f"{where}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    if schema.get("additionalProperties") is False:
        problems.append(f"{where}: additionalProperties: false is not allowed")
    if isinstance(schema.get("exclusiveMinimum"), (int, float)) and not isinstance(schema["exclusiveMinimum"], bool):
        problems.append(f"{where}: exclusiveMinimum must be a boolean in OpenAPI v3.0")
    if isinstance(schema.get("exclusiveMaximum"), (int, float)) and not isinstance(schema["exclusiveMaximum"], bool):
        problems.append(f"{where}: exclusiveMaximum must be a boolean in OpenAPI v3.0")
    for junctor in ("allOf", "anyOf", "oneOf", "not"):
        for i, sub in enumerate(schema.get(junctor, []) if junctor != "not" else [schema.get("not")] if "not" in schema else []):
            bad = _JUNCTOR_FORBIDDEN & set(sub)
            if bad:
                problems.append(f"{where}.{junctor}[{i}]: {sorted(bad)} not allowed inside a junctor")
    for name, sub in (schema.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        problems += structural_problems(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}{{}}")
    return problems


# ----------------------------------------------------------------------------- CR <-> spec and status (pure)


def _canonical(value: Any) -> Any:
    """JSON as the API server gives it back: 2.0 may come back as 2, so hash integral floats as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(_canonical(spec), sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def desired_cr(finetune: FineTune, namespace: str, source: str | None = None) -> dict:
    """The CR for one spec: the spec exactly as written in git (no defaults filled in), owner and
    labels from its metadata, and the annotations the mirror uses to detect edits."""
    spec = finetune.spec.model_dump(by_alias=True, mode="json", exclude_unset=True)
    labels = dict(finetune.metadata.labels)
    labels.update({MANAGED_BY[0]: MANAGED_BY[1], OWNER_LABEL: finetune.metadata.owner})
    path = source or f"specs/{finetune.name}.yaml"
    annotations = {SOURCE_ANNOTATION: path, HASH_ANNOTATION: spec_hash(spec),
                   READ_ONLY_ANNOTATION: f"mirror of {path} in git; edit it there, changes made here are reverted"}
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": finetune.name, "namespace": namespace, "labels": labels, "annotations": annotations},
            "spec": spec}


def status_to_cr(status: SpecStatus, observed_generation: int | None = None) -> dict:
    """SpecStatus -> the CR's status (its `name` is the CR's own name, so it is left out)."""
    out = status.to_dict()
    out.pop("name", None)
    if observed_generation is not None:
        out["observedGeneration"] = observed_generation
    return out


def status_from_cr(cr: dict) -> SpecStatus:
    data = dict(cr.get("status") or {})
    data["name"] = cr["metadata"]["name"]
    return SpecStatus.from_dict(data)


# ----------------------------------------------------------------------------- the mirror (I/O)


@dataclass
class MirrorResult:
    """What one `sync` did, by "namespace/name"."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class FineTuneMirror:
    """Mirror git's specs into FineTune CRs and write their status.

    `backend`: a KubernetesBackend (its fence guards every write). `namespace_for`: where each
    spec's CR lives (e.g. the owner's tenant namespace from the operator config).
    `namespaces`: where to look for CRs to prune; None lists cluster-wide. `labels` and
    `annotations` go on every CR (e.g. Argo CD's tracking label, so an Application shows the
    FineTunes' health); the mirror's own keys win over them."""

    def __init__(self, backend: "KubernetesBackend", namespace_for: Callable[[FineTune], str],
                 namespaces: Sequence[str] | None = None, labels: dict[str, str] | None = None,
                 annotations: dict[str, str] | None = None) -> None:
        self.k8s = backend
        self.namespace_for = namespace_for
        self.namespaces = list(namespaces) if namespaces else None
        self.labels = dict(labels or {})
        self.annotations = dict(annotations or {})

    # -- HTTP helpers

    def _path(self, namespace: str | None, name: str | None = None, sub: str = "") -> str:
        from controller.backends.kubernetes import resource_path

        return resource_path(API_VERSION, KIND, namespace, name, sub)

    def get(self, namespace: str, name: str) -> dict | None:
        from controller.backends.kubernetes import ApiError

        try:
            return self.k8s._request("GET", self._path(namespace, name))
        except ApiError as err:
            if err.code == 404:
                return None
            raise TemporaryError(f"reading FineTune {namespace}/{name}: {err}") from None

    def _write(self, method: str, path: str, body: Any, what: str, content_type: str = "application/json") -> dict | None:
        """A write; None on 409 (the caller re-reads). 404 on a namespace is the operator's to fix."""
        from controller.backends.kubernetes import ApiError

        try:
            return self.k8s._request(method, path, body=body, content_type=content_type)
        except ApiError as err:
            if err.code == 409:
                return None
            if err.code == 404 and err.message.startswith('namespaces "'):
                raise PermanentError(f"{what}: namespace missing ({err.message}); the operator creates tenant "
                                     "namespaces (tenancy in the operator config)") from None
            if err.code == 404 and method != "POST":
                return None
            if err.code == 404:
                raise PermanentError(f"{what}: the FineTune CRD is not installed ({err.message}); install the chart "
                                     "(its crds/) first") from None
            if err.code >= 500 or err.code == 429:
                raise TemporaryError(f"{what}: {err}") from None
            raise PermanentError(f"{what}: {err}") from None

    # -- sync

    def sync(self, finetunes: Iterable[FineTune | tuple[FineTune, str]], prune: bool = True) -> MirrorResult:
        """Make the CRs match git: create, update, revert edits, and (with `prune`) delete CRs
        whose spec is gone from git. Items are FineTunes or (FineTune, source path) pairs."""
        result = MirrorResult()
        wanted: set[tuple[str, str]] = set()
        for item in finetunes:
            ft, source = item if isinstance(item, tuple) else (item, None)
            desired = desired_cr(ft, self.namespace_for(ft), source)
            meta = desired["metadata"]
            meta["labels"] = {**self.labels, **meta["labels"]}
            meta["annotations"] = {**self.annotations, **meta["annotations"]}
            wanted.add((meta["namespace"], meta["name"]))
            self._sync_one(desired, result)
        if prune:
            self._prune(wanted, result)
        return result

    def _sync_one(self, desired: dict, result: MirrorResult) -> None:
        ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        key = f"{ns}/{name}"
        for _ in range(5):
            current = self.get(ns, name)
            if current is None:
                if self._write("POST", self._path(ns), desired, f"creating FineTune {key}") is not None:
                    result.created.append(key)
                    return
                continue  # created meanwhile: re-read
            verdict = self._compare(current, desired)
            if verdict == "unchanged":
                result.unchanged.append(key)
                return
            body = copy.deepcopy(current)
            body.pop("status", None)
            cmeta = body["metadata"]
            cmeta.pop("managedFields", None)
            cmeta["labels"] = {**(cmeta.get("labels") or {}), **desired["metadata"]["labels"]}
            cmeta["annotations"] = {**(cmeta.get("annotations") or {}), **desired["metadata"]["annotations"]}
            body["spec"] = desired["spec"]
            if self._write("PUT", self._path(ns, name), body, f"updating FineTune {key}") is None:
                continue  # changed meanwhile (or deleted): re-read
            if verdict == "edited":
                result.reverted.append(key)
                self._event(current, "SpecEditReverted",
                            f"spec edits are reverted: FineTune is a read-only mirror of "
                            f"{desired['metadata']['annotations'][SOURCE_ANNOTATION]} in git; change it there")
            else:
                result.updated.append(key)
            return
        raise TemporaryError(f"FineTune {key} kept changing while the mirror updated it; will retry")

    @staticmethod
    def _compare(current: dict, desired: dict) -> str:
        """unchanged | edited (someone changed the CR) | changed (git changed)."""
        meta = current.get("metadata") or {}
        ann, labels = meta.get("annotations") or {}, meta.get("labels") or {}
        ours_ok = (all(ann.get(k) == v for k, v in desired["metadata"]["annotations"].items())
                   and all(labels.get(k) == v for k, v in desired["metadata"]["labels"].items()))
        current_hash = spec_hash(current.get("spec") or {})
        if current_hash == desired["metadata"]["annotations"][HASH_ANNOTATION] and ours_ok:
            return "unchanged"
        if current_hash != ann.get(HASH_ANNOTATION):
            return "edited"
        return "changed"

    def _prune(self, wanted: set[tuple[str, str]], result: MirrorResult) -> None:
        selector = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"
        namespaces: list[str | None] = list(self.namespaces) if self.namespaces else [None]
        for ns in namespaces:
            listed = self.k8s._request("GET", self._path(ns), {"labelSelector": selector})
            for item in listed.get("items", []):
                meta = item["metadata"]
                if (meta.get("namespace"), meta["name"]) in wanted:
                    continue
                options = {"kind": "DeleteOptions", "apiVersion": "v1",
                           "preconditions": {"uid": meta["uid"]}}
                key = f"{meta.get('namespace')}/{meta['name']}"
                if self._write("DELETE", self._path(meta.get("namespace"), meta["name"]), options,
                               f"deleting FineTune {key}") is not None:
                    result.deleted.append(key)

    def record_event(self, namespace: str, name: str, reason: str, message: str, type_: str = "Normal") -> None:
        """An Event on the FineTune CR (a condition changed, a run failed its gate...), so
        `kubectl describe finetune` and `kubectl get events` tell the story."""
        cr = self.get(namespace, name)
        if cr is not None:
            self._event(cr, reason, message, type_)

    def _event(self, cr: dict, reason: str, message: str, type_: str = "Warning") -> None:
        """An Event on the CR (Warning by default: an edit was reverted)."""
        from controller.backends.kubernetes import resource_path
        from controller.status import now

        meta = cr["metadata"]
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message[:1024], "type": type_,
            "source": {"component": "ftops-controller"},
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
        }
        try:
            self._write("POST", resource_path("v1", "Event", meta["namespace"]), event, "recording an Event")
        except PermanentError:
            pass  # an Event is a courtesy; the revert itself happened

    # -- status

    def write_status(self, namespace: str, name: str, status: SpecStatus) -> dict:
        """Write `status` through the status subresource (a merge patch: keys set to None are
        removed). observedGeneration is the generation of the CR as read just before."""
        current = self.get(namespace, name)
        if current is None:
            raise TemporaryError(f"FineTune {namespace}/{name} does not exist yet; sync the mirror first")
        body = {"status": status_to_cr(status, current["metadata"].get("generation"))}
        written = self._write("PATCH", self._path(namespace, name, "status"), body,
                              f"writing status of FineTune {namespace}/{name}", "application/merge-patch+json")
        if written is None:
            raise TemporaryError(f"FineTune {namespace}/{name} vanished while its status was written")
        return written

    def read_status(self, namespace: str, name: str) -> SpecStatus | None:
        current = self.get(namespace, name)
        return None if current is None else status_from_cr(current)

    # -- watch

    def watch_edits(self, finetunes: Callable[[], Iterable[FineTune | tuple[FineTune, str]]], stop: threading.Event,
                    timeout_seconds: int = 30) -> None:
        """Revert edits as they happen instead of at the next sync: watch FineTunes and re-sync
        whenever one's spec no longer matches the hash the mirror wrote. Run it in a thread."""
        rv: str | None = None
        while not stop.is_set():
            try:
                if rv is None:
                    self.sync(finetunes(), prune=False)
                    rv = self.k8s._request("GET", self._path(None if not self.namespaces else self.namespaces[0]),
                                           {"limit": "1"})["metadata"]["resourceVersion"]
                rv = self._watch_round(rv, finetunes, timeout_seconds)
            except TemporaryError:
                stop.wait(2)

    def _watch_round(self, rv: str, finetunes: Callable[[], Iterable], timeout_seconds: int) -> str | None:
        ns = self.namespaces[0] if self.namespaces and len(self.namespaces) == 1 else None
        resp = self.k8s._request("GET", self._path(ns), {"watch": "1", "resourceVersion": rv,
                                                         "labelSelector": f"{MANAGED_BY[0]}={MANAGED_BY[1]}",
                                                         "timeoutSeconds": str(timeout_seconds)},
                                 timeout=timeout_seconds + 10, stream=True)
        from controller.backends.kubernetes import watch_events

        for event in watch_events(resp):
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                return None  # 410 Gone or another error: relist (sync) and watch again
            rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
            ann = (obj.get("metadata") or {}).get("annotations") or {}
            if event.get("type") == "MODIFIED" and spec_hash(obj.get("spec") or {}) != ann.get(HASH_ANNOTATION):
                self.sync(finetunes(), prune=False)
        return rv


def write_crd_file(path: Path = CRD_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(crd_yaml())
    return path


if __name__ == "__main__":  # python -m controller.backends.kubernetes_crd
    print(write_crd_file())


__all__ = [
    "CRD_FILE", "FineTuneMirror", "MirrorResult", "crd", "crd_yaml", "desired_cr", "spec_hash", "status_from_cr",
    "status_schema", "status_to_cr", "structural", "structural_problems", "write_crd_file",
]
