"""The gate: an evaluation report + the spec's thresholds -> a decision with reasons (pure).

No I/O and no heavy imports, so the reconciler, `ftops plan` and the tests can call it freely,
and an auditor can recompute any recorded decision from the report and the spec.

One line per configured gate (task accuracy, format compliance, regression drop, each mustBeat
model, bias gap, retrieval recall@k, citation accuracy, groundedness), each with its value,
threshold and pass/fail. The decision fails, with a line saying why, when:
- the report is missing, or its evaluation crashed (status != "completed");
- the report is for another run id (a stale or misplaced report must never ship a model);
- the report evaluated another serving configuration than the one that will serve (when the
  caller says which one will: the hash of controller.identity.serving_config);
- a metric the spec gates on is missing from the report, or is NaN/null/infinite.

The decision records the serving configuration the report evaluated (`servingConfigSha256`):
deployers promote only when it is the configuration they are deploying.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from controller.spec.evaluation import EvaluationSpec
from controller.spec.finetune import FineTune, FineTuneSpec
from controller.status import Reason

COMPLETED = "completed"


@dataclass(frozen=True)
class GateLine:
    """One check: `metric` (the report key), `value`, `threshold`, `kind` (min, max, maxDrop,
    maxGap, mustBeat, report), and why it passed or failed."""

    metric: str
    kind: str
    value: float | None
    threshold: float | None
    passed: bool
    message: str

    def to_dict(self) -> dict:
        return {"metric": self.metric, "kind": self.kind, "value": _json_number(self.value),
                "threshold": _json_number(self.threshold), "passed": self.passed, "message": self.message}


@dataclass(frozen=True)
class Decision:
    """The gate's verdict for one run. `to_dict()` is what the ledger records (`gate.decided`)."""

    run_id: str
    passed: bool
    lines: tuple[GateLine, ...] = field(default_factory=tuple)
    report_sha256: str | None = None
    serving_config_sha256: str | None = None
    """The serving configuration the report evaluated (None: the spec is not served)."""

    @property
    def reason(self) -> str:
        """CamelCase reason for the GatePassed condition."""
        return Reason.SUCCEEDED if self.passed else Reason.GATE_FAILED

    @property
    def failures(self) -> tuple[GateLine, ...]:
        return tuple(line for line in self.lines if not line.passed)

    def message(self) -> str:
        """One sentence for a status condition: which gates failed, or that all passed."""
        if self.passed:
            return f"all {len(self.lines)} gates passed"
        return "; ".join(line.message for line in self.failures)

    def to_dict(self) -> dict:
        return {"kind": "GateDecision", "runId": self.run_id, "passed": self.passed, "reason": self.reason,
                "reportSha256": self.report_sha256, "servingConfigSha256": self.serving_config_sha256,
                "lines": [line.to_dict() for line in self.lines]}

    def format(self) -> str:
        """The decision for a terminal: one line per metric, then the verdict."""
        rows = []
        for line in self.lines:
            value = "-" if line.value is None or (isinstance(line.value, float) and math.isnan(line.value)) else f"{line.value:.4f}"
            thr = "-" if line.threshold is None else f"{line.threshold:.4f}"
            rows.append(f"  {'PASS' if line.passed else 'FAIL'}  {line.metric:<28} {line.kind:<9} value {value:>8}  threshold {thr:>8}  {line.message}")
        verdict = "PASS" if self.passed else "FAIL"
        return "\n".join([f"gate {verdict} for run {self.run_id}", *rows])


def _json_number(value: float | None) -> float | None:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _number(value: Any) -> float | None:
    """A finite float, or None for missing / null / NaN / inf / non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _evaluation(spec: FineTune | FineTuneSpec | EvaluationSpec) -> EvaluationSpec:
    if isinstance(spec, FineTune):
        return spec.spec.evaluation
    if isinstance(spec, FineTuneSpec):
        return spec.evaluation
    if isinstance(spec, EvaluationSpec):
        return spec
    raise TypeError("decide() needs a FineTune, FineTuneSpec or EvaluationSpec")


def _as_dict(report: Any) -> Mapping | None:
    if report is None:
        return None
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if isinstance(report, Mapping):
        return report
    raise TypeError("report must be a mapping (report.json) or have to_dict()")


def _check(metrics: Mapping, name: str, kind: str, threshold: float, label: str) -> GateLine:
    if name not in metrics:
        return GateLine(name, kind, None, threshold, False, f"{label}: metric {name} is missing from the report")
    value = _number(metrics[name])
    if value is None:
        return GateLine(name, kind, None, threshold, False, f"{label}: {name} is not a number ({metrics[name]!r}); NaN never passes")
    if kind == "min":
        ok = value >= threshold
        rel = ">=" if ok else "<"
    else:  # max, maxDrop, maxGap
        ok = value <= threshold
        rel = "<=" if ok else ">"
    return GateLine(name, kind, value, threshold, ok, f"{label} {value:.4f} {rel} {kind} {threshold:.4f}")


def evaluated_config(data: Mapping) -> str | None:
    """The serving-configuration hash a report records (`servingConfig.sha256`), if any."""
    config = data.get("servingConfig")
    sha = config.get("sha256") if isinstance(config, Mapping) else None
    return sha if isinstance(sha, str) else None


def decide(report: Any, spec: FineTune | FineTuneSpec | EvaluationSpec, run_id: str, report_sha256: str | None = None,
           serving_config: str | None = None) -> Decision:
    """The decision for run `run_id`, from its report (report.json as a dict, or an object with
    to_dict(); None when there is none) and the spec's `evaluation` thresholds. `serving_config`:
    the hash of the serving configuration that will serve; a report that evaluated another fails."""
    ev = _evaluation(spec)
    data = _as_dict(report)
    if data is None:
        line = GateLine("report", "report", None, None, False, "no evaluation report for this run; nothing ships without one")
        return Decision(run_id, False, (line,), report_sha256)
    evaluated = evaluated_config(data)
    lines: list[GateLine] = []
    if data.get("runId") != run_id:
        lines.append(GateLine("report.runId", "report", None, None, False,
                              f"report is for run {data.get('runId')!r}, not {run_id!r}; a report never vouches for another run"))
    status = data.get("status")
    if status != COMPLETED:
        error = data.get("error") or "no error recorded"
        lines.append(GateLine("report.status", "report", None, None, False, f"evaluation did not complete (status {status!r}): {error}"))
    if serving_config is not None and evaluated != serving_config:
        lines.append(GateLine("report.servingConfig", "report", None, None, False,
                              f"report evaluated serving configuration {evaluated[:12] + '…' if evaluated else 'none'}, "
                              f"not {serving_config[:12]}… that will serve; evaluate on the served configuration"))
    if lines:
        return Decision(run_id, False, tuple(lines), report_sha256, evaluated)

    metrics = data.get("metrics")
    if not isinstance(metrics, Mapping):
        metrics = {}
    lines.append(_check(metrics, f"task.{ev.task.metric}", "min", ev.task.min, f"task accuracy ({ev.task.metric})"))
    if ev.format is not None:
        lines.append(_check(metrics, "format.compliance", "min", ev.format.min, "format compliance"))
    if ev.regression is not None:
        lines.append(_check(metrics, "regression.drop", "maxDrop", ev.regression.max_drop, "regression drop from base"))
    compare = ev.compare
    if compare is not None:
        ours = "compare.fine-tuned.score"
        for other in compare.must_beat:
            theirs = f"compare.{other}.score"
            threshold = _number(metrics.get(theirs))
            if threshold is None:
                what = "missing from the report" if theirs not in metrics else f"not a number ({metrics.get(theirs)!r})"
                lines.append(GateLine(ours, "mustBeat", _number(metrics.get(ours)), None, False,
                                      f"mustBeat {other}: {theirs} is {what}"))
                continue
            line = _check(metrics, ours, "min", threshold, f"mustBeat {other}: fine-tuned")
            lines.append(GateLine(line.metric, "mustBeat", line.value, threshold, line.passed,
                                  line.message.replace(" min ", f" {other} ")))
    if ev.bias is not None:
        lines.append(_check(metrics, "bias.gap", "maxGap", ev.bias.max_gap, "bias gap between groups"))
    rag = ev.rag
    if rag is not None:
        for name, check, label in (("rag.recallAtK", rag.recall_at_k, "retrieval recall@k of the gold source"),
                                   ("rag.citationAccuracy", rag.citation_accuracy, "citation accuracy (cites the gold source)"),
                                   ("rag.groundedness", rag.groundedness, "groundedness (facts found in the cited source)")):
            if check is not None:
                lines.append(_check(metrics, name, "min", check.min, label))
    return Decision(run_id, all(line.passed for line in lines), tuple(lines), report_sha256, evaluated)
