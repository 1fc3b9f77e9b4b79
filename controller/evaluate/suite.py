"""What every evaluation suite is: one signature, so adding a metric means adding one suite.

A suite takes the examples it measures and a `Generate` function, and returns its `Section` of
the report (the section itself plus the flat metrics the gate reads). It never loads a model,
reads a file or knows which other suites run: `Generate` answers any example with any model
(the fine-tune, its base, a reference model), through the served system (retrieval + prompt
builder + generation limits, controller.evaluate.served) or bare, and remembers its answers, so
the fine-tune's answers on the test split are generated once and shared by every suite that
needs them. The suites are in controller.evaluate.suites; controller.evaluate.run builds them
from the spec and puts their sections together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

from controller.evaluate.datasets import EvalExample
from controller.seams.json import JsonObject

FINE_TUNED = "fine-tuned"
BASE = "base"
MAX_LISTED = 10
"""Failing examples listed per section: enough to see the pattern, small enough for a PR comment."""


@dataclass(frozen=True)
class Source:
    """One source the served system put in front of the model."""

    id: str
    """The source id the prompt shows and an answer cites (the document's path in the corpus)."""
    chunk_id: str
    text: str
    score: float


@dataclass(frozen=True)
class Answer:
    """A model's answer to one example, with what the served system showed it."""

    text: str
    sources: tuple[Source, ...] = ()
    """The sources in the prompt (after fitting the model's context), best first; () bare."""
    retrieved: tuple[str, ...] = ()
    """The ids of the topK the retriever returned, best first (what recall@k measures)."""


class Generate(Protocol):
    """Answers `examples` with `model` ("fine-tuned", "base" or a reference name), in order.
    `served`: through the served configuration (the default: what the gate judges is what
    serves); False: the prompts as written (the regression suite's general tasks)."""

    def __call__(self, model: str, examples: Sequence[EvalExample], *, served: bool = True) -> list[Answer]: ...


@dataclass(frozen=True)
class Section:
    """A suite's part of the report: `data` is report[`name`]; `metrics` are the flat numbers
    the gate reads (`task.exact_match`, `rag.citationAccuracy`...). NaN means 'could not be
    measured' and is written as null, which never passes a gate."""

    name: str
    data: JsonObject
    metrics: Mapping[str, float] = field(default_factory=dict)


class Suite(Protocol):
    @property
    def name(self) -> str:
        """The report section it writes."""
        ...

    def run(self, examples: Sequence[EvalExample], generate: Generate) -> Section: ...


def clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def prompt_text(example: EvalExample) -> str:
    """The user's last message: what a reader recognises an example by."""
    return next((m["content"] for m in reversed(example.prompt) if m["role"] == "user"), example.prompt[-1]["content"])


def texts(answers: Sequence[Answer]) -> list[str]:
    return [a.text for a in answers]
