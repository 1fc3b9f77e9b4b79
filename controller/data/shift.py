"""How a new version of a dataset moved its answers against the previous one (pure).

Before training, the plan cannot know whether new data is better; what it can say honestly is
how the answers moved. Two measures, over the examples of both versions:

- **relabelled**: examples whose prompt (every message but the last) is in both versions and
  whose answer (the last, assistant message) changed. Correcting a few labels moves a few;
  scrambling them moves most.
- **label distribution** (when the answers are labels: few distinct answers, each repeated):
  each label's share in base and head, and the total variation distance between the two
  distributions (half the sum of the share differences: 0 = same mix, 1 = disjoint).

Neither tells a correction from a regression; both are reported as warnings so a reviewer
looks, and the expert review (the seed's 10% sample at 95% approval) covers the changed
examples before training, since a changed answer is a new example hash without a verdict.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from controller.data.check import Record

RELABEL_WARN_SHARE = 0.05
"""Warn when at least this share of the shared prompts changed their answer."""
DISTANCE_WARN = 0.10
"""Warn when the label distribution moved at least this far (total variation distance)."""
MAX_LABELS = 50
"""Answers are treated as labels when there are at most this many distinct ones..."""
MIN_REPEATS = 3.0
"""...and each appears at least this often on average."""


@dataclass(frozen=True)
class AnswerShift:
    base_examples: int
    head_examples: int
    shared_prompts: int
    relabelled: int
    labels: dict[str, tuple[float, float]] | None
    """label -> (share in base, share in head), when the answers are labels."""
    distance: float | None
    samples: tuple[tuple[str, str, str], ...]
    """Up to three (prompt, base answer, head answer) of relabelled examples."""

    @property
    def relabelled_share(self) -> float:
        return self.relabelled / self.shared_prompts if self.shared_prompts else 0.0

    def warnings(self) -> list[str]:
        out = []
        if self.relabelled and self.relabelled_share >= RELABEL_WARN_SHARE:
            out.append(
                f"{self.relabelled} of the {self.shared_prompts} examples whose prompt is in both versions changed their answer "
                f"({self.relabelled_share:.0%}): a relabelling. The plan cannot tell a correction from a regression: have the "
                "expert review cover these examples (they need new verdicts) and compare the evaluation with the current run's"
            )
        if self.distance is not None and self.distance >= DISTANCE_WARN and self.labels:
            moved = sorted(self.labels.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))[:4]
            mix = ", ".join(f"{_short(label)} {a:.0%} → {b:.0%}" for label, (a, b) in moved)
            out.append(f"the label distribution moved by {self.distance:.2f} (total variation distance; warned from "
                       f"{DISTANCE_WARN:.2f}): {mix}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseExamples": self.base_examples, "headExamples": self.head_examples, "sharedPrompts": self.shared_prompts,
            "relabelled": self.relabelled, "relabelledShare": round(self.relabelled_share, 4),
            "labels": {k: {"base": round(a, 4), "head": round(b, 4)} for k, (a, b) in (self.labels or {}).items()} or None,
            "distance": round(self.distance, 4) if self.distance is not None else None,
            "samples": [{"prompt": p, "base": a, "head": b} for p, a, b in self.samples],
        }


def _split(record: Record) -> tuple[str, str, str]:
    """(prompt key, prompt preview, answer) of one example."""
    messages = record.example["messages"]
    last = messages[-1]
    answer = last.get("content") if isinstance(last.get("content"), str) else str(last.get("tool_calls"))
    prompt = messages[:-1]
    key = hashlib.sha256(repr([(m.get("role"), m.get("content")) for m in prompt]).encode()).hexdigest()
    user = next((m.get("content") for m in reversed(prompt) if m.get("role") == "user"), "")
    return key, str(user), str(answer)


def answer_shift(base: Sequence[Record], head: Sequence[Record]) -> AnswerShift:
    """Compare the answers of two versions of a dataset (valid records of each)."""
    old: dict[str, str] = {}
    for rec in base:
        key, _, answer = _split(rec)
        old.setdefault(key, answer)
    shared = relabelled = 0
    samples: list[tuple[str, str, str]] = []
    head_answers: list[str] = []
    seen: set[str] = set()
    for rec in head:
        key, preview, answer = _split(rec)
        head_answers.append(answer)
        if key in seen or key not in old:
            continue
        seen.add(key)
        shared += 1
        if old[key] != answer:
            relabelled += 1
            if len(samples) < 3:
                samples.append((_short(preview, 80), _short(old[key], 80), _short(answer, 80)))
    base_counts = Counter(_split(r)[2] for r in base)
    head_counts = Counter(head_answers)
    labels: dict[str, tuple[float, float]] | None = None
    distance: float | None = None
    distinct = set(base_counts) | set(head_counts)
    total = len(base) + len(head)
    if distinct and len(distinct) <= MAX_LABELS and total / len(distinct) >= MIN_REPEATS and base and head:
        labels = {label: (base_counts[label] / len(base), head_counts[label] / len(head)) for label in sorted(distinct)}
        distance = 0.5 * sum(abs(b - a) for a, b in labels.values())
    return AnswerShift(len(base), len(head), shared, relabelled, labels, distance, tuple(samples))


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
