"""Near-duplicate detection: the threshold means the exact Jaccard, and results do not depend on
how the work is spread over processes."""
from __future__ import annotations

import random

from data_helpers import WORDS

from controller.data import dedupe


def edited(words: list[str], positions: list[int]) -> str:
    out = list(words)
    for p in positions:
        out[p] = f"edit{p}"
    return " ".join(out)


def test_threshold_is_the_exact_jaccard():
    rng = random.Random(2)
    texts, pairs = [], []
    for k in range(40):
        words = rng.choices(WORDS, k=60)
        # one edit: J = 55/61 ~ 0.90; two far-apart edits: J = 52/64 ~ 0.81
        texts += [" ".join(words), edited(words, [30] if k % 2 else [15, 45])]
        pairs.append((2 * k, 2 * k + 1, dedupe.jaccard(texts[-2], texts[-1])))
    texts += [" ".join(rng.choices(WORDS, k=60)) for _ in range(200)]
    for threshold in (0.75, 0.85, 0.95):
        found = {(i, j) for i, j, _ in dedupe.near_duplicates(texts, threshold).edges}
        expected = {(i, j) for i, j, sim in pairs if sim >= threshold}
        assert found == expected, threshold
    assert {round(s, 2) for _, _, s in pairs} == {0.9, 0.81}


def test_signatures_do_not_depend_on_worker_count():
    rng = random.Random(3)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(0, 12))) for _ in range(dedupe.PARALLEL_MIN_TEXTS)]
    one = dedupe.signatures(texts, workers=1)
    two = dedupe.signatures(texts, workers=2)
    assert (one == two).all()
    assert (one[0] == dedupe.signatures(texts[:1], workers=1)[0]).all()  # a text's signature is its own


def test_short_and_empty_texts_are_comparable():
    assert dedupe.jaccard("", "") == 1.0
    assert dedupe.jaccard("hi there", "hi there") == 1.0
    result = dedupe.near_duplicates(["", "", "hello world", "hello world", "something else entirely here"], 0.85)
    assert [(i, j) for i, j, _ in result.edges] == [(0, 1), (2, 3)]
