"""The manifest diff a reviewer reads on a pull request (pure): objects paired by role, only the
fields that change.

Object names carry the run id (`triage-676fb786607b-train`), so a diff by name shows every
object of a retrained spec deleted and added again, and a one-line change (`epochs: 3 -> 5`)
becomes hundreds of lines. Here each object is paired with its counterpart by *role* (the
training workload, the run config, the checkpoint volume, the evaluation Job and its eval.json,
the serving Deployment, ...), the identities that objects repeat (run id, evaluation id, data md5)
are said once at the top instead of in every name, label and path, and what is left is compared
field by field. JSON held in a string (the run.json and eval.json ConfigMaps) is compared field by
field too. The full rendered YAML at head is kept for a `<details>` block.

The evaluation objects are rendered by the cluster backend's renderer (`render_evaluation`, with
the eval.json the controller writes) and shown only when the evaluation id changes: an unchanged
evaluation is never run again, so a change that leaves it alone (maxHours, labels) applies nothing
there.

The git commit is not a change: the reconciler keeps the commit that first asked for a run, so
both sides are rendered with one lineage commit and a commit that changes nothing else renders
nothing new.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from controller import labels as L
from controller.catalog import OperatorConfig
from controller.evalconfig import EvalConfig, EvalData, EvalServing
from controller.identity import eval_id, serving_config, serving_config_sha256
from controller.render import (
    EvaluationInput, RenderError, ServingInput, input_for, render, render_evaluation, render_serving, to_yaml,
)
from controller.source import SpecAtRev
from controller.spec.finetune import FineTune

ObjectChange = Literal["added", "removed", "changed"]
JsonValue = Any
"""A value as it appears in a rendered manifest (the manifests are JSON-shaped dicts)."""

RUN = "<run>"
EVAL = "<eval>"
DATA = "<data-md5>"
_IDENTITIES = (("run", "run id", RUN), ("eval", "evaluation id", EVAL), ("data", "data md5", DATA))
"""(key in the rendered ids, what the plan calls it, the placeholder shown in its place)."""

_ROLES = {
    ("training", "ConfigMap", "run"): "run config (run.json)",
    ("training", "PersistentVolumeClaim", "ckpt"): "checkpoint volume",
    ("training", "Service", "workers"): "training workers Service",
    ("evaluation", "ConfigMap", "evalcfg"): "evaluation config (eval.json)",
    ("serving", "ConfigMap", "serve"): "serving config (serve.json)",
    ("serving", "Deployment", "serve"): "serving Deployment",
    ("serving", "Service", "serve"): "serving Service",
}
_WORKLOADS = {"Job", "JobSet", "PyTorchJob"}


@dataclass(frozen=True)
class FieldDelta:
    path: str
    base: JsonValue
    head: JsonValue

    def to_dict(self) -> dict[str, JsonValue]:
        return {"field": self.path, "base": self.base, "head": self.head}


@dataclass(frozen=True)
class ObjectDelta:
    role: str
    change: ObjectChange
    kind: str
    base_name: str | None
    head_name: str | None
    fields: tuple[FieldDelta, ...] = ()

    def to_dict(self) -> dict[str, JsonValue]:
        return {"role": self.role, "change": self.change, "kind": self.kind, "baseName": self.base_name,
                "headName": self.head_name, "fields": [f.to_dict() for f in self.fields]}


@dataclass(frozen=True)
class ManifestDiff:
    """What `kubectl apply` would change for one spec, object by object."""

    objects: tuple[ObjectDelta, ...] = ()
    identities: tuple[FieldDelta, ...] = ()
    """The identities every object repeats (run id, data md5), when they change: said once."""
    head_yaml: str = ""
    """The full render at head of every object that is added or changes (what `kubectl apply`
    sends); empty when nothing at head changes or head does not render."""
    error: str | None = None
    """Why head does not render (the spec would stall on merge)."""
    objects_base: int = 0
    objects_head: int = 0
    objects_rendered: int = 0
    """How many objects `head_yaml` holds."""

    @property
    def changed(self) -> bool:
        return bool(self.objects)

    def to_dict(self) -> dict[str, JsonValue]:
        return {"error": self.error, "identities": [f.to_dict() for f in self.identities],
                "objects": [o.to_dict() for o in self.objects], "objectsBase": self.objects_base,
                "objectsHead": self.objects_head, "fullRenderAtHead": self.head_yaml or None}


# ----------------------------------------------------------------------------- pairing


def role_of(manifest: dict[str, JsonValue]) -> str:
    """What an object is for, independent of the run it belongs to."""
    meta = manifest.get("metadata", {})
    labels = meta.get("labels") or {}
    component = labels.get(L.COMPONENT, "")
    kind = str(manifest.get("kind", ""))
    name = str(meta.get("name", ""))
    run = str(labels.get(L.RUN_ID, ""))[:12]
    suffix = name.split(f"-{run}-", 1)[1] if run and f"-{run}-" in name else name.rsplit("-", 1)[-1]
    if component == "training" and kind in _WORKLOADS:
        return "training workload"
    if component == "evaluation" and kind in _WORKLOADS:
        return "evaluation Job"
    return _ROLES.get((component, kind, suffix), f"{component or 'other'} {kind} {suffix}".strip())


def _substitutions(base_ids: dict[str, str | None], head_ids: dict[str, str | None]) -> list[tuple[str, str]]:
    """(value, placeholder), longest first: a full run or evaluation id before its 12-character
    prefix (what object names carry)."""
    out: list[tuple[str, str]] = []
    for ids in (base_ids, head_ids):
        for key, _, placeholder in _IDENTITIES:
            value = ids.get(key)
            if value:
                out.append((value, placeholder))
                if key in ("run", "eval") and len(value) > 12:
                    out.append((value[:12], placeholder))
    return sorted(set(out), key=lambda item: -len(item[0]))


def _anonymise(node: JsonValue, subs: list[tuple[str, str]]) -> JsonValue:
    if isinstance(node, str):
        for value, placeholder in subs:
            if value in node:
                node = node.replace(value, placeholder)
        return node
    if isinstance(node, dict):
        return {_anonymise(k, subs): _anonymise(v, subs) for k, v in node.items()}
    if isinstance(node, list):
        return [_anonymise(v, subs) for v in node]
    return node


def flatten(node: JsonValue, prefix: str = "") -> dict[str, JsonValue]:
    """Leaf paths of a manifest. Lists of named items (containers, env, volumes, ports) are keyed
    by name, so inserting one item does not shift every path after it; a string holding a JSON
    object (run.json in a ConfigMap) is opened up."""
    if isinstance(node, str) and node[:1] == "{":
        try:
            parsed = json.loads(node)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return flatten(parsed, prefix)
    if isinstance(node, dict):
        if not node:
            return {prefix: {}}
        out: dict[str, JsonValue] = {}
        for key, value in node.items():
            part = key if _plain_key(key) else json.dumps(key)
            out.update(flatten(value, f"{prefix}.{part}" if prefix and _plain_key(key) else
                               f"{prefix}[{part}]" if prefix else part))
        return out
    if isinstance(node, list):
        if not node:
            return {prefix: []}
        named = all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in node)
        out = {}
        for index, value in enumerate(node):
            out.update(flatten(value, f"{prefix}[{value['name'] if named else index}]"))
        return out
    return {prefix: node}


def _plain_key(key: str) -> bool:
    return key.replace("_", "").replace("-", "").isalnum()


def diff_objects(base: Sequence[dict[str, JsonValue]], head: Sequence[dict[str, JsonValue]],
                 base_ids: dict[str, str | None], head_ids: dict[str, str | None]) -> tuple[ObjectDelta, ...]:
    """Pair `base` and `head` objects by role and list what changes, role by role in apply order."""
    subs = _substitutions(base_ids, head_ids)
    old = {role_of(m): m for m in base}
    new = {role_of(m): m for m in head}
    order = [role_of(m) for m in head] + [r for r in (role_of(m) for m in base) if r not in new]
    out: list[ObjectDelta] = []
    for role in dict.fromkeys(order):
        a, b = old.get(role), new.get(role)
        if a is None and b is not None:
            out.append(ObjectDelta(role, "added", str(b.get("kind")), None, _name(b)))
            continue
        if b is None and a is not None:
            out.append(ObjectDelta(role, "removed", str(a.get("kind")), _name(a), None))
            continue
        assert a is not None and b is not None
        fa, fb = flatten(_anonymise(a, subs)), flatten(_anonymise(b, subs))
        fields = tuple(FieldDelta(path, fa.get(path), fb.get(path)) for path in _ordered(fa, fb) if fa.get(path) != fb.get(path))
        if fields:
            out.append(ObjectDelta(role, "changed", str(b.get("kind")), _name(a), _name(b), fields))
    return tuple(out)


def _ordered(a: dict[str, JsonValue], b: dict[str, JsonValue]) -> list[str]:
    """Head's field order, then fields only base has."""
    return list(dict.fromkeys([*b, *a]))


def _name(manifest: dict[str, JsonValue]) -> str:
    return str(manifest.get("metadata", {}).get("name", ""))


# ----------------------------------------------------------------------------- one spec


def _render(state: SpecAtRev | None, sha: str | None, operator: OperatorConfig,
            corpus_version: str | None = None) -> tuple[list[dict], dict[str, str | None]]:
    """Every object ftops would apply for the spec at `sha`: the training manifests of its run,
    its evaluation's (eval.json and the Job) and, when it serves, the serving ones. ([], {}) when
    the spec is absent or cannot have a run."""
    if state is None or sha is None or state.loaded.spec is None or state.data is None or not state.data.known:
        return [], {}
    spec = state.loaded.spec
    if spec.spec.method.type == "api":
        return [], {}  # a provider's job and its hosted model: ftops applies no Kubernetes objects for them
    md5 = state.data.md5 or ""
    inp = input_for(spec, md5, sha, operator, replay_md5=state.replay.md5 if state.replay is not None else None)
    manifests = list(render(inp))
    config = _eval_config(spec, inp.run_id, operator, corpus_version)
    manifests += render_evaluation(EvaluationInput(finetune=spec, config=config, data_md5=md5, git_commit=sha,
                                                   operator=operator))
    if spec.spec.serving is not None:
        manifests += render_serving(ServingInput(finetune=spec, run_id=inp.run_id, data_md5=md5, git_commit=sha,
                                                 operator=operator))
    return manifests, {"run": inp.run_id, "eval": config.eval_id, "data": md5, "commit": sha}


def _eval_config(spec: FineTune, run_id: str, operator: OperatorConfig, corpus_version: str | None) -> EvalConfig:
    """eval.json as the controller writes it for this run (controller.reconcile.evaluate.request):
    the same evaluation id and served configuration. The paths are the controller's own; the
    render points them at the pod's volumes, so placeholders are enough here."""
    served = serving_config_sha256(serving_config(spec, corpus_version))
    serving = spec.spec.serving
    return EvalConfig(
        eval_id=eval_id(run_id, spec, corpus_version), run_id=run_id, spec_name=spec.name,
        run_uri=f"{operator.cluster.artifact_store.uri.rstrip('/')}/{spec.name}/{run_id}", finetune=spec,
        data=EvalData(test="test.jsonl", train="train.jsonl"), repo_root=".",
        serving=EvalServing(corpus=serving.corpus if serving and serving.corpus else None, corpus_version=corpus_version,
                            config_sha256=served) if served else None,
    )


def _without_evaluation(manifests: list[dict]) -> list[dict]:
    return [m for m in manifests if (m.get("metadata", {}).get("labels") or {}).get(L.COMPONENT) != "evaluation"]


def for_spec(base: SpecAtRev | None, head: SpecAtRev | None, base_sha: str | None, head_sha: str | None,
             operator: OperatorConfig, corpus_versions: tuple[str | None, str | None] = (None, None)) -> ManifestDiff:
    """The manifest diff of one spec between two commits (either side may be absent). Both sides
    render with the same lineage commit (head's): what is derived from the commit (its label,
    a base model named by commit before it is published) is not a change. `corpus_versions`:
    the served corpus's version at base and head (part of the evaluation id)."""
    commit = head_sha or base_sha
    try:
        before, base_ids = _render(base, commit if base_sha else None, operator, corpus_versions[0])
    except RenderError:
        before, base_ids = [], {}  # base did not render either: everything at head is new
    try:
        after, head_ids = _render(head, commit if head_sha else None, operator, corpus_versions[1])
    except RenderError as exc:
        return ManifestDiff(error=str(exc), objects_base=len(before))
    if base_ids and head_ids and base_ids.get("eval") == head_ids.get("eval"):
        before, after = _without_evaluation(before), _without_evaluation(after)  # not evaluated again
    identities = tuple(
        FieldDelta(label, base_ids.get(key), head_ids.get(key))
        for key, label, _ in _IDENTITIES
        if base_ids and head_ids and base_ids.get(key) != head_ids.get(key)
    )
    objects = diff_objects(before, after, base_ids, head_ids)
    touched = {o.role for o in objects if o.change != "removed"}
    shown = [m for m in after if role_of(m) in touched]
    return ManifestDiff(objects, identities, to_yaml(shown) if shown else "", None, len(before), len(after), len(shown))


# ----------------------------------------------------------------------------- markdown


def to_markdown(diff: ManifestDiff, *, full_render: bool = True, max_fields: int = 40) -> str:
    """The diff as a pull-request comment section; the full render behind `<details>`."""
    if diff.error:
        return f"❌ head does not render: {diff.error}"
    if not diff.objects:
        if diff.identities:
            return "Every object follows " + "; ".join(f"{f.path} `{f.base}` → `{f.head}`" for f in diff.identities) + \
                "; no other field changes."
        return "no manifest changes"
    lines: list[str] = []
    if diff.identities:
        lines.append("Every object follows " + "; ".join(
            f"{f.path} `{f.base}` → `{f.head}` (shown as `{_PLACEHOLDERS[f.path]}`)" for f in diff.identities) + ".")
        lines.append("")
    lines += ["| object | change | field | base | head |", "|---|---|---|---|---|"]
    shown = 0
    for obj in diff.objects:
        name = obj.head_name or obj.base_name or ""
        title = f"{obj.role} ({obj.kind})"
        if obj.change != "changed":
            lines.append(f"| {title} | {obj.change} | `{_cell(name)}` | | |")
            continue
        for delta in obj.fields:
            if shown == max_fields:
                break
            lines.append(f"| {title} | changed | `{_cell(delta.path)}` | {_value(delta.base)} | {_value(delta.head)} |")
            title = ""
            shown += 1
    hidden = sum(len(o.fields) for o in diff.objects) - shown
    if hidden > 0:
        lines.append(f"| … | | {hidden} more field(s): `ftops plan -o json` lists them all | | |")
    if full_render and diff.head_yaml:
        lines += ["", f"<details><summary>full render at head of the {diff.objects_rendered} object(s) that change "
                      f"(of {diff.objects_head})</summary>", "", "```yaml",
                  diff.head_yaml.rstrip("\n"), "```", "", "</details>"]
    return "\n".join(lines)


_PLACEHOLDERS = {label: placeholder for _, label, placeholder in _IDENTITIES}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def _value(value: JsonValue) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if len(text) > 60:
        text = text[:57] + "…"
    return f"`{_cell(text)}`"


__all__ = ["FieldDelta", "ManifestDiff", "ObjectDelta", "diff_objects", "flatten", "for_spec", "role_of", "to_markdown"]
