"""How the fake provider's models answer: deterministically, from what they were trained on.

A fine-tuned model answers a prompt with the assistant turn of the training example whose user
turn is most like the prompt's last user turn (cosine over words, weighted by how rare each word
is in the training file, common words left out): it has "learned" the task as far as nearest neighbours generalise, so a
held-out example gets its neighbour's label, right or wrong. A prompt unlike anything it was
trained on, and every prompt to a base model, is answered from the provider's general knowledge
the same way, else with a polite non-answer. `noise` makes that share of prompts (chosen by a
hash of model and prompt, so the same prompt always gets the same answer) come back wrong, so an
evaluation gate can pass or fail honestly.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

WORD = re.compile(r"[a-z0-9]+")
SIMILAR = 0.3
"""Below this cosine a prompt is not like the example: the model does not know it."""
FALLBACK = "I can help with that. Could you share a few more details?"
WRONG = "I am not sure which team handles this."


def estimate_tokens(text: str) -> int:
    """About four characters a token, as providers' own rough counts go."""
    return max(1, math.ceil(len(text) / 4))


STOP = frozenset("a an and are as at be but by can do for from has have hi hello hey how i in is it its me my of on "
                 "or our please so that the this to was we what when where which who why with you your".split())


def words(text: str) -> list[str]:
    return [w for w in WORD.findall(text.lower()) if w not in STOP]


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    tokens: int

    @classmethod
    def from_messages(cls, messages: Sequence[dict[str, Any]]) -> "Example":
        user = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        answer = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "assistant"), "")
        return cls(user, answer, sum(estimate_tokens(str(m.get("content") or "")) for m in messages))


class Answerer:
    def __init__(self, model: str, trained: Sequence[Example], knowledge: Sequence[Example], noise: float) -> None:
        self.model = model
        self.trained = list(trained)
        self.knowledge = list(knowledge)
        self.noise = noise

    def answer(self, messages: Sequence[dict[str, Any]]) -> str:
        question = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        if self.noise and _share(self.model, question) < self.noise:
            return WRONG
        for examples in (self.trained, self.knowledge):
            found = nearest(question, examples)
            if found is not None:
                return found.answer
        return FALLBACK


def _share(model: str, question: str) -> float:
    digest = hashlib.sha256(f"{model}\n{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def nearest(question: str, examples: Sequence[Example]) -> Example | None:
    if not examples:
        return None
    docs = [Counter(words(e.question)) for e in examples]
    df: Counter[str] = Counter()
    for d in docs:
        df.update(d.keys())
    n = len(docs)

    def vector(counts: Counter[str]) -> dict[str, float]:  # a word never seen weighs as one seen once
        return {w: c * (math.log((1 + n) / (1 + max(1, df[w]))) + 1) for w, c in counts.items()}

    query = vector(Counter(words(question)))
    norm_q = math.sqrt(sum(v * v for v in query.values())) or 1.0
    best, best_score = None, SIMILAR
    for example, doc in zip(examples, docs):
        vec = vector(doc)
        dot = sum(query.get(w, 0.0) * v for w, v in vec.items())
        score = dot / (norm_q * (math.sqrt(sum(v * v for v in vec.values())) or 1.0))
        if score > best_score + 1e-12:
            best, best_score = example, score
    return best
