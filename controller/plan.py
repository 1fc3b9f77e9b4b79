"""What merging a pull request will make the controller do (pure).

`plan_change(base, head)` compares the specs at two commits: which specs are added, changed
or removed, what the controller will do for each on merge and why (a field-level diff plus
the run identity), what a retrain will cost, and what the advisor thinks. It reads nothing
and writes nothing: the CLI loads both revisions and prints the result, so the plan on a
pull request is exactly what the controller computes after the merge.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.advisor import Advice, advise
from controller.catalog import OperatorConfig
from controller.cost import CostEstimate, estimate
from controller.desired import Action as Want
from controller.desired import Identities, decide, identities
from controller.source import SpecAtRev
from controller.spec.finetune import FineTune
from controller.spec.load import SpecIssue

Change = Literal["added", "changed", "removed", "unchanged", "invalid"]

COMMENT_LIMIT = 60_000
"""GitHub caps a comment at 65,536 characters; leave room for a header."""


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any

    def to_dict(self) -> dict:
        return {"field": self.path, "base": self.old, "head": self.new}


@dataclass(frozen=True)
class Action:
    kind: str
    reason: str

    def to_dict(self) -> dict:
        return {"action": self.kind, "reason": self.reason}


@dataclass
class SpecPlan:
    """The plan for one spec file."""

    name: str
    file: str
    change: Change
    actions: list[Action] = field(default_factory=list)
    diff: list[FieldChange] = field(default_factory=list)
    run_base: str | None = None
    run_head: str | None = None
    cost: CostEstimate | None = None
    budget_breach: bool = False
    advice: list[Advice] = field(default_factory=list)
    issues: list[SpecIssue] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    """Extra sections other concerns add (data summary, manifest diff), keyed by title."""

    @property
    def has_errors(self) -> bool:
        return any(i.severity == "error" for i in self.issues) or any(a.level == "error" for a in self.advice)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "file": self.file,
            "change": self.change,
            "actions": [a.to_dict() for a in self.actions],
            "diff": [d.to_dict() for d in self.diff],
            "runBase": self.run_base,
            "runHead": self.run_head,
            "cost": self.cost.to_dict() if self.cost else None,
            "budgetBreach": self.budget_breach,
            "advice": [a.to_dict() for a in self.advice],
            "issues": [i.to_dict() for i in self.issues],
            "sections": self.sections,
        }


@dataclass
class Plan:
    base: str | None
    head: str
    specs: list[SpecPlan]
    """Every spec that changed or has errors (unchanged valid specs are only counted)."""
    unchanged: int = 0

    @property
    def has_errors(self) -> bool:
        return any(p.has_errors for p in self.specs)

    def summary(self) -> dict[str, int]:
        counts = {c: sum(1 for p in self.specs if p.change == c) for c in ("added", "changed", "removed", "unchanged", "invalid")}
        counts["unchanged"] += self.unchanged
        return counts

    def changed(self) -> list[SpecPlan]:
        return [p for p in self.specs if p.change != "unchanged" or p.has_errors]

    def to_dict(self) -> dict:
        return {
            "base": self.base,
            "head": self.head,
            "valid": not self.has_errors,
            "summary": self.summary(),
            "specs": [p.to_dict() for p in self.changed()],
        }


# ----------------------------------------------------------------------------- diffing


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'spec': {'training': {'epochs': 3}}} -> {'spec.training.epochs': 3}. Lists stay whole."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def field_diff(base: FineTune | None, head: FineTune | None) -> list[FieldChange]:
    old = flatten(base.model_dump(mode="json", by_alias=True)) if base else {}
    new = flatten(head.model_dump(mode="json", by_alias=True)) if head else {}
    return [
        FieldChange(path, old.get(path), new.get(path))
        for path in sorted(set(old) | set(new))
        if old.get(path) != new.get(path)
    ]


def _describe(changes: list[FieldChange], limit: int = 4) -> str:
    shown = ", ".join(f"{c.path} {_short(c.old)} → {_short(c.new)}" for c in changes[:limit])
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return shown + more


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "…"


# ----------------------------------------------------------------------------- planning


def _name_of(state: SpecAtRev) -> str:
    if state.loaded.spec is not None:
        return state.loaded.spec.metadata.name
    return state.path.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _data_issue(state: SpecAtRev) -> SpecIssue | None:
    data = state.data
    spec = state.loaded.spec
    if spec is None or data is None or data.known:
        return None
    located = state.loaded.located
    line = located.line_of(("spec", "dataset", "path")) if located else 1
    message = data.error or (
        f"dataset '{data.path}' has no version at this revision: commit '{data.path}.dvc' with `ftops data version`"
    )
    return SpecIssue(state.path, line, "spec.dataset.path", message)


def plan_spec(
    base: SpecAtRev | None,
    head: SpecAtRev | None,
    operator: OperatorConfig,
    template_version: str,
    corpus_versions: tuple[str | None, str | None] = (None, None),
) -> SpecPlan:
    """The plan for one spec file, given its state at the base and head commits."""
    if head is None:
        assert base is not None
        name = _name_of(base)
        plan = SpecPlan(name, base.path, "removed")
        plan.actions.append(Action(
            "Prune",
            "spec deleted: remove the Jobs and serving objects ftops owns for it (found by label); "
            "artifacts, checkpoints and the audit ledger are kept",
        ))
        plan.run_base = identities(base, template_version, corpus_versions[0]).run
        return plan

    name = _name_of(head)
    issues = list(head.loaded.issues)
    data_issue = _data_issue(head)
    if data_issue:
        issues.append(data_issue)
    if head.loaded.spec is None or data_issue is not None:
        plan = SpecPlan(name, head.path, "invalid", issues=issues)
        keeps = "the last valid version keeps running" if base and base.loaded.spec else "nothing is created"
        plan.actions.append(Action("None", f"spec is invalid at head: the controller will not act on it; {keeps}"))
        return plan

    spec = head.loaded.spec
    ids_head = identities(head, template_version, corpus_versions[1])
    plan = SpecPlan(name, head.path, "unchanged", issues=issues, run_head=ids_head.run)
    data = head.data
    cost = estimate(spec, operator, data.size if data else None)
    plan.cost = cost
    if cost is not None and spec.spec.budget is not None and cost.usd > spec.spec.budget.max_usd:
        plan.budget_breach = True
    plan.advice = advise(spec, data.examples if data else None)

    if base is None or base.loaded.spec is None:
        plan.change = "added"
        plan.diff = field_diff(None, spec)
        why = "new spec" if base is None else "spec was invalid at base and is valid now"
        decision = decide(ids_head, None, spec.spec.serving is not None)
        plan.actions.extend(Action(verb, "serve the new model once its gates pass" if verb == "Deploy" else why)
                            for verb in decision.steps)
        return plan

    ids_base = identities(base, template_version, corpus_versions[0])
    plan.run_base = ids_base.run
    plan.diff = field_diff(base.loaded.spec, spec)
    data_changed = (base.data.md5 if base.data else None) != (data.md5 if data else None)
    if not plan.diff and not data_changed and ids_base == ids_head:
        return plan
    plan.change = "changed"
    if data_changed:
        plan.diff.insert(0, FieldChange("data.md5", base.data.md5 if base.data else None, data.md5 if data else None))
    # The decision is the reconciler's own (controller.desired); the reasons say which fields made it.
    decision = decide(ids_head, ids_base, spec.spec.serving is not None, changed=True)
    plan.actions.extend(Action(verb, _reason(decision.action, verb, plan.diff, ids_base, ids_head, corpus_versions))
                        for verb in decision.steps or ("Update",))
    if decision.action is Want.DEPLOY:
        plan.actions = [Action("Redeploy", plan.actions[0].reason)]
    return plan


def _reason(action: Want, verb: str, diff: list[FieldChange], base: Identities, head: Identities,
            corpus_versions: tuple[str | None, str | None]) -> str:
    if action is Want.TRAIN:
        if verb == "Deploy":
            return f"replace run {base.run} once {head.run} passes its gates; {base.run} keeps serving until then"
        run_fields = [c for c in diff if _affects_run(c.path)]
        return f"run inputs changed ({_describe(run_fields)}): new run {head.run}"
    if action is Want.EVALUATE:
        eval_fields = [c for c in diff if c.path.startswith("spec.evaluation")]
        served = _served_changes(diff, corpus_versions)
        if verb == "Evaluate":
            if served and not eval_fields:
                return (f"serving configuration changed ({_describe(served)}): re-evaluate run {head.run} on what will "
                        "serve, without retraining")
            if served:
                return (f"gates and serving configuration changed ({_describe(eval_fields + served)}): re-evaluate run "
                        f"{head.run} without retraining")
            return f"gates changed ({_describe(eval_fields)}): re-evaluate run {head.run} without retraining"
        if verb == "Gate":
            return "decide again with the new thresholds" if not served else "decide on the hybrid's new report"
        return "keep serving only if the run still passes; otherwise the previous passing run serves"
    if action is Want.DEPLOY:
        serving_fields = [c for c in diff if c.path.startswith("spec.serving")] or [
            FieldChange("corpus", corpus_versions[0], corpus_versions[1])
        ]
        return f"serving changed ({_describe(serving_fields)}): redeploy run {head.run} without retraining"
    return f"no retraining: only {_describe(diff)} changed"


_SERVED_FIELDS = ("spec.serving.corpus", "spec.serving.retriever", "spec.serving.topK", "spec.serving.maxTokens")
"""Serving fields that are part of the evaluated serving configuration (controller.identity.serving_config)."""


def _served_changes(diff: list[FieldChange], corpus_versions: tuple[str | None, str | None]) -> list[FieldChange]:
    """The changes that make the served system answer differently: its serving fields, and the
    corpus content (a new version of the same folder)."""
    changes = [c for c in diff if c.path.startswith(_SERVED_FIELDS)]
    if corpus_versions[0] != corpus_versions[1] and corpus_versions[0] is not None:
        changes.append(FieldChange("corpus", corpus_versions[0], corpus_versions[1]))
    return changes


_RUN_PREFIXES = ("data.", "spec.baseModel.uri", "spec.baseModel.revision", "spec.method", "spec.training",
                 "spec.hardware.gpusPerNode", "spec.hardware.nodes", "spec.dataset.testFraction",
                 "spec.dataset.nearDuplicateThreshold")


def _affects_run(path: str) -> bool:
    return path.startswith(_RUN_PREFIXES)


def plan_change(
    base: dict[str, SpecAtRev] | None,
    head: dict[str, SpecAtRev],
    operator: OperatorConfig,
    template_version: str,
    base_sha: str | None,
    head_sha: str,
    corpus_versions: dict[str, tuple[str | None, str | None]] | None = None,
) -> Plan:
    """Plan every spec file present at base or head. Unchanged files (same blob, same data
    pointer) are recognised without recomputing anything."""
    base = base or {}
    corpus_versions = corpus_versions or {}
    plans = []
    unchanged = 0
    for path in sorted(set(base) | set(head)):
        b, h = base.get(path), head.get(path)
        if b is not None and h is not None and b.blob == h.blob and b.data == h.data and \
                corpus_versions.get(path, (None, None))[0] == corpus_versions.get(path, (None, None))[1]:
            if h.loaded.errors:
                plans.append(SpecPlan(_name_of(h), path, "unchanged", issues=list(h.loaded.issues)))
            else:
                unchanged += 1  # the common case on a big repo: count it, build nothing
            continue
        plans.append(plan_spec(b, h, operator, template_version, corpus_versions.get(path, (None, None))))
    if base and not head:
        # The controller's delete-all guard (a wiped specs/ folder is more often an accident).
        for p in plans:
            p.actions = [Action(a.kind, a.reason + "; this commit deletes every spec, so the controller refuses to "
                                "prune anything unless it runs with --allow-delete-all") for a in p.actions]
    return Plan(base_sha, head_sha, plans, unchanged)


# ----------------------------------------------------------------------------- rendering


def to_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2, default=str)


_ICON = {"error": "❌", "warning": "⚠️", "info": "ℹ️"}


def to_markdown(plan: Plan) -> str:
    """A pull-request comment: a summary table, then one section per changed spec."""
    lines = [f"## ftops plan: `{(plan.base or 'empty')[:8]}` → `{plan.head[:8]}`", ""]
    summary = plan.summary()
    lines.append(" · ".join(f"{count} {kind}" for kind, count in summary.items() if count) or "no specs")
    lines.append("")
    changed = plan.changed()
    if not changed:
        lines.append("No spec changes: merging does nothing.")
        return "\n".join(lines) + "\n"
    lines += ["| spec | change | on merge | run | est. cost |", "|---|---|---|---|---|"]
    for p in changed:
        actions = " → ".join(a.kind for a in p.actions) or "nothing"
        run = f"`{p.run_base or '-'}` → `{p.run_head}`" if p.run_base and p.run_head and p.run_base != p.run_head else f"`{p.run_head or p.run_base or '-'}`"
        cost = f"${p.cost.usd:,.2f}" if p.cost and p.cost.usd else "-"
        if p.budget_breach:
            cost += " ❌ over budget"
        lines.append(f"| {p.name} | {p.change} | {actions} | {run} | {cost} |")
    for p in changed:
        lines += ["", f"### {p.name} ({p.change})", ""]
        for issue in p.issues:
            lines.append(f"- {_ICON[issue.severity]} `{issue.file}:{issue.line}` `{issue.field}`: {issue.message}")
        for kinds, reason in _group_actions(p.actions):
            lines.append(f"- **{' → '.join(kinds)}**: {reason}")
        if p.diff and p.change == "changed":
            lines += ["", "| field | base | head |", "|---|---|---|"]
            for change in p.diff[:30]:
                lines.append(f"| `{change.path}` | {_cell(change.old)} | {_cell(change.new)} |")
            if len(p.diff) > 30:
                lines.append(f"| … {len(p.diff) - 30} more | | |")
        if p.cost is not None and p.change in ("added", "changed"):
            c = p.cost
            budget = p.budget_breach and "❌ **exceeds budget**" or ""
            lines += ["", f"**Estimated cost:** ${c.usd:,.2f} (range ${c.usd_low:,.2f}–${c.usd_high:,.2f}), "
                          f"{c.gpu_hours:,.1f} GPU-hours, {c.wall_hours:,.1f} h wall {budget}"]
            lines += ["<details><summary>assumptions</summary>", ""] + [f"- {a}" for a in c.assumptions] + ["", "</details>"]
            lines += [f"- ⚠️ {w}" for w in c.warnings]
        if p.advice:
            lines += ["", "**Advisor:**"] + [f"- {_ICON[a.level]} {a.message}" for a in p.advice]
        for title, body in p.sections.items():
            lines += ["", f"<details><summary>{title}</summary>", "", str(body), "", "</details>"]
    text = "\n".join(lines) + "\n"
    if len(text) > COMMENT_LIMIT:
        text = text[:COMMENT_LIMIT] + "\n\n… truncated: run `ftops plan --output json` for the whole plan.\n"
    return text


def _group_actions(actions: list[Action]) -> list[tuple[list[str], str]]:
    """Consecutive actions with the same reason read as one step chain."""
    groups: list[tuple[list[str], str]] = []
    for action in actions:
        if groups and groups[-1][1] == action.reason:
            groups[-1][0].append(action.kind)
        else:
            groups.append(([action.kind], action.reason))
    return groups


def _cell(value: Any) -> str:
    return "-" if value is None else f"`{_short(value)}`".replace("|", "\\|")
