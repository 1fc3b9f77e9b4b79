"""Regression on general tasks: the base and the fine-tune on the same suite, bare (the general
skills are the weights', not the corpus's: no sources are put in front of either), and which
items the fine-tune forgot."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from controller.evaluate import metrics as M
from controller.evaluate.datasets import EvalExample
from controller.evaluate.suite import BASE, FINE_TUNED, MAX_LISTED, Generate, Section, clip, prompt_text, texts
from controller.seams.json import JsonObject, JsonValue


def item_score(example: EvalExample, output: str) -> float:
    """1 when the answer appears in the output (normalised, as whole tokens); `"match": "exact"`
    in a suite line asks for normalised equality instead. Containment by default, because general
    chat models wrap short answers in a sentence."""
    if example.meta.get("match") == "exact":
        return M.exact_match(output, example.reference)
    return 1.0 if M.contains(output, example.reference) else 0.0


def compare_suite_scores(suite: Sequence[EvalExample], base_out: Sequence[str], ft_out: Sequence[str]) -> JsonObject:
    base_scores = [item_score(e, o) for e, o in zip(suite, base_out)]
    ft_scores = [item_score(e, o) for e, o in zip(suite, ft_out)]
    base, ft = M.mean(base_scores), M.mean(ft_scores)
    skills: dict[str, dict[str, list[float]]] = {}
    for e, b, f in zip(suite, base_scores, ft_scores):
        entry = skills.setdefault(str(e.meta.get("skill", "general")), {"base": [], "fineTuned": []})
        entry["base"].append(b)
        entry["fineTuned"].append(f)
    forgotten: list[JsonValue] = [
        {"id": str(e.meta.get("id", f"line {e.line}")), "prompt": clip(prompt_text(e)), "expected": e.reference,
         "base": clip(bo), "fineTuned": clip(fo)}
        for e, b, f, bo, fo in zip(suite, base_scores, ft_scores, base_out, ft_out) if b > f
    ]
    return {"examples": len(suite), "base": base, "fineTuned": ft, "drop": base - ft,
            "perSkill": {k: {"base": M.mean(v["base"]), "fineTuned": M.mean(v["fineTuned"])} for k, v in sorted(skills.items())},
            "forgotten": forgotten[:MAX_LISTED], "forgottenCount": len(forgotten)}


@dataclass(frozen=True)
class RegressionSuite:
    suite: str
    """'default' or the spec's repo path."""
    max_drop: float
    name: str = "regression"

    def run(self, examples: Sequence[EvalExample], generate: Generate) -> Section:
        fine_tuned = texts(generate(FINE_TUNED, examples, served=False))
        base = texts(generate(BASE, examples, served=False))
        data = compare_suite_scores(examples, base, fine_tuned)
        data.update({"suite": self.suite, "maxDrop": self.max_drop})
        drop = data["drop"]
        assert isinstance(drop, float)
        return Section(self.name, data, {"regression.drop": drop})
