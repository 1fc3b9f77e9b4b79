"""Task accuracy: the fine-tune's answers on the held-out split, through the served system,
scored with the spec's task metric against each example's reference answer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from controller.errors import PermanentError
from controller.evaluate import metrics as M
from controller.evaluate.datasets import EvalExample
from controller.evaluate.suite import FINE_TUNED, MAX_LISTED, Generate, Section, clip, prompt_text, texts
from controller.seams.json import JsonObject, JsonValue


@dataclass(frozen=True)
class TaskSuite:
    metric: str
    fields: tuple[str, ...]
    min: float
    where: str
    """The test split's path, named in a scoring error."""
    name: str = "task"

    @property
    def score(self) -> Callable[[str, str], float]:
        return M.scorer(self.metric, self.fields)

    def run(self, examples: Sequence[EvalExample], generate: Generate) -> Section:
        outputs = texts(generate(FINE_TUNED, examples))
        refs = [e.reference for e in examples]
        try:
            scores = [self.score(o, r) for o, r in zip(outputs, refs)]
        except ValueError as exc:
            raise PermanentError(f"evaluation.task: {exc} ({self.where})") from None
        value = M.mean(scores)
        failures: list[JsonValue] = [
            {"index": i, "line": examples[i].line, "prompt": clip(prompt_text(examples[i])), "expected": clip(refs[i]),
             "output": clip(outputs[i]), "score": round(s, 4)}
            for i, s in enumerate(scores) if s < 1.0
        ]
        data: JsonObject = {"metric": self.metric, "score": value, "examples": len(examples), "min": self.min,
                            "failures": failures[:MAX_LISTED], "failed": len(failures)}
        if self.metric == "json_field_match":
            per_field: dict[str, list[float]] = {}
            for o, r in zip(outputs, refs):
                for f, v in M.json_field_scores(o, r, self.fields).items():
                    per_field.setdefault(f, []).append(v)
            data["perField"] = {f: M.mean(v) for f, v in sorted(per_field.items())}
        return Section(self.name, data, {f"task.{self.metric}": value})
