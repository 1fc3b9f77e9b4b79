"""Format compliance: the share of the fine-tune's served answers that match the spec's JSON
Schema or regex, with the failing ones and why."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from controller.evaluate.datasets import EvalExample
from controller.evaluate.metrics import Checker
from controller.evaluate.suite import FINE_TUNED, MAX_LISTED, Generate, Section, clip, texts
from controller.seams.json import JsonObject, JsonValue


def compliance(outputs: Sequence[str], check: Checker, examples: Sequence[EvalExample] | None = None) -> JsonObject:
    """Share of outputs that comply, and the failing ones (index, line, output, why)."""
    failures: list[JsonValue] = []
    for i, out in enumerate(outputs):
        result = check(out)
        if not result.ok:
            failures.append({"index": i, "line": examples[i].line if examples else None, "output": clip(out),
                             "reason": result.reason})
    n = len(outputs)
    return {"compliance": (n - len(failures)) / n if n else math.nan, "compliant": n - len(failures), "examples": n,
            "failed": len(failures), "failures": failures[:MAX_LISTED]}


@dataclass(frozen=True)
class FormatSuite:
    check: Checker
    kind: str
    """jsonSchema, schemaPath or regex."""
    min: float
    name: str = "format"

    def run(self, examples: Sequence[EvalExample], generate: Generate) -> Section:
        data = compliance(texts(generate(FINE_TUNED, examples)), self.check, examples)
        data.update({"kind": self.kind, "min": self.min})
        value = data["compliance"]
        assert isinstance(value, float)
        return Section(self.name, data, {"format.compliance": value})
