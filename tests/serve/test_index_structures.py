"""An index built for one retriever and then asked for another (same corpus version): the
structures it already holds are kept, whichever retriever asks, and nothing is recomputed that
was not asked for. Found by the type checker: asking BM25 of a dense-only index rebuilt it with
no encoder loaded, and the rebuild failed on `None.encode`."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from serve_helpers import ANSWER_DOC, CORPUS, QUESTION


class CountingEncoder:
    """A small deterministic encoder (hashed bag of words, unit rows) that counts its calls, so
    the test sees whether embeddings were recomputed; MiniLM itself is covered in test_retrieval."""

    version = "hashed-bow@1"
    dim = 64

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "kb"
    root.mkdir()
    for name, text in CORPUS.items():
        (root / name).write_text(text)
    return root


def test_bm25_asked_of_a_dense_index_keeps_its_embeddings(corpus, tmp_path):
    from controller.serve.index import load_or_build

    cache = tmp_path / "cache"
    encoder = CountingEncoder()
    dense = load_or_build(corpus, "dense", cache, encoder_factory=lambda: encoder)
    assert dense.info["structures"] == ["dense"] and encoder.calls == 1
    embeddings = np.load(cache / dense.version / "embeddings.npy")

    bm25 = load_or_build(corpus, "bm25", cache)  # no encoder is loaded for bm25
    assert bm25.info["rebuilt"] and bm25.info["structures"] == ["bm25", "dense"]
    assert bm25.search(QUESTION, 1)[0][0].path == ANSWER_DOC
    on_disk = json.loads((cache / bm25.version / "index.json").read_text())
    assert on_disk["encoder"] == CountingEncoder.version
    assert np.array_equal(np.load(cache / bm25.version / "embeddings.npy"), embeddings)

    again = load_or_build(corpus, "hybrid", cache, encoder_factory=lambda: encoder)
    assert not again.info["rebuilt"] and encoder.calls == 1  # both structures were already there


def test_bm25_index_without_embeddings_is_built_without_an_encoder(corpus, tmp_path):
    """An index.json that lists dense but lost its embeddings file: BM25 is built, dense dropped
    from the structures (a later dense request builds it again with its encoder)."""
    from controller.serve.index import load_or_build

    cache = tmp_path / "cache"
    encoder = CountingEncoder()
    dense = load_or_build(corpus, "dense", cache, encoder_factory=lambda: encoder)
    (cache / dense.version / "embeddings.npy").unlink()

    bm25 = load_or_build(corpus, "bm25", cache)
    assert bm25.info["structures"] == ["bm25"] and bm25.search(QUESTION, 1)[0][0].path == ANSWER_DOC
    hybrid = load_or_build(corpus, "hybrid", cache, encoder_factory=lambda: encoder)
    assert hybrid.info["rebuilt"] and hybrid.info["structures"] == ["bm25", "dense"] and encoder.calls == 2
