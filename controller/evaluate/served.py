"""The served configuration an evaluation runs: the same retrieval (corpus at the commit, the
spec's retriever and topK), the same prompt builder and the same generation limits as the
serving block, through the serving library itself (controller.serve.index, .prompt), never a copy.

What is served is named by `controller.identity.serving_config`; the report records its sha256
(`servingConfig.sha256`) and the deployers promote only a run whose report evaluated the
configuration they are deploying. So a corpus, retriever or prompt change is evaluated on the
existing run (no retraining) before it serves.

Where the corpus comes from: eval.json's `serving` (the controller materialises the folder at the
commit and names its git version, as the deploy step does), or, for `ftops eval` by hand,
`for_repo`: the spec's `serving.corpus` under the repository root, named by its content
(`sha256:...`, which is what `ftops deploy` names it too).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from controller.errors import PermanentError
from controller.evalconfig import EvalServing
from controller.evaluate.datasets import EvalExample
from controller.evaluate.suite import Answer, Source
from controller.identity import serving_config, serving_config_sha256
from controller.seams.json import JsonObject
from controller.serve.index import CorpusIndex
from controller.serve.prompt import fit_context, served_prompt, source_id
from controller.spec.finetune import FineTune


@dataclass(frozen=True)
class ServedSetup:
    """One served configuration, ready to put prompts together."""

    config: JsonObject
    """controller.identity.serving_config(spec, corpus version)."""
    sha256: str
    index: CorpusIndex | None
    top_k: int
    max_tokens: int
    """serving.maxTokens: what a request that does not ask for fewer may generate."""
    corpus_dir: Path | None

    def record(self) -> JsonObject:
        """The report's `servingConfig`: the hash, what it is, and the index it searched."""
        out: JsonObject = {"sha256": self.sha256, **self.config}
        if self.index is not None:
            out["index"] = {"corpusVersion": self.index.version, "chunks": len(self.index.chunks),
                            "documents": len({c.path for c in self.index.chunks}), "retriever": self.index.retriever.kind}
        return out

    def prompt(self, example: EvalExample, count_tokens: Callable[[list[dict]], int], context: int) -> tuple[list[dict], Answer]:
        """The served prompt for one example, its sources fitted to the model's context the way the
        server fits them (the lowest ranked dropped first), and an Answer shell recording what it
        was shown. A prompt that does not fit even without sources is (None, ...): the server
        refuses such a request, so the served system gives no answer."""
        served = served_prompt(example.messages, self.index, self.top_k)
        messages, kept, n = fit_context(example.messages, served.hits, count_tokens, context - self.max_tokens)
        shown = tuple(Source(source_id(c), c.chunk_id, c.text, float(s)) for c, s in kept)
        shell = Answer("", shown, tuple(source_id(c) for c, _ in served.hits))
        return (messages if n <= context - self.max_tokens else []), shell


def setup(spec: FineTune, serving: EvalServing | None) -> ServedSetup | None:
    """The served configuration to evaluate through (None: the model is evaluated on the prompts as
    written). Loads (or builds) the corpus index, so a bad corpus fails before any model loads."""
    if serving is None:
        return None
    block = spec.spec.serving
    if block is None:
        raise PermanentError("eval config: `serving` is set but the spec has no spec.serving block")
    corpus_dir = Path(serving.corpus) if block.corpus and serving.corpus else None
    if block.corpus and corpus_dir is None:
        raise PermanentError(f"eval config: the spec serves over {block.corpus!r} but `serving.corpus` names no folder")
    config = serving_config(spec, serving.corpus_version)
    sha = serving_config_sha256(config)
    assert config is not None and sha is not None
    if serving.config_sha256 != sha:
        raise PermanentError(f"eval config: serving.configSha256 {serving.config_sha256[:12]}… is not the spec's serving "
                             f"configuration over corpus version {serving.corpus_version!r} ({sha[:12]}…); the controller "
                             "writes both")
    index = None
    if corpus_dir is not None:
        from controller.serve.index import load_or_build

        index = load_or_build(corpus_dir, block.retriever, serving.index_cache or default_index_cache(corpus_dir))
    return ServedSetup(dict(config), sha, index, block.top_k, block.max_tokens, corpus_dir)


def for_repo(spec: FineTune, repo_root: Path | None) -> EvalServing | None:
    """The served configuration of a spec over the corpus in a repository on this machine (`ftops
    eval` by hand): its `serving.corpus` under `repo_root`, named by its content (`sha256:...`,
    what `ftops deploy` names it too). None when the spec is not served."""
    block = spec.spec.serving
    if block is None:
        return None
    corpus, version = None, None
    if block.corpus:
        from controller.evaluate.datasets import resolve_repo_path
        from controller.serve.corpus import folder_version

        folder = resolve_repo_path(block.corpus, repo_root, "spec.serving.corpus")
        corpus, version = str(folder), folder_version(folder)
    sha = serving_config_sha256(serving_config(spec, version))
    assert sha is not None
    return EvalServing(corpus=corpus, corpus_version=version, config_sha256=sha)


def default_index_cache(corpus: Path) -> str:
    """Beside the corpus (`.ftops-index/<name>`) when that is writable, else the temp dir: the same
    place a server on this machine keeps the index, so the two build it once."""
    corpus = corpus.resolve()
    if os.access(corpus.parent, os.W_OK):
        return str(corpus.parent / ".ftops-index" / corpus.name)
    return str(Path(tempfile.gettempdir()) / "ftops-index" / corpus.name)
