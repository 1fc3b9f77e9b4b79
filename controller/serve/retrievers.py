"""Retrievers over a list of chunks: BM25 (bm25s), dense (MiniLM cosine), hybrid (reciprocal rank
fusion of the two). Each returns `Hit(index, score)` best first; the index points into the chunk
list the retriever was built over.

Why RRF for hybrid: BM25 scores and cosine similarities live on unrelated scales; fusing ranks
(score = sum 1 / (60 + rank)) needs no calibration and is robust when one side finds nothing.

BM25 queries go through `get_scores` on the bm25s sparse index plus an argpartition instead of
`retrieve`, which spins up a thread pool and progress bars per call: one query at 100k chunks
stays in the low milliseconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

TOKEN = re.compile(r"(?u)\b\w\w+\b")
RRF_K = 60


@dataclass(frozen=True)
class Hit:
    index: int
    score: float


class Retriever(Protocol):
    kind: str

    def search(self, query: str, k: int) -> list[Hit]: ...


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def _stem(token: str) -> str:
    """A plural-only stemmer ("refunds" -> "refund"): cheap, deterministic, no extra dependency."""
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def tokenize(text: str, stopwords: frozenset[str]) -> list[str]:
    return [_stem(t) for t in TOKEN.findall(text.lower()) if t not in stopwords]


def _top(scores, k: int) -> list[Hit]:
    import numpy as np

    n = scores.shape[0]
    if n == 0 or k <= 0:
        return []
    k = min(k, n)
    idx = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    idx = idx[np.lexsort((idx, -scores[idx]))]  # score desc, then index asc: deterministic ties
    return [Hit(int(i), float(scores[i])) for i in idx]


class BM25Retriever:
    kind = "bm25"

    def __init__(self, model, stopwords: frozenset[str]) -> None:
        self.model = model
        self.stopwords = stopwords
        self.vocab = model.vocab_dict

    @classmethod
    def build(cls, texts: Sequence[str]) -> "BM25Retriever":
        import bm25s

        stop = _stopwords()
        model = bm25s.BM25()
        model.index([tokenize(t, stop) for t in texts], show_progress=False)
        return cls(model, stop)

    def save(self, directory: Path) -> None:
        self.model.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path) -> "BM25Retriever":
        import bm25s

        return cls(bm25s.BM25.load(str(directory), show_progress=False, verbosity=0), _stopwords())

    def search(self, query: str, k: int) -> list[Hit]:
        tokens = [t for t in tokenize(query, self.stopwords) if t in self.vocab]
        if not tokens:
            return []
        hits = _top(self.model.get_scores(tokens), k)
        return [h for h in hits if h.score > 0]


class DenseRetriever:
    kind = "dense"

    def __init__(self, embeddings, encoder) -> None:
        self.embeddings = embeddings  # (n, dim) float32, unit rows
        self.encoder = encoder

    def search(self, query: str, k: int) -> list[Hit]:
        if not query.strip():
            return []
        q = self.encoder.encode([query])[0]
        return _top(self.embeddings @ q, k)


class HybridRetriever:
    kind = "hybrid"

    def __init__(self, bm25: BM25Retriever, dense: DenseRetriever, depth: int = 4) -> None:
        self.bm25, self.dense, self.depth = bm25, dense, depth

    def search(self, query: str, k: int) -> list[Hit]:
        n = max(k * self.depth, 20)
        fused: dict[int, float] = {}
        for hits in (self.bm25.search(query, n), self.dense.search(query, n)):
            for rank, hit in enumerate(hits):
                fused[hit.index] = fused.get(hit.index, 0.0) + 1.0 / (RRF_K + rank + 1)
        ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [Hit(i, s) for i, s in ranked]
