"""Retrieval-aware fine-tuning (RAFT): the training split rendered with the serving prompt builder
over the corpus at the commit, and gold-source references checked against that corpus (in the
data step and in `ftops data check --spec`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.data.pipeline import prepare_spec
from controller.data.prepare import DataInvalid
from controller.data.raft import RaftSettings, render
from controller.serve.prompt import INSTRUCTION
from controller.spec.finetune import FineTune
from controller.tiny import task

REPO = Path(__file__).resolve().parents[2]


def finetune(retrieval: dict | None = None, corpus: str | None = "corpora/kb") -> FineTune:
    spec: dict = {
        "baseModel": {"uri": "models/none"},
        "dataset": {"path": "data/tickets.jsonl"},
        "method": {"type": "lora"},
        "training": {"seed": 3, **({"retrieval": retrieval} if retrieval is not None else {})},
    }
    if corpus:
        spec["serving"] = {"corpus": corpus, "topK": 2}
    return FineTune.model_validate({"apiVersion": "ftops.dev/v1alpha1", "kind": "FineTune",
                                    "metadata": {"name": "tickets", "owner": "support"}, "spec": spec})


def write_corpus(root: Path) -> None:
    for name, text in task.kb_documents().items():
        (root / "corpora" / "kb").mkdir(parents=True, exist_ok=True)
        (root / "corpora" / "kb" / name).write_text(text)


def sources_shown(example: dict) -> list[str]:
    system = example["messages"][0]
    assert system["role"] == "system"
    return [line[1:line.index("]")] for line in system["content"].splitlines() if line.startswith("[")]


def test_render_puts_the_gold_source_among_distractors_for_the_configured_share(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    examples = task.generate_rag_examples(300, seed=4)
    settings = RaftSettings(gold_share=0.7, distractors=2, seed=1)
    rendered = render(examples, tmp_path / "corpora" / "kb", settings)
    assert rendered == render(examples, tmp_path / "corpora" / "kb", settings)  # deterministic
    with_gold = 0
    for original, out in zip(examples, rendered):
        gold = original["sources"][0]
        shown = sources_shown(out)
        assert out["messages"][-1] == original["messages"][-1] and out["sources"] == original["sources"]
        # The prompt is the serving prompt builder's: the spec's system prompt, then the sources.
        assert out["messages"][0]["content"].startswith(task.RAG_SYSTEM_PROMPT + "\n\n" + INSTRUCTION)
        assert out["messages"][1:-1] == original["messages"][1:-1]
        if gold in shown:
            with_gold += 1
            assert len(shown) == 3 and shown.count(gold) == 1
        else:
            assert len(shown) == 2  # distractors only
        assert len(set(shown)) == len(shown)
    assert 0.6 < with_gold / len(examples) < 0.8
    # Distractors are articles of the corpus other than the gold one (BM25's best for the question first).
    distractors = [s for o in rendered for s in sources_shown(o) if s != o["sources"][0]]
    assert set(distractors) <= set(task.kb_documents()) and len(set(distractors)) > 2
    # Where the gold source sits is shuffled, so position says nothing.
    firsts = [sources_shown(o)[0] == e["sources"][0] for e, o in zip(examples, rendered) if e["sources"][0] in sources_shown(o)]
    assert 0.2 < sum(firsts) / len(firsts) < 0.6
    # Another seed draws other examples and orders.
    assert render(examples, tmp_path / "corpora" / "kb", RaftSettings(0.7, 2, 2)) != rendered


def test_examples_without_gold_sources_get_the_served_prompt(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    plain = task.generate_examples(5, seed=1)  # the label task: no sources
    out = render(plain, tmp_path / "corpora" / "kb", RaftSettings(0.8, 1, 1))
    for original, rendered in zip(plain, out):
        assert len(sources_shown(rendered)) == 2  # distractors + 1: the retriever's top hits, as served
        assert rendered["messages"][-1] == original["messages"][-1]


def _repo_with(git_repo, examples: list[dict]) -> str:
    write_corpus(git_repo.root)
    git_repo.write("data/tickets.jsonl", "".join(json.dumps(e) + "\n" for e in examples))
    return git_repo.commit("tickets and their knowledge base")


def test_the_data_step_renders_the_training_split_and_leaves_the_test_split(git_repo, tmp_path: Path) -> None:
    rev = _repo_with(git_repo, task.generate_rag_examples(240, seed=5))
    work = tmp_path / "work"
    prepared, _, _ = prepare_spec(git_repo.root, rev, finetune({"goldShare": 0.5, "distractors": 1}), work)
    assert prepared.dir.name.startswith("raft-") and prepared.dir.parent.parent.name == "tickets"
    raw_dir = prepared.dir.parent
    raw_train = raw_dir.joinpath("train.jsonl").read_bytes().splitlines()
    train = [json.loads(line) for line in prepared.train_path.read_bytes().splitlines()]
    assert len(train) == len(raw_train) and all(sources_shown(e) for e in train)
    assert prepared.test_path.read_bytes() == raw_dir.joinpath("test.jsonl").read_bytes()  # evaluated as served instead
    import hashlib

    splits = prepared.manifest["splits"]
    assert splits["train"]["sha256"] == hashlib.sha256(prepared.train_path.read_bytes()).hexdigest()
    raft = prepared.manifest["raft"]
    assert raft["corpusVersion"].startswith("git:") and raft["goldShare"] == 0.5 and raft["seed"] == 3
    assert raft["withSources"] == len(train) and 0.35 < raft["withGoldSource"] / len(train) < 0.65
    # The same inputs again: the same directory, nothing rewritten.
    mtime = prepared.train_path.stat().st_mtime_ns
    again, _, _ = prepare_spec(git_repo.root, rev, finetune({"goldShare": 0.5, "distractors": 1}), work)
    assert again.dir == prepared.dir and again.train_path.stat().st_mtime_ns == mtime
    # Without retrieval the split is trained as written.
    plain, _, _ = prepare_spec(git_repo.root, rev, finetune(None), work)
    assert plain.dir == raw_dir


def test_a_gold_source_that_is_not_in_the_corpus_stops_the_data_step_by_line(git_repo, tmp_path: Path) -> None:
    examples = task.generate_rag_examples(220, seed=6)
    examples[6]["sources"] = ["refund.md"]  # one letter short
    rev = _repo_with(git_repo, examples)
    with pytest.raises(DataInvalid) as err:
        prepare_spec(git_repo.root, rev, finetune({"goldShare": 0.8}), tmp_path / "w")
    message = str(err.value)
    assert "data/tickets.jsonl:7: error [unknown_source] sources[0]: 'refund.md' is not a document of the corpus" in message
    assert "'refunds.md'" in message.split("e.g.")[1].split(",")[0]  # the document it meant is suggested first
    # Checked even without RAFT: the evaluation scores citations against these names.
    with pytest.raises(DataInvalid, match="unknown_source"):
        prepare_spec(git_repo.root, rev, finetune(None), tmp_path / "w")


def test_data_check_validates_gold_sources_against_the_corpus_at_a_revision(git_repo, tmp_path: Path) -> None:
    examples = task.generate_rag_examples(20, seed=7)
    rev = _repo_with(git_repo, examples)
    spec_file = git_repo.write("specs/tickets.yaml", json.dumps(finetune({"goldShare": 0.8}).model_dump(mode="json", by_alias=True)))
    data = git_repo.root / "data" / "tickets.jsonl"

    def check(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "controller.cli", "data", "check", str(data), "--spec", str(spec_file),
                               *extra], capture_output=True, text=True, cwd=REPO, timeout=300)

    assert check().returncode == 0, check().stdout
    # The corpus in the working copy loses a document the data names: the check says which line.
    gold = examples[2]["sources"][0]
    (git_repo.root / "corpora" / "kb" / gold).unlink()
    done = check()
    assert done.returncode == 1
    assert f"tickets.jsonl:3: error [unknown_source] sources[0]: '{gold}' is not a document of the corpus corpora/kb" in done.stdout
    # At the commit the document is still there.
    assert check("--rev", rev).returncode == 0
    bad = [dict(e) for e in examples]
    bad[0]["sources"] = "refunds.md"  # not a list
    data.write_text("".join(json.dumps(e) + "\n" for e in bad))
    done = check("--rev", rev)
    assert done.returncode == 1 and 'tickets.jsonl:1: error [bad_field] sources: sources must be a non-empty list' in done.stdout
