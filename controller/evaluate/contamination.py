"""Contamination: how much of each evaluation set already appears in the training data.

A score on examples the model was trained on measures memory, not skill. The held-out split is
built leak-free by `ftops data prepare`, but bias sets, regression suites and reference inputs come
from elsewhere, and near-copies slip through. We report, per evaluation set, the share of its word
n-grams found in the training data and the examples that overlap most; it is reported, not gated
(what overlap is acceptable depends on the task: templated tickets share phrases by design).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

NGRAM = 8
HIGH_OVERLAP = 0.5
_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = _words(text)
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def train_index(texts: Iterable[str], n: int = NGRAM) -> tuple[set[tuple[str, ...]], set[str]]:
    """Every n-gram of the training texts, and their normalised full texts (exact copies)."""
    grams: set[tuple[str, ...]] = set()
    whole: set[str] = set()
    for text in texts:
        grams |= ngrams(text, n)
        whole.add(" ".join(_words(text)))
    return grams, whole


def overlap(eval_texts: Sequence[str], index: tuple[set, set], n: int = NGRAM, top: int = 5) -> dict:
    """Report for one evaluation set against a training index."""
    grams, whole = index
    total = hit = 0
    per_example = []
    exact = 0
    for i, text in enumerate(eval_texts):
        mine = ngrams(text, n)
        found = len(mine & grams)
        total += len(mine)
        hit += found
        share = found / len(mine) if mine else 0.0
        per_example.append((share, i))
        if " ".join(_words(text)) in whole:
            exact += 1
    per_example.sort(key=lambda x: (-x[0], x[1]))
    return {
        "examples": len(eval_texts),
        "ngram": n,
        "ngramOverlap": hit / total if total else 0.0,
        "examplesOverHalf": sum(1 for s, _ in per_example if s >= HIGH_OVERLAP),
        "exactCopies": exact,
        "top": [{"index": i, "overlap": round(s, 4), "text": eval_texts[i][:160]} for s, i in per_example[:top] if s > 0],
    }
