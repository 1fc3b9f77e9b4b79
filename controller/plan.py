"""What merging a pull request will make the controller do (pure).

`plan_change(base, head)` compares the specs at two commits: which specs are added, changed
or removed, what the controller will do for each on merge and why (a field-level diff plus
the run identity), what that costs (a new run: training and evaluation; changed gates or
served configuration: the evaluation only; a replica change: nothing but the rollout), and what
the advisor thinks. It reads nothing and writes nothing: the CLI loads both revisions, checks
the data and renders the manifests (`attach_data`, `SpecPlan.manifests`), and prints the result,
so the plan on a pull request is exactly what the controller computes after the merge.

What blocks a merge is one list (`Plan.errors`): invalid specs, data-check errors at head, data
that cannot be pulled (an unreachable DVC remote, a missing object), advisor errors and, unless
configured as warnings, budget breaches. `to_markdown` writes the pull-request comment: a marker
(`MARKER`) so CI updates one sticky comment, and a size guard that keeps it under GitHub's
65,536-character limit and says what it cut.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.advisor import Advice, advise
from controller.catalog import OperatorConfig
from controller.cost import ChangeCost, change_cost
from controller.desired import Action as Want
from controller.desired import Identities, decide, identities
from controller.manifest_diff import ManifestDiff
from controller.manifest_diff import to_markdown as manifest_markdown
from controller.source import SpecAtRev
from controller.spec.finetune import FineTune
from controller.spec.load import SpecIssue

Change = Literal["added", "changed", "removed", "unchanged", "invalid"]
Level = Literal["error", "warning"]

GITHUB_COMMENT_LIMIT = 65_536
COMMENT_LIMIT = GITHUB_COMMENT_LIMIT - 1_536
"""What `to_markdown` aims under: GitHub's limit, less room for what CI adds around the plan."""
MARKER = "<!-- ftops-plan -->"
"""The first line of every comment: CI finds the comment it posted before by it and edits it."""


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


@dataclass(frozen=True)
class Problem:
    """Something that blocks (error) or deserves a look (warning) before merging."""

    level: Level
    code: str
    message: str
    file: str = ""
    line: int = 0
    field: str = ""

    def to_dict(self) -> dict:
        return {"level": self.level, "code": self.code, "message": self.message, "file": self.file, "line": self.line,
                "field": self.field}


@dataclass(frozen=True)
class DataIssue:
    """One problem in the dataset at head, located in the repository's file (not a scratch copy)."""

    file: str
    line: int
    kind: str
    field: str
    message: str
    severity: str

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "kind": self.kind, "field": self.field, "message": self.message,
                "severity": self.severity}


@dataclass
class DataCheck:
    """The dataset at head as `ftops plan` checked it: pulled through its .dvc pointer, checked
    line by line, prepared (dedupe, split, leak check), its review read, and compared with the
    base version's answers. Paths are repository-relative."""

    path: str
    md5: str | None
    changed: bool
    """The data version differs from base (or the spec is new)."""
    unavailable: str | None = None
    """Why the data could not be pulled at head (the controller could not either)."""
    unavailable_code: str = ""
    examples: int | None = None
    valid: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    """Issues per kind (errors and warnings), as `ftops data check` counts them."""
    issues: list[DataIssue] = field(default_factory=list)
    issues_total: int = 0
    tokens: int | None = None
    tokens_method: str | None = None
    training_tokens: int | None = None
    prepared: dict[str, Any] | None = None
    review: dict[str, Any] | None = None
    data_ready: dict[str, Any] | None = None
    shift: dict[str, Any] | None = None
    """How the answers moved against base (controller.data.shift), when both versions were read."""
    warnings: list[str] = field(default_factory=list)
    prepare_error: str | None = None
    error_count: int = 0
    """Lines with errors (each error kind counts in `counts`)."""

    @property
    def errors(self) -> int:
        return self.error_count

    @property
    def ok(self) -> bool:
        return self.unavailable is None and self.errors == 0 and self.prepare_error is None

    def to_dict(self) -> dict:
        return {
            "path": self.path, "md5": self.md5, "changed": self.changed, "ok": self.ok,
            "unavailable": self.unavailable, "unavailableCode": self.unavailable_code or None,
            "examples": self.examples, "valid": self.valid, "errors": self.errors, "counts": self.counts,
            "issues": [i.to_dict() for i in self.issues], "issuesTotal": self.issues_total,
            "tokens": self.tokens, "tokensMethod": self.tokens_method, "trainingTokens": self.training_tokens,
            "prepared": self.prepared, "review": self.review, "dataReady": self.data_ready, "shift": self.shift,
            "warnings": self.warnings, "prepareError": self.prepare_error,
        }


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
    decision: str = "None"
    """The controller.desired action (Train, Evaluate, Deploy, Update, Prune, None)."""
    cost: ChangeCost | None = None
    budget_breach: bool = False
    advice: list[Advice] = field(default_factory=list)
    issues: list[SpecIssue] = field(default_factory=list)
    data: DataCheck | None = None
    manifests: ManifestDiff | None = None
    budget_is_error: bool = True

    def problems(self) -> list[Problem]:
        """Every error and warning of this spec, errors first."""
        out = [Problem(i.severity if i.severity == "error" else "warning", "SpecInvalid" if i.severity == "error" else "SpecWarning",
                       i.message, i.file, i.line, i.field) for i in self.issues]
        out += [Problem("error" if a.level == "error" else "warning", a.code, a.message, self.file, 0, a.field)
                for a in self.advice if a.level != "info"]
        if self.budget_breach and self.cost is not None:
            out.append(Problem("error" if self.budget_is_error else "warning", "BudgetExceeded",
                               f"estimated ${self.cost.usd:,.2f} exceeds budget.maxUsd", self.file, 0, "spec.budget.maxUsd"))
        if self.data is not None:
            d = self.data
            if d.unavailable:
                out.append(Problem("error", d.unavailable_code or "DataUnavailable", d.unavailable, d.path))
            if d.errors:
                first = next((i for i in d.issues if i.severity == "error"), None)
                out.append(Problem("error", "DataInvalid", f"{d.errors} error(s) in {d.path}" +
                                   (f", the first at line {first.line}: {first.message}" if first else ""), d.path,
                                   first.line if first else 0, first.field if first else ""))
            if d.prepare_error:
                out.append(Problem("error", "DataNotPrepared", d.prepare_error, d.path))
            out += [Problem("warning", "DataWarning", w, d.path) for w in d.warnings]
        if self.manifests is not None and self.manifests.error:
            out.append(Problem("error", "RenderFailed", f"head does not render: {self.manifests.error}", self.file))
        out += [Problem("warning", "CostWarning", w, self.file) for w in (self.cost.warnings if self.cost else [])]
        return sorted(out, key=lambda p: p.level != "error")

    @property
    def has_errors(self) -> bool:
        return any(p.level == "error" for p in self.problems())

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "file": self.file,
            "change": self.change,
            "decision": self.decision,
            "actions": [a.to_dict() for a in self.actions],
            "diff": [d.to_dict() for d in self.diff],
            "runBase": self.run_base,
            "runHead": self.run_head,
            "cost": self.cost.to_dict() if self.cost else None,
            "budgetBreach": self.budget_breach,
            "advice": [a.to_dict() for a in self.advice],
            "issues": [i.to_dict() for i in self.issues],
            "problems": [p.to_dict() for p in self.problems()],
            "data": self.data.to_dict() if self.data else None,
            "manifests": self.manifests.to_dict() if self.manifests else None,
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

    @property
    def has_changes(self) -> bool:
        """Merging makes the controller do something (Terraform's `-detailed-exitcode` 2)."""
        return any(p.change in ("added", "changed", "removed") for p in self.specs)

    def errors(self) -> list[Problem]:
        return [p for s in self.specs for p in s.problems() if p.level == "error"]

    def summary(self) -> dict[str, int]:
        counts = {c: sum(1 for p in self.specs if p.change == c) for c in ("added", "changed", "removed", "unchanged", "invalid")}
        counts["unchanged"] += self.unchanged
        return counts

    def changed(self) -> list[SpecPlan]:
        return [p for p in self.specs if p.change != "unchanged" or p.has_errors]

    def total_cost(self) -> tuple[float, float, float, int]:
        """(usd, low, high, specs whose cost is unknown) over every spec the merge acts on."""
        acting = [p for p in self.specs if p.change in ("added", "changed")]
        priced = [p.cost for p in acting if p.cost is not None]
        return (sum(c.usd for c in priced), sum(c.usd_low for c in priced), sum(c.usd_high for c in priced),
                len(acting) - len(priced))

    def to_dict(self) -> dict:
        usd, low, high, unknown = self.total_cost()
        return {
            "base": self.base,
            "head": self.head,
            "valid": not self.has_errors,
            "changes": self.has_changes,
            "summary": self.summary(),
            "cost": {"usd": round(usd, 2), "usdLow": round(low, 2), "usdHigh": round(high, 2), "unknownSpecs": unknown},
            "errors": [e.to_dict() for e in self.errors()],
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
    """Why a valid spec has no run identity at this revision: its dataset (or the file it
    replays) has no version, as an issue at the field that names it."""
    spec = state.loaded.spec
    if spec is None:
        return None
    located = state.loaded.located
    replay = spec.spec.training.replay
    checks = [(state.data, spec.spec.dataset.path, ("spec", "dataset", "path"))]
    if replay is not None:
        checks.append((state.replay, replay.path, ("spec", "training", "replay", "path")))
    for data, path, field in checks:
        if (data is None and field[1] == "dataset") or (data is not None and data.known):
            continue
        message = (data.error if data is not None else None) or (
            f"'{path}' has no version at this revision: commit the file, or '{path}.dvc' with `ftops data version`")
        return SpecIssue(state.path, located.line_of(field) if located else 1, ".".join(field), message)
    return None


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
        plan.decision = Want.PRUNE.value
        return plan

    name = _name_of(head)
    issues = list(head.loaded.issues)
    data_issue = _data_issue(head)
    if data_issue:
        issues.append(data_issue)
    if head.loaded.spec is None or data_issue is not None:
        plan = SpecPlan(name, head.path, "invalid", issues=issues)
        keeps = "the last valid version keeps running" if base and base.loaded.spec else "nothing is created"
        plan.actions.append(Action("Nothing", f"spec is invalid at head: the controller will not act on it; {keeps}"))
        return plan

    spec = head.loaded.spec
    ids_head = identities(head, template_version, corpus_versions[1])
    plan = SpecPlan(name, head.path, "unchanged", issues=issues, run_head=ids_head.run)
    data = head.data
    plan.advice = advise(spec, data.examples if data else None)

    if base is None or base.loaded.spec is None:
        plan.change = "added"
        plan.diff = field_diff(None, spec)
        why = "new spec" if base is None else "spec was invalid at base and is valid now"
        decision = decide(ids_head, None, spec.spec.serving is not None)
        plan.actions.extend(Action(verb, "serve the new model once its gates pass" if verb == "Deploy" else why)
                            for verb in decision.steps)
        price(plan, spec, operator, decision.action.value, data)
        return plan

    ids_base = identities(base, template_version, corpus_versions[0])
    plan.run_base = ids_base.run
    plan.diff = field_diff(base.loaded.spec, spec)
    data_changed = (base.data.md5 if base.data else None) != (data.md5 if data else None)
    if not plan.diff and not data_changed and ids_base == ids_head:
        plan.decision = Want.NONE.value
        return plan
    plan.change = "changed"
    if data_changed:
        plan.diff.insert(0, FieldChange("data.md5", base.data.md5 if base.data else None, data.md5 if data else None))
    replay_md5 = (base.replay.md5 if base.replay else None, head.replay.md5 if head.replay else None)
    if replay_md5[0] != replay_md5[1] and base.loaded.spec.spec.training.replay and spec.spec.training.replay:
        plan.diff.insert(int(data_changed), FieldChange("replay.md5", *replay_md5))
    # The decision is the reconciler's own (controller.desired); the reasons say which fields made it.
    decision = decide(ids_head, ids_base, spec.spec.serving is not None, changed=True)
    plan.actions.extend(Action(verb, _reason(decision.action, verb, plan.diff, ids_base, ids_head, corpus_versions))
                        for verb in decision.steps or ("Update",))
    if decision.action is Want.DEPLOY:
        plan.actions = [Action("Redeploy", plan.actions[0].reason)]
    price(plan, spec, operator, decision.action.value, data)
    return plan


def price(plan: SpecPlan, spec: FineTune, operator: OperatorConfig, action: str, data: Any,
          tokens: int | None = None, tokens_method: str | None = None) -> None:
    """Cost what `action` runs, from the tokens counted at head when the data was checked, else
    the count `ftops data version` recorded in the .dvc meta, else the pointer's size in bytes."""
    plan.decision = action
    counted_by = f"counted at head, {tokens_method}" if tokens is not None else "recorded by `ftops data version` in the .dvc meta"
    if tokens is None and data is not None:
        tokens = getattr(data, "tokens", None)
    cost = change_cost(action, spec, operator, data.size if data else None, tokens, data.examples if data else None, counted_by)
    plan.cost = cost
    budget = spec.spec.budget
    plan.budget_breach = bool(cost is not None and budget is not None and cost.usd > budget.max_usd)


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


_RUN_PREFIXES = ("data.", "replay.", "spec.baseModel.uri", "spec.baseModel.revision", "spec.method", "spec.training",
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
    """Plan every spec file present at base or head. Unchanged files (same blob, same data and
    replay versions, same corpus) are recognised without recomputing anything."""
    base = base or {}
    corpus_versions = corpus_versions or {}
    plans = []
    unchanged = 0
    for path in sorted(set(base) | set(head)):
        b, h = base.get(path), head.get(path)
        if b is not None and h is not None and b.blob == h.blob and b.data == h.data and b.replay == h.replay and \
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


# ----------------------------------------------------------------------------- data


def attach_data(plan: SpecPlan, check: DataCheck, spec: FineTune, operator: OperatorConfig, data: Any) -> None:
    """Put the data check on the spec's plan, and price the merge from the tokens it counted
    (the count `ftops data check` shows for the same file)."""
    plan.data = check
    if check.tokens is not None and plan.decision in (Want.TRAIN.value, Want.EVALUATE.value):
        price(plan, spec, operator, plan.decision, data, check.tokens, check.tokens_method)


# ----------------------------------------------------------------------------- rendering


def to_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2, default=str)


_ICON = {"error": "❌", "warning": "⚠️", "info": "ℹ️"}


@dataclass(frozen=True)
class _Detail:
    """How much each section shows; the size guard lowers these until the comment fits."""

    full_render: bool = True
    manifest_fields: int = 40
    spec_fields: int = 30
    data_issues: int = 10
    assumptions: bool = True
    sections: bool = True


_CUTS: tuple[tuple[str, _Detail], ...] = (
    ("", _Detail()),
    ("the full rendered manifests", _Detail(full_render=False)),
    ("manifest fields past the first 10 of each spec", _Detail(full_render=False, manifest_fields=10)),
    ("data issues past the first 3 and the cost assumptions",
     _Detail(full_render=False, manifest_fields=10, data_issues=3, assumptions=False)),
    ("spec field tables past 10 rows", _Detail(full_render=False, manifest_fields=5, spec_fields=10, data_issues=3,
                                               assumptions=False)),
    ("every per-spec section (the summary table stays)", _Detail(full_render=False, manifest_fields=0, spec_fields=0,
                                                                  data_issues=0, assumptions=False, sections=False)),
)


def to_markdown(plan: Plan, limit: int = COMMENT_LIMIT) -> str:
    """A pull-request comment: the marker, a verdict, a summary table with the cost per spec and
    in total, then one section per changed spec. When it would exceed `limit` characters the
    least essential parts are cut first, and the comment says what was cut."""
    cut: list[str] = []
    text = ""
    for what, detail in _CUTS:
        if what:
            cut.append(what)
        text = _markdown(plan, detail, cut)
        if len(text) <= limit:
            return text
    specs = plan.changed()
    note = (f"\n✂️ cut to stay under GitHub's {GITHUB_COMMENT_LIMIT:,}-character comment limit: {len(specs)} spec(s) are not "
            "all shown; `ftops plan -o json` has the whole plan.\n")
    return text[: limit - len(note)] + note


def _markdown(plan: Plan, d: _Detail, cut: list[str]) -> str:
    lines = [MARKER, f"## ftops plan: `{(plan.base or 'empty')[:8]}` → `{plan.head[:8]}`", ""]
    summary = plan.summary()
    counts = " · ".join(f"{count} {kind}" for kind, count in summary.items() if count) or "no specs"
    usd, low, high, unknown = plan.total_cost()
    total = f"estimated cost of this merge: **${usd:,.2f}** (${low:,.2f}–${high:,.2f})" + (
        f", {unknown} spec(s) not priced" if unknown else "")
    lines += [f"{counts} · {total}", ""]
    errors = plan.errors()
    if errors:
        lines.append(f"❌ **{len(errors)} error(s) block this merge:**")
        lines += [f"- {_where(e)}{e.message}" for e in errors[:20]]
        if len(errors) > 20:
            lines.append(f"- … {len(errors) - 20} more")
        lines.append("")
    if cut:
        lines += [f"✂️ cut to stay under GitHub's {GITHUB_COMMENT_LIMIT:,}-character comment limit: {', '.join(cut)}. "
                  "`ftops plan -o json` has the whole plan.", ""]
    changed = plan.changed()
    if not changed:
        lines.append("No spec changes: merging does nothing.")
        return "\n".join(lines) + "\n"
    lines += ["| spec | change | on merge | run | est. cost |", "|---|---|---|---|---|"]
    for p in changed:
        lines.append(f"| {p.name} | {p.change} | {_on_merge(p)} | {_run(p)} | {_cost_cell(p)} |")
    if not d.sections:
        return "\n".join(lines) + "\n"
    for p in changed:
        lines += ["", f"### {p.name} ({p.change})", ""]
        for issue in p.issues:
            lines.append(f"- {_ICON[issue.severity]} `{issue.file}:{issue.line}` `{issue.field}`: {issue.message}")
        for kinds, reason in _group_actions(p.actions):
            lines.append(f"- **{' → '.join(kinds)}**: {reason}")
        if p.diff and p.change == "changed" and d.spec_fields:
            lines += ["", "| field | base | head |", "|---|---|---|"]
            for change in p.diff[: d.spec_fields]:
                lines.append(f"| `{change.path}` | {_cell(change.old)} | {_cell(change.new)} |")
            if len(p.diff) > d.spec_fields:
                lines.append(f"| … {len(p.diff) - d.spec_fields} more | | |")
        if p.cost is not None and p.change in ("added", "changed"):
            lines += ["", _cost_line(p)]
            if d.assumptions and p.cost.phases:
                lines += ["<details><summary>assumptions</summary>", ""]
                for phase in p.cost.phases:
                    lines += [f"- **{phase.phase}** (${phase.usd:,.2f})"] + [f"  - {a}" for a in phase.assumptions]
                if p.budget_breach or p.cost.phases:
                    lines.append(f"- budget.maxUsd is compared with the point estimate of everything this merge runs")
                lines += ["", "</details>"]
            lines += [f"- ⚠️ {w}" for w in p.cost.warnings]
        elif p.change in ("added", "changed") and p.decision in (Want.TRAIN.value, Want.EVALUATE.value):
            lines += ["", "**Estimated cost:** unknown: the dataset's size is not recorded at head (version it with "
                      "`ftops data version`)"]
        if p.advice:
            lines += ["", "**Advisor:**"] + [f"- {_ICON[a.level]} {a.message}" for a in p.advice]
        if p.data is not None:
            lines += ["", f"**Data** `{p.data.path}`", ""] + _data_lines(p.data, d)
        if p.manifests is not None and d.manifest_fields >= 0:
            body = manifest_markdown(p.manifests, full_render=d.full_render, max_fields=max(d.manifest_fields, 1))
            lines += ["", "**Kubernetes manifests**", "", body]
    return "\n".join(lines) + "\n"


def _where(problem: Problem) -> str:
    if not problem.file:
        return ""
    return f"`{problem.file}{':' + str(problem.line) if problem.line else ''}`: "


def _on_merge(p: SpecPlan) -> str:
    if p.change == "invalid":
        return "nothing (invalid at head)"
    if p.change == "unchanged":
        return "nothing"
    return " → ".join(a.kind for a in p.actions) or "nothing"


def _run(p: SpecPlan) -> str:
    if p.run_base and p.run_head and p.run_base != p.run_head:
        return f"`{p.run_base}` → `{p.run_head}`"
    run = p.run_head or p.run_base
    return f"`{run}`" if run else "-"


def _cost_cell(p: SpecPlan) -> str:
    if p.change not in ("added", "changed"):
        return "-"
    if p.cost is None:
        return "unknown" if p.decision in (Want.TRAIN.value, Want.EVALUATE.value) else "$0.00"
    cell = f"${p.cost.usd:,.2f}" + (f" ({' + '.join(ph.phase for ph in p.cost.phases)})" if p.cost.phases else "")
    if p.budget_breach:
        cell += " ❌ over budget" if p.budget_is_error else " ⚠️ over budget"
    return cell


def _cost_line(p: SpecPlan) -> str:
    c = p.cost
    assert c is not None
    parts = " + ".join(f"{ph.phase} ${ph.usd:,.2f}" for ph in c.phases) or "nothing runs"
    budget = " ❌ **exceeds budget.maxUsd**" if p.budget_breach else ""
    training = c.training
    hours = (f"; training {training.gpu_hours:,.1f} GPU-hours, {training.wall_hours:,.1f} h wall"
             if training is not None else "")
    return f"**Estimated cost:** ${c.usd:,.2f} (range ${c.usd_low:,.2f}–${c.usd_high:,.2f}) = {parts} ({c.what}){hours}{budget}"


def _data_lines(check: DataCheck, d: _Detail) -> list[str]:
    if check.unavailable:
        return [f"- ❌ could not be pulled at head: {check.unavailable}"]
    out: list[str] = []
    status = "❌" if not check.ok else "⚠️" if check.warnings or (check.data_ready and check.data_ready.get("status") != "True") else "✅"
    what = "changed" if check.changed else "unchanged since base"
    out.append(f"- {status} `{(check.md5 or '')[:12]}` ({what}): {check.examples} examples, {check.valid} valid, "
               f"{check.errors} with errors")
    shown = [i for i in check.issues if i.severity == "error"][: d.data_issues]
    out += [f"  - `{i.file}:{i.line}` [{i.kind}] {i.field + ': ' if i.field else ''}{i.message}" for i in shown]
    if check.errors > len(shown):
        out.append(f"  - … {check.errors - len(shown)} more: `ftops data check {check.path}` lists them all")
    if check.tokens is not None:
        out.append(f"- tokens: {check.tokens:,} ({check.tokens_method}); training tokens {check.training_tokens:,}")
    if check.prepared:
        c = check.prepared
        out.append(f"- kept {c['kept']} ({c['exactDuplicates']} exact and {c['nearDuplicates']} near duplicates dropped); "
                   f"split {c['train']} train / {c['test']} test; leak check {'passed' if c.get('leakCheck') else 'FAILED'}")
    if check.prepare_error:
        out.append(f"- ❌ not prepared: {check.prepare_error}")
    if check.review:
        r = check.review
        out.append(f"- review: {r['reviewed']} of the {r['sample']} sampled examples have a verdict ({r['coverage']:.1%} of the data "
                   f"reviewed, {r['required']:.0%} required), {r['approval']:.0%} approved")
    if check.data_ready:
        ready = check.data_ready
        out.append(f"- DataReady: {'✅' if ready['status'] == 'True' else '⏳'} {ready['reason']}: {ready['message']}")
    out += [f"- ⚠️ {w}" for w in check.warnings]
    return out


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
