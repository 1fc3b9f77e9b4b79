"""The seed's decision matrix as a lint (pure): is fine-tuning the right tool for what the
team says it needs, and is there enough data for it?

| Need                          | RAG       | Fine-tuning |
| Access to current company data| yes       | no          |
| Consistent output format/style| somewhat  | yes         |
| Domain-specific behaviour     | no        | yes         |
| Knowledge changes frequently  | yes       | no          |
| Reduce model size / cost      | no        | yes         |
| Answer needs source citation  | yes       | no          |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from controller.spec.dataset import COMPLEX_EXAMPLES, MIN_EXAMPLES, WARN_EXAMPLES
from controller.spec.finetune import FineTune

Level = Literal["error", "warning", "info"]

RAG_NEEDS = {"currentData", "citations", "frequentlyChangingKnowledge"}
FINE_TUNING_NEEDS = {"consistentFormat", "domainBehavior", "lowerCost", "lowerLatency", "onPremise"}
FULL_FINE_TUNE_EXAMPLES = 5000


@dataclass(frozen=True)
class Advice:
    level: Level
    code: str
    message: str
    field: str = ""

    def to_dict(self) -> dict:
        return {"level": self.level, "code": self.code, "message": self.message, "field": self.field}


def advise(spec: FineTune, examples: int | None) -> list[Advice]:
    """Notes for a pull request. `examples` is the dataset's example count when known."""
    s = spec.spec
    needs = set(s.needs)
    out: list[Advice] = []
    rag_only = needs & RAG_NEEDS
    has_corpus = s.serving is not None and s.serving.corpus is not None

    if not needs:
        out.append(Advice("info", "NeedsNotDeclared",
                          "declare spec.needs (e.g. consistentFormat, domainBehavior, currentData) so the advisor can "
                          "check that fine-tuning is the right tool", "spec.needs"))
    elif needs <= RAG_NEEDS:
        out.append(Advice("warning", "RagFitsBetter",
                          f"every declared need ({', '.join(sorted(needs))}) is one RAG serves and fine-tuning does not: "
                          "start with retrieval and better prompting, and fine-tune only for format or behaviour",
                          "spec.needs"))
    if rag_only and not has_corpus:
        out.append(Advice("warning", "NeedsRetrieval",
                          f"{', '.join(sorted(rag_only))} cannot come from fine-tuning (weights are frozen in time and "
                          "cite nothing): add serving.corpus so answers are retrieved from current documents",
                          "spec.serving.corpus"))
    if "consistentFormat" in needs and s.evaluation.format is None:
        out.append(Advice("warning", "NoFormatGate",
                          "consistentFormat is a goal but there is no evaluation.format gate: add a jsonSchema or regex "
                          "with min: 1.0 so a model that breaks the format never serves", "spec.evaluation.format"))

    if examples is None:
        out.append(Advice("info", "ExamplesUnknown",
                          "example count unknown at this revision: run `ftops data version` so the .dvc pointer records it",
                          "spec.dataset.path"))
    else:
        if examples < MIN_EXAMPLES:
            out.append(Advice("error", "TooFewExamples",
                              f"{examples} examples: fine-tuning needs at least {MIN_EXAMPLES} (seed); collect more, or use "
                              "prompting and RAG instead", "spec.dataset.path"))
        elif examples < WARN_EXAMPLES:
            out.append(Advice("warning", "FewExamples",
                              f"{examples} examples: {WARN_EXAMPLES}-1,000 are needed for reliable results", "spec.dataset.path"))
        if s.dataset.complexity == "complex" and examples < COMPLEX_EXAMPLES:
            out.append(Advice("warning", "ComplexTaskNeedsMore",
                              f"{examples} examples for a complex task: {COMPLEX_EXAMPLES:,}+ are recommended", "spec.dataset.path"))
        if examples < s.dataset.min_examples and examples >= MIN_EXAMPLES:
            out.append(Advice("error", "BelowMinExamples",
                              f"{examples} examples is below the spec's dataset.minExamples ({s.dataset.min_examples})",
                              "spec.dataset.minExamples"))
        if s.method.type == "full" and examples < FULL_FINE_TUNE_EXAMPLES:
            out.append(Advice("info", "ConsiderLora",
                              f"full fine-tuning pays off with {FULL_FINE_TUNE_EXAMPLES:,}+ examples; with {examples:,}, LoRA "
                              "reaches 90-95% of the quality for about a tenth of the cost", "spec.method.type"))
    return out
