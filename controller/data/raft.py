"""Retrieval-aware fine-tuning (RAFT, Zhang et al. 2024, arXiv 2403.10131): the training split
rendered as the model will be served, with sources from the corpus in every prompt.

Why: a model fine-tuned on bare prompts is served with retrieved sources in its system prompt,
an input it never saw (measured on the tiny demo: 6/6 valid answers bare, 5/6 through the
server). So each training example's prompt is built by the serving prompt builder
(controller.serve.prompt, the same code the server and the evaluator call) over sources from the
corpus: for a share `goldShare` of the examples, their gold source(s) (the `sources` list of the
data line) among `distractors` distractors; for the rest, distractors only (RAFT's P and k). The
model learns to answer from the source that holds the answer, cite it, and not be led by the
others. Examples that name no gold source get the served prompt itself (the corpus's best BM25
hits for the question).

Distractors are the chunks BM25 ranks highest for the question that are not from a gold
document (hard negatives, what the retriever would show), topped up with random chunks; the
chunks are cut by the serving chunker (controller.serve.corpus). The order of the sources in a
prompt is shuffled, so the model finds the right one by what it says, not where it is.

Rendered at prepare time, not by the trainer: the trainer reads only run.json and the prepared
files (on a cluster it never sees the corpus), and the rendered split is a file an auditor can
read, hashed into run.json like any split. It is a pure function of the training split, the
corpus, the settings and the seed (each example's draw is seeded by the run's seed and the
example's hash), stored under `<prepared>/raft-<key>/` where the key hashes all of them. The test
split is left as written: the evaluator builds its prompts through the served configuration.

The corpus is part of the rendering but deliberately not of the run id (controller.identity): the
model learns to read sources, not what they say, so a corpus edit re-evaluates the existing run
instead of retraining it. A run is trained on the corpus at the commit that first prepares it;
the prepared manifest records which (`raft.corpusVersion`).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from controller.errors import PermanentError
from controller.identity import PROMPT_VERSION

RAFT_VERSION = "1"
"""Bump when the rendering of the same inputs changes."""


@dataclass(frozen=True)
class RaftSettings:
    gold_share: float
    distractors: int
    seed: int


def corpus_documents(corpus_dir: Path) -> list[str]:
    """The document paths of a corpus (what a gold source may name), relative to its folder."""
    from controller.serve.corpus import document_paths

    return [p.relative_to(corpus_dir).as_posix() for p in document_paths(corpus_dir)]


def _unit(seed: int, key: str, what: str) -> random.Random:
    return random.Random(hashlib.sha256(f"{seed}:{what}:{key}".encode()).hexdigest())


def render(examples: Sequence[dict[str, Any]], corpus_dir: Path, settings: RaftSettings) -> list[dict[str, Any]]:
    """Each example with the served prompt of its final answer: sources from the corpus in the
    system message, per the module docstring. The input examples are not modified."""
    from controller.data.normalize import example_hash
    from controller.serve.corpus import load_chunks
    from controller.serve.prompt import retrieval_query, with_context
    from controller.serve.retrievers import BM25Retriever

    chunks = load_chunks(Path(corpus_dir))
    bm25 = BM25Retriever.build([c.text for c in chunks])
    by_doc: dict[str, list[int]] = {}
    for i, c in enumerate(chunks):
        by_doc.setdefault(c.path, []).append(i)
    out = []
    for example in examples:
        key = example_hash(example)
        messages = example["messages"]
        prompt, answer = messages[:-1], messages[-1]
        query = retrieval_query(prompt)
        ranked = [h.index for h in bm25.search(query, len(chunks))] if query else []
        gold_docs = [d for d in example.get("sources") or [] if d in by_doc]
        gold: list[int] = []
        for doc in gold_docs:  # the chunk of each gold document that best matches the question
            mine = set(by_doc[doc])
            gold.append(next((i for i in ranked if i in mine), by_doc[doc][0]))
        rng = _unit(settings.seed, key, "raft")
        if gold_docs:
            with_gold = rng.random() < settings.gold_share
            taboo = {i for d in gold_docs for i in by_doc[d]}
            want = settings.distractors
        else:
            with_gold, taboo, want = False, set(), settings.distractors + 1
        picked = [i for i in ranked if i not in taboo][:want]
        spare = [i for i in range(len(chunks)) if i not in taboo and i not in picked]
        rng.shuffle(spare)
        picked += spare[: max(0, want - len(picked))]
        shown = (gold if with_gold else []) + picked
        rng.shuffle(shown)
        rendered = with_context(prompt, [(chunks[i], 0.0) for i in shown])
        out.append({**example, "messages": [*rendered, dict(answer)]})
    return out


def render_key(train_sha256: str, corpus_version: str, settings: RaftSettings) -> str:
    payload = {"train": train_sha256, "corpus": corpus_version, "goldShare": settings.gold_share,
               "distractors": settings.distractors, "seed": settings.seed, "prompt": PROMPT_VERSION,
               "raft": RAFT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def raft_prepared(prepared: Any, corpus_dir: Path, corpus_version: str, settings: RaftSettings) -> Any:
    """The prepared data with its training split rendered (controller.data.prepare.Prepared in,
    a Prepared for `<prepared>/raft-<key>/` out: train.jsonl rendered, test.jsonl as prepared,
    manifest.json the prepared one plus a `raft` block and the rendered split's sha256). Written
    once per key, atomically (files first, manifest last); an existing complete one is reused."""
    from controller.data.prepare import Prepared, _write, load_manifest

    train_sha = prepared.manifest["splits"]["train"]["sha256"]
    out = Path(prepared.dir) / f"raft-{render_key(train_sha, corpus_version, settings)}"
    try:
        return Prepared(out, load_manifest(out))
    except (PermanentError, OSError, KeyError):
        pass
    examples = [json.loads(line) for line in prepared.train_path.read_bytes().splitlines() if line.strip()]
    rendered = render(examples, corpus_dir, settings)
    train_bytes = b"".join(json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                           for e in rendered)
    test_bytes = prepared.test_path.read_bytes()
    with_gold = sum(1 for e, r in zip(examples, rendered) if e.get("sources") and _shows_gold(r, e["sources"]))
    manifest = json.loads(json.dumps(prepared.manifest))
    manifest["splits"]["train"]["sha256"] = hashlib.sha256(train_bytes).hexdigest()
    manifest["raft"] = {
        "version": RAFT_VERSION, "prompt": PROMPT_VERSION, "corpusVersion": corpus_version,
        "goldShare": settings.gold_share, "distractors": settings.distractors, "seed": settings.seed,
        "examples": len(rendered), "withGoldSource": with_gold,
        "withSources": sum(1 for e in examples if e.get("sources")),
        "untrainedSplit": {"train": train_sha},
    }
    _write(out, {"train.jsonl": train_bytes, "test.jsonl": test_bytes,
                 "manifest.json": (json.dumps(manifest, indent=2) + "\n").encode()})
    return Prepared(out, manifest)


def _shows_gold(example: dict[str, Any], sources: Sequence[str]) -> bool:
    system = example["messages"][0]
    return system.get("role") == "system" and any(f"\n[{s}] " in "\n" + system["content"] for s in sources)


def for_spec(repo: Path, commit: str, finetune: Any, source_file: Path, prepared: Any, workdir: Path) -> Any:
    """The data step's part for a spec that serves with a corpus: every gold source named in the
    dataset must be a document of the corpus at `commit` (DataInvalid naming file, line and field
    otherwise), and with spec.training.retrieval the training split is rendered (RAFT). Returns
    the Prepared the trainer gets (the rendered one, or `prepared` as it was)."""
    serving = finetune.spec.serving
    retrieval = finetune.spec.training.retrieval
    if serving is None or not serving.corpus:
        return prepared
    from controller.data.check import gold_source_issues, named_sources
    from controller.data.prepare import DataInvalid

    named = named_sources(source_file)
    if not named and retrieval is None:
        return prepared
    corpus_dir, version = corpus_at(repo, commit, serving.corpus, workdir)
    issues = gold_source_issues(named, corpus_documents(corpus_dir), f"{serving.corpus} at {commit[:12]}")
    if issues:
        path = finetune.spec.dataset.path
        raise DataInvalid(f"{path}: {len(issues)} gold source(s) name no document of {serving.corpus} at {commit[:12]}; "
                          "nothing was prepared. Fix these lines (see `ftops data check --spec`):\n  "
                          + "\n  ".join(i.format(path) for i in issues[:20]))
    if retrieval is None:
        return prepared
    settings = RaftSettings(retrieval.gold_share, retrieval.distractors, finetune.spec.training.seed)
    return raft_prepared(prepared, corpus_dir, version, settings)


def corpus_at(repo: Path, commit: str, rel: str, workdir: Path) -> tuple[Path, str]:
    """The corpus folder at `commit`, extracted under `<workdir>/corpora/<tree sha>/`, and its
    version (the git tree hash, as controller.source.corpus_version names it)."""
    from controller.source import GitSource, corpus_version

    with GitSource(Path(repo).resolve()) as source:
        version = corpus_version(source, commit, rel)
        entry = source.tree(commit).get(rel)
        if version is None or entry is None or entry.kind != "tree":
            raise PermanentError(f"spec.serving.corpus {rel!r} is not a folder at {commit[:12]}")
        if not version.startswith("git:"):
            raise PermanentError(f"serving.corpus {rel!r} is tracked by DVC as a folder; commit the documents to git "
                                 "(DVC-tracked corpora are not pulled by the controller yet)")
        target = Path(workdir) / "corpora" / entry.sha
        if not target.exists():
            source.extract(entry.sha, target)
    return target, version
