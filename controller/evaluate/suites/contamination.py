"""Contamination: how much of each evaluation set is already in the training data (word n-gram
overlap, exact copies). Reported, not gated; it generates nothing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from controller.evaluate.contamination import overlap, train_index
from controller.evaluate.datasets import EvalExample
from controller.evaluate.suite import Generate, Section
from controller.seams.json import JsonObject


@dataclass(frozen=True)
class ContaminationSuite:
    train_texts: tuple[str, ...]
    others: Mapping[str, Sequence[EvalExample]]
    """The other sets checked besides the test split: bias, regression."""
    name: str = "contamination"

    def run(self, examples: Sequence[EvalExample], generate: Generate) -> Section:
        index = train_index(list(self.train_texts))
        sets = {"test": examples, **{k: v for k, v in self.others.items() if v}}
        data: JsonObject = {name: dict(overlap([e.text() for e in exs], index)) for name, exs in sets.items()}
        return Section(self.name, data)
