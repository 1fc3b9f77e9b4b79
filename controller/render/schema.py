"""Validate manifests against the real Kubernetes OpenAPI schemas (kubernetes-validate, strict,
the oldest Kubernetes we support) plus the enum, name and reference checks the JSON schemas do
not carry. A manifest the API server would reject is a RenderError here, before anything is
applied."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from controller.render.errors import RenderError
from controller.spec.base import RFC1123_LABEL

KUBERNETES_VERSION = "1.30.0"
"""Schemas of the oldest Kubernetes we support: a manifest valid here is valid on every later one."""

RFC1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


@dataclass
class _Schemas:
    version: str = KUBERNETES_VERSION
    validators: dict = field(default_factory=dict)
    definitions: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_SCHEMAS = _Schemas()


def _schema_dir() -> str:
    return f"kubernetes-json-schema/v{_SCHEMAS.version}-local-strict"


def _definitions():
    from kubernetes_validate import utils

    if _SCHEMAS.definitions is None:
        _SCHEMAS.definitions = utils.schema_contents(f"{_schema_dir()}/_definitions.json", _SCHEMAS.version)
    return _SCHEMAS.definitions


def _validator_for(key: str, schema_file: str | None = None, ref: str | None = None):
    """A compiled jsonschema validator over kubernetes-validate's strict schemas, cached: loading
    the 1.2 MB definitions per call would cost ~10 ms a manifest."""
    with _SCHEMAS.lock:
        cached = _SCHEMAS.validators.get(key)
        if cached is not None:
            return cached
        import jsonschema
        from kubernetes_validate import utils
        from referencing import Registry, Resource

        definitions = _definitions()
        if schema_file is not None:
            try:
                schema = utils.schema_contents(f"{_schema_dir()}/{schema_file}", _SCHEMAS.version)
            except FileNotFoundError:
                raise RenderError(f"no Kubernetes {_SCHEMAS.version} schema for {key}") from None
        else:
            schema = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": f"https://kubernetes.io/api/ftops/{key}",
                "$ref": f"/api/_definitions.json#/$defs/{ref}",
            }
        registry = Resource.from_contents(definitions) @ Registry()
        registry = Resource.from_contents(schema) @ registry
        validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
        _SCHEMAS.validators[key] = validator
        return validator


_BUILTIN = {
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
    ("batch/v1", "Job"): "job-batch-v1.json",
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
}


def _schema_errors(doc: Any, key: str, schema_file: str | None = None, ref: str | None = None, where: str = "") -> list[str]:
    """Schema problems of `doc`. The compiled checker answers the common case (valid) fast; any
    doubt is settled, and the messages written, by jsonschema itself over the same schemas."""
    fast = _fast_checker(key, schema_file, ref)
    if fast(doc):
        return []
    validator = _validator_for(key, schema_file, ref)
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path)
        problems.append(f"{where}{'.' if where and path else ''}{path}: {err.message}")
    return problems


_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_fast_cache: dict[str, Any] = {}


def _fast_checker(key: str, schema_file: str | None, ref: str | None):
    """Compile the schema into nested closures answering only "valid or not".

    kubernetes-validate's schemas use a small keyword set (type, properties,
    additionalProperties, required, items, enum, oneOf, $ref into one definitions file), so a
    closure per schema node is enough, and ~10x faster than jsonschema's generic walk. It may
    only ever say "invalid" more often than jsonschema, never less: an unknown keyword makes the
    node defer to jsonschema (always "invalid" here, so the slow path decides)."""
    cached = _fast_cache.get(key)
    if cached is not None:
        return cached
    validator = _validator_for(key, schema_file, ref)
    defs = _definitions()["$defs"]
    compiled: dict[str, Any] = {}

    def by_ref(target: str):
        name = target.rsplit("/", 1)[-1]
        if name not in compiled:
            compiled[name] = None  # recursion guard: filled in below
            fn = compile_node(defs[name])
            compiled[name] = fn
        return lambda v: compiled[name](v)

    known = {"description", "type", "$ref", "properties", "additionalProperties", "required", "items", "enum",
             "oneOf", "format", "$schema", "$id", "x-kubernetes-group-version-kind", "x-kubernetes-list-type",
             "x-kubernetes-list-map-keys", "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key",
             "x-kubernetes-map-type", "x-kubernetes-unions", "default", "x-kubernetes-int-or-string",
             "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource"}

    def compile_node(node: dict):
        if not isinstance(node, dict) or set(node) - known:
            return lambda v: False
        checks = []
        if "$ref" in node:
            checks.append(by_ref(node["$ref"]))
        if "type" in node:
            names = node["type"] if isinstance(node["type"], list) else [node["type"]]
            preds = [_TYPES[t] for t in names]
            checks.append(lambda v, preds=preds: any(p(v) for p in preds))
        if "enum" in node:
            allowed = node["enum"]
            checks.append(lambda v, allowed=allowed: any(v == a and type(v) is type(a) for a in allowed))
        if "oneOf" in node:
            alts = [compile_node(a) for a in node["oneOf"]]
            checks.append(lambda v, alts=alts: sum(1 for a in alts if a(v)) == 1)
        props = {k: compile_node(v) for k, v in node.get("properties", {}).items()}
        extra = node.get("additionalProperties", True)
        extra_fn = None if extra is True else (lambda v: False) if extra is False else compile_node(extra)
        required = tuple(node.get("required", ()))
        if props or extra_fn is not None or required:
            def obj(v, props=props, extra_fn=extra_fn, required=required):
                if not isinstance(v, dict):
                    return True  # not an object: `type` decides, as in JSON Schema
                for r in required:
                    if r not in v:
                        return False
                for k, item in v.items():
                    fn = props.get(k)
                    if fn is not None:
                        if not fn(item):
                            return False
                    elif extra_fn is not None and not extra_fn(item):
                        return False
                return True
            checks.append(obj)
        if "items" in node:
            item_fn = compile_node(node["items"])
            checks.append(lambda v, item_fn=item_fn: not isinstance(v, list) or all(item_fn(i) for i in v))
        if not checks:
            return lambda v: True
        if len(checks) == 1:
            return checks[0]
        return lambda v, checks=tuple(checks): all(c(v) for c in checks)

    fast = compile_node(validator.schema)
    _fast_cache[key] = fast
    return fast


CRD_MODELS = {
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "JobsetV1alpha2JobSet",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "TrainerV1alpha1TrainJob",
    ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): "TrainerV1alpha1ClusterTrainingRuntime",
}
"""The CRD kinds ftops renders, validated by the projects' own published API models
(kubeflow-trainer-api, generated from Trainer v2's and JobSet's OpenAPI), not a field list of ours."""


def _dropped(original: Any, kept: Any, path: str) -> list[str]:
    """Keys of `original` that a model round-trip lost: fields the schema does not have."""
    out: list[str] = []
    if isinstance(original, dict):
        kept = kept if isinstance(kept, dict) else {}
        for key, value in original.items():
            here = f"{path}.{key}" if path else key
            if key not in kept:
                if value not in (None, {}, []):
                    out.append(f"{here}: unknown field")
            else:
                out += _dropped(value, kept[key], here)
    elif isinstance(original, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(original, kept)):
            out += _dropped(a, b, f"{path}[{i}]")
    return out


def _crd_errors(doc: dict) -> list[str]:
    """Problems of a JobSet / TrainJob / ClusterTrainingRuntime: parsed by its published model
    (types, required fields, enums the model carries), every field we wrote must survive the
    round-trip (an unknown field is an error, as with a strict API server), and the pod and Job
    templates inside are checked against the real Kubernetes schemas as well."""
    import kubeflow_trainer_api.models as models
    from pydantic import ValidationError

    model = getattr(models, CRD_MODELS[(doc.get("apiVersion"), doc.get("kind"))])
    try:
        parsed = model.from_dict(doc)
    except ValidationError as exc:
        return [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)]
    problems = _dropped(doc, parsed.to_dict() if parsed is not None else {}, "")
    spec = doc.get("spec") or {}
    if doc.get("kind") == "JobSet":
        for i, rj in enumerate(spec.get("replicatedJobs") or []):
            problems += _schema_errors(rj.get("template"), "JobTemplateSpec", ref="io.k8s.api.batch.v1.JobTemplateSpec",
                                       where=f"spec.replicatedJobs[{i}].template")
        for i, rule in enumerate((spec.get("failurePolicy") or {}).get("rules") or []):
            if rule.get("action") not in ("FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"):
                problems.append(f"spec.failurePolicy.rules[{i}].action: must be FailJobSet, RestartJobSet or "
                                "RestartJobSetAndIgnoreMaxRestarts")
    if doc.get("kind") == "ClusterTrainingRuntime":
        for i, rj in enumerate(((spec.get("template") or {}).get("spec") or {}).get("replicatedJobs") or []):
            problems += _schema_errors(rj.get("template"), "JobTemplateSpec", ref="io.k8s.api.batch.v1.JobTemplateSpec",
                                       where=f"spec.template.spec.replicatedJobs[{i}].template")
    return problems


_ENUMS = {
    "restartPolicy": {"Always", "OnFailure", "Never", "ExitCode"},
    "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "completionMode": {"NonIndexed", "Indexed"},
    "protocol": {"TCP", "UDP", "SCTP"},
    "dnsPolicy": {"ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"},
    "medium": {"", "Memory", "HugePages"},
    "action": {"Ignore", "FailJob", "FailIndex", "Count"},
    "effect": {"NoSchedule", "PreferNoSchedule", "NoExecute"},
    "accessModes": {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"},
}


def _walk(node: Any, path: str, problems: list[str], ctx: dict) -> None:
    """Checks the schemas do not express: enums, name formats, quantities, env names."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            if key in _ENUMS and (key != "action" or "podFailurePolicy" in path):
                values = value if isinstance(value, list) else [value]
                for v in values:
                    if isinstance(v, str) and v not in _ENUMS[key]:
                        problems.append(f"{here}: '{v}' is not one of {sorted(_ENUMS[key])}")
            if key == "operator" and isinstance(value, str):
                allowed = {"In", "NotIn"} if path.endswith("onExitCodes") else {"Exists", "Equal", "In", "NotIn",
                                                                                   "DoesNotExist", "Gt", "Lt", "All", "Any"}
                if value not in allowed:
                    problems.append(f"{here}: '{value}' is not one of {sorted(allowed)}")
            if key in ("labels", "matchLabels", "selector", "nodeSelector") and isinstance(value, dict) and all(
                isinstance(v, str) for v in value.values()
            ):
                for lk, lv in value.items():
                    if not _label_key_ok(lk):
                        problems.append(f"{here}: label key '{lk}' is not a valid qualified name")
                    if len(lv) > 63 or not LABEL_VALUE.match(lv):
                        problems.append(f"{here}.{lk}: label value '{lv}' is not valid (<= 63 chars, alphanumeric ends)")
            if key == "annotations" and isinstance(value, dict):
                for ak in value:
                    if not _label_key_ok(ak):
                        problems.append(f"{here}: annotation key '{ak}' is not a valid qualified name")
            if key in ("containers", "initContainers") and isinstance(value, list):
                for i, c in enumerate(value):
                    name = c.get("name", "") if isinstance(c, dict) else ""
                    if not RFC1123_LABEL.match(name) or len(name) > 63:
                        problems.append(f"{here}[{i}].name: '{name}' is not an RFC 1123 label")
                    for j, e in enumerate(c.get("env", []) if isinstance(c, dict) else []):
                        if not ENV_NAME.match(str(e.get("name", ""))):
                            problems.append(f"{here}[{i}].env[{j}].name: '{e.get('name')}' is not a valid variable name")
                    mounts = {m.get("name") for m in c.get("volumeMounts", [])} if isinstance(c, dict) else set()
                    ctx.setdefault("mounts", []).append((f"{here}[{i}]", mounts))
                    for k, p in enumerate(c.get("ports", []) if isinstance(c, dict) else []):
                        if "name" in p and (len(p["name"]) > 15 or not IANA_SVC_NAME.match(p["name"])):
                            problems.append(f"{here}[{i}].ports[{k}].name: '{p['name']}' is not an IANA service name (<= 15)")
            if key == "volumes" and isinstance(value, list):
                ctx.setdefault("volumes", []).append({v.get("name") for v in value if isinstance(v, dict)})
                for i, v in enumerate(value):
                    if not RFC1123_LABEL.match(str(v.get("name", ""))):
                        problems.append(f"{here}[{i}].name: '{v.get('name')}' is not an RFC 1123 label")
            if key in ("claimName",) or (key == "name" and path.endswith(("secretKeyRef", "configMap", "configMapKeyRef"))):
                if not isinstance(value, str) or not RFC1123_SUBDOMAIN.match(value) or len(value) > 253:
                    problems.append(f"{here}: '{value}' is not a valid object name")
            if key in ("requests", "limits") and isinstance(value, dict) and path.endswith("resources"):
                for rk, rv in value.items():
                    if not QUANTITY.match(str(rv)):
                        problems.append(f"{here}.{rk}: '{rv}' is not a resource quantity")
            if key == "sizeLimit" and not QUANTITY.match(str(value)):
                problems.append(f"{here}: '{value}' is not a resource quantity")
            _walk(value, here, problems, ctx)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", problems, ctx)


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not RFC1123_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(LABEL_NAME.match(name))


NAME_LIMITS = {"Service": 63, "Job": 63, "Deployment": 63, "TrainJob": 63, "JobSet": 63, "ConfigMap": 253,
               "PersistentVolumeClaim": 253, "ClusterTrainingRuntime": 253}


def manifest_problems(doc: Any, namespace: str | None = None) -> list[str]:
    """Every reason the API server would refuse `doc` (as far as schemas and our checks know)."""
    if not isinstance(doc, dict):
        return ["manifest is not a mapping"]
    kind, api = doc.get("kind"), doc.get("apiVersion")
    meta = doc.get("metadata") or {}
    where = f"{kind}/{meta.get('name')}"
    problems: list[str] = []
    schema = _BUILTIN.get((api, kind))
    if schema is not None:
        problems += _schema_errors(doc, f"{api}/{kind}", schema_file=schema)
    elif (api, kind) in CRD_MODELS:
        problems += _schema_errors(meta, "ObjectMeta", ref="io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                                   where="metadata")
        problems += _crd_errors(doc)
    elif (api, kind) == ("serving.kserve.io/v1beta1", "InferenceService"):
        from controller.render.kserve import inference_service_problems

        problems += inference_service_problems(doc)
    else:
        problems.append(f"{api} {kind} is not a kind ftops renders")
    name = str(meta.get("name", ""))
    limit = NAME_LIMITS.get(kind, 63)
    pattern = RFC1123_SUBDOMAIN if limit == 253 else RFC1123_LABEL
    if not pattern.match(name) or len(name) > limit:
        problems.append(f"metadata.name: '{name}' must be an RFC 1123 {'subdomain' if limit == 253 else 'label'} of at most {limit} characters")
    if namespace is not None and meta.get("namespace") != namespace:
        problems.append(f"metadata.namespace: '{meta.get('namespace')}' is not the owner's namespace '{namespace}'")
    ctx: dict = {}
    _walk(doc, "", problems, ctx)
    all_volumes = set().union(*ctx.get("volumes", [set()]))
    for cwhere, mounts in ctx.get("mounts", []):
        for m in sorted(mounts - all_volumes, key=str):
            problems.append(f"{cwhere}.volumeMounts: '{m}' names no volume of the pod")
    return [f"{where}: {p}" for p in problems]


def validate_manifests(manifests: Sequence[dict], namespace: str | None = None) -> None:
    """Raise RenderError listing every problem of every manifest (none: returns None).

    Cross-object checks too: the PVC a pod mounts must be rendered alongside (or be the
    namespace's model cache claim), so a spec never mounts someone else's claim."""
    problems: list[str] = []
    names = {(m.get("kind"), (m.get("metadata") or {}).get("name")) for m in manifests if isinstance(m, dict)}
    for m in manifests:
        problems += manifest_problems(m, namespace)
    for m in manifests:
        if not isinstance(m, dict):
            continue
        for claim in _find_values(m, "claimName"):
            if ("PersistentVolumeClaim", claim) not in names and not _is_model_cache_claim(m, claim):
                problems.append(f"{m.get('kind')}/{m['metadata'].get('name')}: mounts PVC '{claim}' that this run does not own")
    if problems:
        raise RenderError("rendered manifests are invalid:\n  " + "\n  ".join(problems))


def _is_model_cache_claim(manifest: dict, claim: str) -> bool:
    for vols in _find_values(manifest, "volumes"):
        for v in vols:
            if v.get("name") == "model-cache" and v.get("persistentVolumeClaim", {}).get("claimName") == claim:
                return True
    return False


def _find_values(node: Any, key: str) -> list:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found += _find_values(v, key)
    elif isinstance(node, list):
        for item in node:
            found += _find_values(item, key)
    return found
