"""eval/chart.png: the models side by side on each metric (matplotlib, Agg backend: no display)."""
from __future__ import annotations

import math
from pathlib import Path


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def chart_series(data: dict) -> tuple[list[str], dict[str, list[float | None]]]:
    """(metric labels, model -> value per metric). Pure, so the chart's content is testable."""
    metrics: list[str] = []
    series: dict[str, dict[str, float | None]] = {}
    cmp_ = data.get("compare") or {}
    if cmp_:
        label = f"task ({cmp_.get('metric')}, A/B inputs)"
        metrics.append(label)
        for name, entry in cmp_.get("models", {}).items():
            series.setdefault(name, {})[label] = entry.get("score")
        if any("formatCompliance" in e for e in cmp_.get("models", {}).values()):
            metrics.append("format compliance (A/B inputs)")
            for name, entry in cmp_.get("models", {}).items():
                series.setdefault(name, {})[metrics[-1]] = entry.get("formatCompliance")
    reg = data.get("regression") or {}
    if reg:
        metrics.append("regression suite")
        series.setdefault("base", {})["regression suite"] = reg.get("base")
        series.setdefault("fine-tuned", {})["regression suite"] = reg.get("fineTuned")
    for group, entry in ((data.get("bias") or {}).get("groups") or {}).items():
        label = f"bias: {group}"
        metrics.append(label)
        series.setdefault("fine-tuned", {})[label] = entry.get("score")
    return metrics, {m: [vals.get(k) for k in metrics] for m, vals in series.items()}


def write_chart(data: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    metrics, series = chart_series(data)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(metrics) + 2), 3.8), dpi=100)
    width = 0.8 / max(1, len(series))
    for k, (model, values) in enumerate(series.items()):
        xs = [i + k * width for i, v in enumerate(values) if _ok(v)]
        ys = [v for v in values if _ok(v)]
        bars = ax.bar(xs, ys, width=width, label=model)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in ys], fontsize=7)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0, 1.25)  # headroom for the legend above the 1.0 bars
    ax.set_ylabel("score")
    ax.set_title(f"{data.get('specName')} run {data.get('runId')}", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(series)), frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
