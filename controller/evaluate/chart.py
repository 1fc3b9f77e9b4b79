"""The pictures a reviewer looks at (matplotlib, Agg backend: no display):

- `eval/chart.png`: one panel per gated metric, each with its own scale: this run's value
  (green when it passed its gate, red when it failed), the value of the run serving now (grey),
  and the threshold as a dashed line labelled with its direction (`min 0.90`, `max 0.05`). A
  missing or NaN value is written `n/a` where its bar would be. Before the gate has decided
  (the evaluator writes a first chart with the report), the panels are the report's metrics
  without thresholds; the gate step draws it again with its lines and the serving run.
- `eval/loss.png`: the training loss per logged step from the run's `metrics.jsonl`, with the
  serving run's curve dashed beside it.

Both are files of the run in the artifact store (under eval/, so the manifest's hashes cover
them). `panels` and `loss_points` are pure, so what the pictures show is testable.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.seams import ArtifactStore

PASS, FAIL, NEUTRAL, SERVING, THRESHOLD = "#2e7d32", "#c62828", "#1565c0", "#9e9e9e", "#424242"
DIRECTION = {"min": "min", "mustBeat": "must beat", "max": "max", "maxDrop": "max drop", "maxGap": "max gap"}


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


@dataclass(frozen=True)
class Panel:
    """One gated metric: this run's value, the serving run's, the threshold and the verdict."""

    metric: str
    kind: str
    value: float | None
    threshold: float | None
    passed: bool | None
    serving: float | None
    label: str = ""


def panels(report: dict, gate: dict | None = None, serving: dict | None = None) -> list[Panel]:
    """The chart's content. With a gate decision: one panel per gate line that names a metric
    (a report-level failure such as `report.runId` has no value to draw). Without one: every
    numeric metric of the report. `serving` is the serving run's report (its `metrics`)."""
    ours = report.get("metrics") or {}
    theirs = (serving or {}).get("metrics") or {}
    out: list[Panel] = []
    lines = (gate or {}).get("lines") or []
    if lines:
        for line in lines:
            metric = str(line.get("metric"))
            if metric.startswith("report") or line.get("kind") == "report":
                continue
            kind = str(line.get("kind"))
            threshold = _finite(line.get("threshold"))
            label = str(line.get("message") or "").split(":")[0] if kind == "mustBeat" else ""
            out.append(Panel(metric, kind, _finite(line.get("value")), threshold, bool(line.get("passed")),
                             _finite(theirs.get(metric)), label))
        return out
    for metric in sorted(ours):
        value = _finite(ours[metric])
        if value is not None or metric in theirs:
            out.append(Panel(metric, "", value, None, None, _finite(theirs.get(metric))))
    return out


def loss_points(metrics_jsonl: bytes | str) -> list[tuple[float, float]]:
    """(step, loss) of every line of metrics.jsonl that logs a finite loss."""
    text = metrics_jsonl.decode("utf-8", errors="replace") if isinstance(metrics_jsonl, bytes) else metrics_jsonl
    points = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        step, loss = _finite(row.get("step")), _finite(row.get("loss"))
        if step is not None and loss is not None:
            points.append((step, loss))
    return points


# ----------------------------------------------------------------------------- drawing


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    _pyplot().close(fig)
    return buffer.getvalue()


def render_chart(report: dict, gate: dict | None = None, serving: dict | None = None) -> bytes:
    """chart.png's bytes (see the module docstring)."""
    plt = _pyplot()
    shown = panels(report, gate, serving)
    run, spec = report.get("runId"), report.get("specName")
    serving_run = (serving or {}).get("runId")
    count = max(1, len(shown))
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 0.6, 2.9 * rows + 0.9), dpi=100, squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, p in zip(axes.flat, shown):
        names = [f"this run\n{str(run)[:8]}"] + ([f"serving\n{str(serving_run)[:8]}"] if serving is not None else [])
        values = [p.value] + ([p.serving] if serving is not None else [])
        colour = NEUTRAL if p.passed is None else (PASS if p.passed else FAIL)
        colours = [colour] + ([SERVING] if serving is not None else [])
        top = max([v for v in (*values, p.threshold) if v is not None] + [1e-9])
        limit = 1.15 if top <= 1.0 and p.kind in ("min", "mustBeat", "") else top * 1.35
        for x, (value, c) in enumerate(zip(values, colours)):
            if value is None:
                ax.text(x, limit * 0.05, "n/a", ha="center", va="bottom", fontsize=9, color=FAIL)
                continue
            ax.bar(x, value, width=0.6, color=c)
            ax.text(x, value + limit * 0.015, f"{value:.3f}", ha="center", va="bottom", fontsize=8)
        if p.threshold is not None:
            ax.axhline(p.threshold, color=THRESHOLD, linestyle="--", linewidth=1.2)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=7)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylim(0, limit)
        ax.tick_params(axis="y", labelsize=7)
        verdict = "" if p.passed is None else ("  PASS" if p.passed else "  FAIL")
        rule = ""
        if p.threshold is not None:
            direction = f"must beat {p.label.split()[-1]}" if p.kind == "mustBeat" and p.label else DIRECTION.get(p.kind, p.kind)
            rule = f"\n{direction} {p.threshold:.3f} (dashed)"
        ax.set_title(f"{p.metric}{verdict}{rule}", fontsize=8, color=colour if p.passed is not None else "black")
    if gate is not None:
        what = "gate passed" if gate.get("passed") else "gate FAILED"
    else:
        what = "before the gate"
    against = f", serving run {serving_run}" if serving_run else ""
    fig.suptitle(f"{spec} run {run}: {what}{against}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def render_loss(points: list[tuple[float, float]], run_id: str, serving_points: list[tuple[float, float]] | None = None,
                serving_run: str | None = None, spec: str | None = None) -> bytes:
    """loss.png's bytes: this run's loss per step, and the serving run's (dashed) when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if points:
        ax.plot([s for s, _ in points], [v for _, v in points], color=NEUTRAL, marker="o", markersize=3,
                label=f"run {run_id}")
    if serving_points:
        ax.plot([s for s, _ in serving_points], [v for _, v in serving_points], color=SERVING, linestyle="--",
                label=f"serving run {serving_run}")
    if not points and not serving_points:
        ax.text(0.5, 0.5, "metrics.jsonl logs no loss", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if points or serving_points:
        ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{spec + ' ' if spec else ''}training loss", fontsize=10)
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- files


def write_chart(data: dict, path: str | Path, gate: dict | None = None, serving: dict | None = None) -> Path:
    """chart.png on this machine (the evaluator's first chart, beside its report)."""
    path = Path(path)
    path.write_bytes(render_chart(data, gate, serving))
    return path


def write_pictures(store: "ArtifactStore", run_uri: str, report: dict, gate: dict,
                   serving_run_uri: str | None = None) -> None:
    """eval/chart.png and eval/loss.png of a gated run, through the artifact store: the gate's
    lines against the run serving at `serving_run_uri` (when another run serves)."""
    serving = _read_json(store, store.join(serving_run_uri, "eval/report.json")) if serving_run_uri else None
    if serving is not None and serving.get("runId") == report.get("runId"):
        serving = None
    store.put(store.join(run_uri, "eval/chart.png"), render_chart(report, gate, serving))
    ours = _read(store, store.join(run_uri, "metrics.jsonl"))
    theirs = _read(store, store.join(serving_run_uri, "metrics.jsonl")) if serving is not None and serving_run_uri else None
    store.put(store.join(run_uri, "eval/loss.png"),
              render_loss(loss_points(ours or b""), str(report.get("runId")), loss_points(theirs) if theirs else None,
                          str(serving.get("runId")) if serving else None, report.get("specName")))


def _read(store: "ArtifactStore", uri: str) -> bytes | None:
    try:
        return store.get(uri)
    except FileNotFoundError:
        return None


def _read_json(store: "ArtifactStore", uri: str) -> dict | None:
    raw = _read(store, uri)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


__all__ = ["Panel", "loss_points", "panels", "render_chart", "render_loss", "write_chart", "write_pictures"]
