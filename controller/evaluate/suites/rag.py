"""Retrieval and citations, measured on the served system for the held-out examples that name
their gold source(s) (the `sources` list of a data line: document paths in the corpus).

- recall@k: the retriever's topK for the question holds a chunk of a gold document;
- citation accuracy: the answer cites (its JSON `source` field) at least one source, and every
  source it cites is a gold document that was in its prompt (a citation of a distractor, of a
  document it was not shown, or no citation, is wrong); `citationAccuracyWhenRetrieved` is the
  same over the examples whose gold source was in the prompt, which tells a retrieval failure
  from a model that cites the wrong source;
- groundedness: for the examples whose reference answer states facts (the spec's `facts`
  fields, default `answer`), the share of answers whose every fact field is found, as a run of
  whole normalised tokens (the normalisation of exact_match), in the text of the sources it
  cites that the prompt showed. A fact the cited source does not contain, a fact field that is
  missing or empty, an answer that is not JSON or cites nothing shown: not grounded. This checks
  that the answer copies its facts from what it cites, which is what lets the corpus, not the
  weights, decide them (a changed document changes the answer without retraining).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from controller.evaluate import metrics as M
from controller.evaluate.datasets import EvalExample
from controller.evaluate.suite import FINE_TUNED, MAX_LISTED, Answer, Generate, Section, clip, prompt_text
from controller.seams.json import JsonObject, JsonValue
from controller.serve.prompt import cited_ids

GOLD_FIELD = "sources"
"""The data line's key naming its gold source(s) (controller.chat)."""


def gold_sources(example: EvalExample) -> tuple[str, ...]:
    value = example.meta.get(GOLD_FIELD)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def grounded(answer: Answer, facts: Sequence[str], reference: dict) -> tuple[bool, str]:
    """(every fact field of the reference is found in the cited, shown sources; why not)."""
    parsed = M.parse_json_object(answer.text)
    if parsed is None:
        return False, "the answer is not a JSON object"
    cited = [s for s in answer.sources if s.id in set(cited_ids(answer.text))]
    if not cited:
        return False, "cites no source it was shown"
    text = " ".join(s.text for s in cited)
    for name in facts:
        if name not in reference:
            continue
        value = parsed.get(name)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not M.tokens(str(value)):
            return False, f"no {name!r} in the answer"
        if not M.contains(text, str(value)):
            return False, f"{name} {clip(str(value), 60)!r} is not in {', '.join(sorted({s.id for s in cited}))}"
    return True, ""


@dataclass(frozen=True)
class RagSuite:
    facts: tuple[str, ...]
    top_k: int
    name: str = "rag"

    def run(self, examples: Sequence[EvalExample], generate: Generate) -> Section:
        answers = generate(FINE_TUNED, examples)
        recall: list[float] = []
        cites: list[float] = []
        cites_shown: list[float] = []
        ground: list[float] = []
        failures: list[JsonValue] = []
        for i, (example, answer) in enumerate(zip(examples, answers)):
            gold = set(gold_sources(example))
            reasons: list[str] = []
            shown = {s.id for s in answer.sources}
            if gold:
                found = bool(gold & set(answer.retrieved))
                recall.append(1.0 if found else 0.0)
                if not found:
                    reasons.append("no gold source in the topK retrieved")
                cited = cited_ids(answer.text)
                right = bool(cited) and all(c in gold and c in shown for c in cited)
                cites.append(1.0 if right else 0.0)
                if gold & shown:
                    cites_shown.append(1.0 if right else 0.0)
                if not right:
                    reasons.append(f"cites {cited or 'nothing'}, gold {sorted(gold)}")
            reference = M.parse_json_object(example.reference)
            if reference is not None and any(f in reference for f in self.facts):
                ok, why = grounded(answer, self.facts, reference)
                ground.append(1.0 if ok else 0.0)
                if not ok:
                    reasons.append(why)
            if reasons:
                gold_ids: list[JsonValue] = [*sorted(gold)]
                retrieved: list[JsonValue] = [*answer.retrieved]
                failures.append({"index": i, "line": example.line, "prompt": clip(prompt_text(example)), "gold": gold_ids,
                                 "retrieved": retrieved, "output": clip(answer.text), "reason": "; ".join(reasons)})
        data: JsonObject = {
            "examples": len(examples), "withGold": len(recall), "withFacts": len(ground), "topK": self.top_k,
            "facts": [*self.facts], "recallAtK": M.mean(recall), "citationAccuracy": M.mean(cites),
            "citationAccuracyWhenRetrieved": M.mean(cites_shown), "groundedness": M.mean(ground),
            "failed": len(failures), "failures": failures[:MAX_LISTED],
        }
        metrics = {"rag.recallAtK": M.mean(recall), "rag.citationAccuracy": M.mean(cites),
                   "rag.groundedness": M.mean(ground)}
        return Section(self.name, data, metrics)
