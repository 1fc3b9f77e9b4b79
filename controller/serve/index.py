"""The corpus index: chunks + retriever structures, persisted under `<cache>/<corpus version>/`
and recording the corpus version it was built from.

`load_or_build` is level-triggered: it computes the corpus version from the documents, reuses the
index stored under that version, and otherwise builds and stores a new one (atomically: built in
a temporary folder, then renamed, so a crash never leaves a half index that looks complete).
A changed corpus therefore re-indexes on the next start or reload without retraining anything.
No pickle: chunks are JSONL, BM25 is bm25s's numpy arrays, embeddings are a .npy without pickle.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from controller.errors import PermanentError
from controller.serve.corpus import CHUNKER_VERSION, MAX_CHARS, OVERLAP, Chunk, corpus_version, dvc_md5, load_chunks
from controller.serve.retrievers import BM25Retriever, DenseRetriever, Hit, HybridRetriever, Retriever

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

RETRIEVERS = ("bm25", "dense", "hybrid")


class TextEncoder(Protocol):
    """What dense retrieval needs of an embedding model (controller.serve.embed.Encoder; a test's
    small stand-in): unit-length float32 rows, and a version that changes with the model."""

    version: str

    def encode(self, texts: list[str]) -> "NDArray[np.float32]": ...


@dataclass
class CorpusIndex:
    chunks: list[Chunk]
    retriever: Retriever
    info: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.info["corpusVersion"]

    def search(self, query: str, k: int) -> list[tuple[Chunk, float]]:
        return [(self.chunks[h.index], h.score) for h in self.retriever.search(query, k)]


def _needs(kind: str) -> tuple[bool, bool]:
    if kind not in RETRIEVERS:
        raise PermanentError(f"serving.retriever: '{kind}' is not one of {', '.join(RETRIEVERS)}")
    return kind in ("bm25", "hybrid"), kind in ("dense", "hybrid")


def _retriever(kind: str, bm25: BM25Retriever | None, dense: DenseRetriever | None) -> Retriever:
    if kind == "bm25" and bm25 is not None:
        return bm25
    if kind == "dense" and dense is not None:
        return dense
    if kind == "hybrid" and bm25 is not None and dense is not None:
        return HybridRetriever(bm25, dense)
    raise ValueError(f"retriever {kind} without its structures (bm25: {bm25 is not None}, dense: {dense is not None})")


def load_or_build(corpus_dir: str | Path, kind: str, cache_dir: str | Path,
                  encoder_factory: Callable[[], TextEncoder] | None = None, max_chars: int = MAX_CHARS, overlap: int = OVERLAP) -> CorpusIndex:
    """The index for the corpus as it is now; built (and stored) only when its version is new.
    `encoder_factory()` returns a controller.serve.embed.Encoder (dense/hybrid only)."""
    import numpy as np

    corpus_dir = Path(corpus_dir).resolve()
    need_bm25, need_dense = _needs(kind)
    version = corpus_version(corpus_dir, max_chars, overlap)
    target = Path(cache_dir) / version
    encoder: TextEncoder | None = None
    if need_dense:
        from controller.serve.embed import Encoder

        encoder = (encoder_factory or Encoder)()
    info_path = target / "index.json"
    info = _read_json(info_path)
    have = set(info.get("structures", [])) if info else set()
    want = {s for s, on in (("bm25", need_bm25), ("dense", need_dense)) if on}
    if info is None or not want <= have:
        _build_into(corpus_dir, target, version, want | have, encoder, max_chars, overlap)
        info = _read_json(info_path)
        if info is None:
            raise PermanentError(f"index at {target} could not be written")
        built = True
    else:
        built = False
    chunks = [Chunk.from_dict(json.loads(line)) for line in (target / "chunks.jsonl").read_text().splitlines() if line]
    bm25 = BM25Retriever.load(target / "bm25") if need_bm25 else None
    dense = None
    if encoder is not None:  # need_dense
        if info.get("encoder") != encoder.version:
            _build_into(corpus_dir, target, version, want | have, encoder, max_chars, overlap)  # encoder changed
            info = _read_json(info_path) or info
            built = True
        dense = DenseRetriever(np.load(target / "embeddings.npy", allow_pickle=False), encoder)
    info = {**info, "retriever": kind, "rebuilt": built, "corpusDir": str(corpus_dir)}
    return CorpusIndex(chunks, _retriever(kind, bm25, dense), info)


def _build_into(corpus_dir: Path, target: Path, version: str, structures: set[str], encoder: TextEncoder | None,
                max_chars: int, overlap: int) -> None:
    import numpy as np

    started = time.monotonic()
    chunks = load_chunks(corpus_dir, max_chars, overlap)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version[:12]}-", dir=target.parent))
    try:
        with (tmp / "chunks.jsonl").open("w", encoding="utf-8") as fh:
            for c in chunks:
                fh.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
        info: dict[str, Any] = {
            "corpusVersion": version, "corpusDvcMd5": dvc_md5(corpus_dir), "chunker": CHUNKER_VERSION,
            "maxChars": max_chars, "overlap": overlap, "chunks": len(chunks),
            "documents": len({c.path for c in chunks}), "structures": sorted(structures),
        }
        if "bm25" in structures:
            BM25Retriever.build([c.text for c in chunks]).save(tmp / "bm25")
        if "dense" in structures and encoder is not None:
            np.save(tmp / "embeddings.npy", encoder.encode([c.text for c in chunks]), allow_pickle=False)
            info["encoder"] = encoder.version
        elif "dense" in structures:
            # BM25 added to an index that has embeddings, with no encoder loaded (retriever bm25):
            # keep them; the same corpus version means the same chunks in the same order.
            old_info = _read_json(target / "index.json") or {}
            if (target / "embeddings.npy").is_file() and old_info.get("encoder"):
                shutil.copy2(target / "embeddings.npy", tmp / "embeddings.npy")
                info["encoder"] = old_info["encoder"]
            else:
                info["structures"] = sorted(structures - {"dense"})
        info["buildSeconds"] = round(time.monotonic() - started, 3)
        (tmp / "index.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


__all__ = ["CorpusIndex", "Hit", "RETRIEVERS", "load_or_build"]
