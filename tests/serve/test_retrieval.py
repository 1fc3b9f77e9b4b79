"""Corpus chunking and versioning, the persisted index, the three retrievers, and re-indexing a
changed corpus in a running server without touching the model."""
from __future__ import annotations

import json
import shutil

import pytest

from serve_helpers import ANSWER_DOC, CORPUS, QUESTION


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpora" / "kb"
    root.mkdir(parents=True)
    for name, text in CORPUS.items():
        (root / name).write_text(text)
    return root


def test_split_text_windows_are_bounded_overlapping_and_deterministic():
    from controller.serve.corpus import split_text

    paragraphs = [" ".join(f"p{i}w{j}" for j in range(30)) for i in range(12)]
    text = "\n\n".join(paragraphs)
    chunks = split_text(text, max_chars=300, overlap=60)
    assert len(chunks) > 3 and all(len(c) <= 300 for c in chunks)
    assert chunks == split_text(text, max_chars=300, overlap=60)
    words = [w for c in chunks for w in c.split()]
    assert set(words) == set(text.split())  # nothing lost
    assert any(a.split()[-1] in b.split() for a, b in zip(chunks, chunks[1:]))  # overlap carries context
    long = "x" * 2000  # one unbreakable paragraph is still cut
    assert all(len(c) <= 300 for c in split_text(long, 300, 60))


def test_corpus_version_and_index_rebuild_only_on_change(corpus, tmp_path):
    from controller.serve.corpus import corpus_version, load_chunks
    from controller.serve.index import load_or_build

    cache = tmp_path / "cache"
    v1 = corpus_version(corpus)
    assert v1 == corpus_version(corpus)
    first = load_or_build(corpus, "bm25", cache)
    assert first.info["rebuilt"] and first.version == v1 and first.info["chunks"] == len(load_chunks(corpus))
    assert (cache / v1 / "index.json").is_file()
    assert not load_or_build(corpus, "bm25", cache).info["rebuilt"]
    (corpus / "login.md").write_text(CORPUS["login.md"] + "\nPasskeys work too.\n")
    second = load_or_build(corpus, "bm25", cache)
    assert second.version != v1 and second.info["rebuilt"]
    assert second.search("passkeys", 1)[0][0].path == "login.md"
    (corpus / ".hidden.md").write_text("ignored")
    assert corpus_version(corpus) == second.version
    # DVC-tracked corpus: the pinned md5 is recorded with the index
    (corpus.parent / "kb.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: kb\n")
    (corpus / "new.md").write_text("Another document.")
    assert load_or_build(corpus, "bm25", cache).info["corpusDvcMd5"] == "0123456789abcdef0123456789abcdef.dir"


def test_bm25_finds_the_document_and_handles_empty_queries(corpus, tmp_path):
    from controller.serve.index import load_or_build

    index = load_or_build(corpus, "bm25", tmp_path / "cache")
    hits = index.search(QUESTION, 3)
    assert hits[0][0].path == ANSWER_DOC and hits[0][0].chunk_id == f"{ANSWER_DOC}#0"
    assert index.search("refund", 1)[0][0].path == "refunds.md"  # plural-stemmed: "Refunds"
    assert index.search("", 3) == [] and index.search("the and of", 3) == []
    assert index.search("xylophone", 3) == []


def test_dense_and_hybrid_retrieve_by_meaning(corpus, tmp_path):
    from controller.serve.index import load_or_build

    question = "How long until the money is back on my credit card?"
    dense = load_or_build(corpus, "dense", tmp_path / "cache")
    assert dense.search(question, 1)[0][0].path == "refunds.md"
    assert dense.info["encoder"].startswith("sentence-transformers/all-MiniLM-L6-v2")
    hybrid = load_or_build(corpus, "hybrid", tmp_path / "cache")
    assert not hybrid.info["rebuilt"] or hybrid.info["structures"] == ["bm25", "dense"]
    assert hybrid.search(question, 1)[0][0].path == "refunds.md"
    assert hybrid.search(QUESTION, 1)[0][0].path == ANSWER_DOC
    embeddings = dense.retriever.embeddings
    assert embeddings.dtype.name == "float32" and abs(float((embeddings[0] ** 2).sum()) - 1) < 1e-4


def test_running_gateway_reindexes_a_changed_corpus_without_touching_the_engine(server, env, tmp_path):
    """A new corpus in gateway.json swaps the index; the engine (and its loaded model) is not touched."""
    import asyncio
    from dataclasses import replace

    from controller.serve.gateway import Gateway

    corpus = tmp_path / "kb"
    shutil.copytree(env.repo / "corpora" / "kb", corpus)
    gateway = Gateway(replace(server.gateway.config, corpus_dir=str(corpus), index_cache=str(tmp_path / "cache")))
    gateway.load_index()
    old = gateway.index.version
    question = "Which status page shows the Quibbleton datacenter?"
    assert all(c.path != "status.md" for c, _ in asyncio.run(gateway._hits(question)))
    model = server.engine.engine.model
    (corpus / "status.md").write_text("The Quibbleton datacenter is shown on status.example.com.\n")
    asyncio.run(gateway.apply(replace(gateway.config, index_cache=str(tmp_path / "cache2"))))
    assert gateway.index.version != old
    assert asyncio.run(gateway._hits(question))[0][0].path == "status.md"
    assert server.engine.engine.model is model


def test_manifest_chat_template_and_special_tokens_are_what_serving_uses(env, tmp_path):
    from controller.errors import PermanentError
    from controller.serve.model import load_engine_base, open_run

    from serve_helpers import RUN_A, copy_run

    def load_run(path):
        run = open_run(path)
        return load_engine_base(run.base_dir(), run)

    run = copy_run(env.run_dir(RUN_A), tmp_path / "store")
    manifest = json.loads((run / "manifest.json").read_text())
    template = manifest["provenance"]["chatTemplate"]
    manifest["provenance"]["chatTemplate"] = "{{- 'PARITY ' }}" + template
    (run / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_run(run)
    text = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                add_generation_prompt=True)
    assert text.startswith("PARITY ") and text.rstrip().endswith("assistant")
    manifest["provenance"]["specialTokens"]["eos_token"]["id"] += 1
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PermanentError, match="eos_token"):
        load_run(run)
    (run / "manifest.json").unlink()
    with pytest.raises(PermanentError, match="not finished"):
        load_run(run)
