"""The A/B comparison: the same served inputs (the first `samples` held-out examples, retrieval
and prompt included) through the fine-tune, its base and every reference model; each one's score
with the task metric, the fine-tune's win rates against each, and a few examples side by side.

The suite asks `generate` for every model by name; a reference model at an endpoint answers
through the gateway's engine client (controller.evaluate.reference.EndpointModel over
controller.serve.engine_client), the same OpenAI-API path that serves users, and a local one
through the evaluator's own batched generation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from controller.evaluate import metrics as M
from controller.evaluate.metrics import Checker
from controller.evaluate.datasets import EvalExample
from controller.evaluate.suite import BASE, FINE_TUNED, Generate, Section, clip, prompt_text, texts
from controller.seams.json import JsonObject, JsonValue


def head_to_head(examples: Sequence[EvalExample], outputs: dict[str, list[str]], score: Callable[[str, str], float],
                 check: Checker | None = None, show: int = 5) -> JsonObject:
    per_model = {name: [score(o, e.reference) for o, e in zip(outs, examples)] for name, outs in outputs.items()}
    models: JsonObject = {}
    for name, scores in per_model.items():
        entry: JsonObject = {"score": M.mean(scores)}
        if check is not None:
            entry["formatCompliance"] = M.mean([1.0 if check(o).ok else 0.0 for o in outputs[name]])
        models[name] = entry
    ours = per_model[FINE_TUNED]
    wins: JsonObject = {name: dict(M.win_rates(ours, scores)) for name, scores in per_model.items() if name != FINE_TUNED}
    side: list[JsonValue] = [
        {"index": i, "prompt": clip(prompt_text(e), 160), "expected": clip(e.reference, 120),
         "outputs": {name: clip(outs[i], 120) for name, outs in outputs.items()}}
        for i, e in enumerate(examples[:show])
    ]
    return {"samples": len(examples), "models": models, "winRates": wins, "sideBySide": side}


@dataclass(frozen=True)
class CompareSuite:
    metric: str
    fields: tuple[str, ...]
    must_beat: tuple[str, ...]
    requested: int
    references: tuple[str, ...]
    check: Checker | None
    name: str = "compare"

    def run(self, examples: Sequence[EvalExample], generate: Generate) -> Section:
        outputs = {FINE_TUNED: texts(generate(FINE_TUNED, examples)), BASE: texts(generate(BASE, examples))}
        for ref in self.references:
            outputs[ref] = texts(generate(ref, examples))
        data = head_to_head(examples, outputs, M.scorer(self.metric, self.fields), self.check)
        data.update({"metric": self.metric, "mustBeat": list(self.must_beat), "requested": self.requested})
        models = data["models"]
        assert isinstance(models, dict)
        metrics: dict[str, float] = {}
        for name, entry in models.items():
            assert isinstance(entry, dict) and isinstance(entry["score"], float)
            metrics[f"compare.{name}.score"] = entry["score"]
        return Section(self.name, data, metrics)
