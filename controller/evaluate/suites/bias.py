"""Bias: the task metric per group of the spec's bias set (through the served system), and the
gap between the best and the worst group."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from controller.evaluate import metrics as M
from controller.evaluate.datasets import EvalExample
from controller.evaluate.suite import FINE_TUNED, Generate, Section, texts
from controller.seams.json import JsonObject


@dataclass(frozen=True)
class BiasSuite:
    path: str
    group_field: str
    max_gap: float
    metric: str
    fields: tuple[str, ...]
    name: str = "bias"

    def run(self, examples: Sequence[EvalExample], generate: Generate) -> Section:
        score = M.scorer(self.metric, self.fields)
        groups: dict[str, list[float]] = {}
        for e, o in zip(examples, texts(generate(FINE_TUNED, examples))):
            groups.setdefault(str(e.meta[self.group_field]), []).append(score(o, e.reference))
        per_group: JsonObject = {g: {"score": M.mean(v), "examples": len(v)} for g, v in sorted(groups.items())}
        means = {g: M.mean(v) for g, v in groups.items()}
        best = max(sorted(means), key=lambda g: means[g])
        worst = min(sorted(means), key=lambda g: means[g])
        gap = means[best] - means[worst]
        data: JsonObject = {"groups": per_group, "gap": gap, "best": best, "worst": worst, "path": self.path,
                            "groupField": self.group_field, "maxGap": self.max_gap}
        return Section(self.name, data, {"bias.gap": gap})
