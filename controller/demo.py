"""Build a self-contained demo GitOps repository: the tiny model, a synthetic support-ticket
dataset versioned with DVC (to a local remote; each ticket names the article that answers it),
general conversations to replay so the fine-tune keeps the base's skills (also in DVC), the
expert reviews, the knowledge base (one short article per product and topic) and one FineTune
spec that trains retrieval-aware and serves behind retrieval. Used by `make demo` (`ftops demo`)
and by the end-to-end tests, so both exercise exactly what a user's repo looks like."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SPEC_NAME = "support-triage"
DATA_PATH = "data/tickets.jsonl"
CORPUS = "corpora/support"

SPEC_TEMPLATE = """\
# The demo fine-tune: the guide's hybrid. A tiny Llama learns the behaviour and the format (route
# a support ticket, answer in JSON, cite the article that answers it), trained on the prompts it
# will be served (RAFT: retrieved articles in every prompt); retrieval over the knowledge base
# supplies the facts (the cited article travels with the answer), so a corpus commit changes
# what a user is told without retraining.
apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata:
  name: {name}
  owner: support-platform
spec:
  needs: [consistentFormat, domainBehavior, currentData, citations]
  baseModel:
    uri: models/tiny
  dataset:
    path: {data}
    testFraction: 0.15
  method:
    type: lora
    r: 16
    alpha: 32
    dropout: 0.0
  training:
    epochs: {epochs}
    learningRate: 3.0e-3
    batchSize: 16
    maxSeqLength: 384
    warmupRatio: 0.05
    seed: 1
    checkpointEverySteps: 50
    retrieval: {{goldShare: 0.9, distractors: 1}}
    replay: {{path: {replay}, share: {replay_share}}}
  hardware:
    gpuType: cpu
    maxHours: 1
  evaluation:
    task: {{metric: json_field_match, fields: [label, source], min: {task_min}}}
    format:
      jsonSchema: {schema}
      min: 1.0
    regression: {{maxDrop: {max_drop}}}
    compare: {{mustBeat: [base], samples: 40}}
    rag:
      recallAtK: {{min: 0.9}}
      citationAccuracy: {{min: 0.9}}
  serving:
    corpus: {corpus}
    retriever: bm25
    topK: 2
    maxTokens: 48
"""

MAX_DROP = 0.05
"""The demo's regression gate, the guide's value: the fine-tune may lose at most 0.05 of the base's
score on the default general-skills suite (40 items: copy, first, last, reverse)."""
REPLAY_PATH = "data/general.jsonl"
REPLAY_SHARE = 2.0
"""Two general conversations replayed per ticket (spec.training.replay), with the demo's learning
rate of 3e-3: the RAFT LoRA learns the tickets and keeps the base's skills. Measured on the default
suite (40 items, so one item is 0.025):
- on an AMD EPYC (AVX2), where the pretrained base scores 0.95: training seeds 1, 2 and 3 drop
  0.0, 0.0 and -0.025 (task 0.99-1.0, format 1.0, citation accuracy 0.96); without replay the
  drop is 0.325 with the task, format and citation gates passing (the planted forgetting run in
  tests/reconciler/test_hybrid_gates.py); three epochs instead of four miss the format gate
  (0.988);
- why not the 1e-2 this recipe had: on that machine seed 1 dropped 0.075 and failed the gate, and
  5e-3 dropped exactly 0.05. At 1e-2 on the machine the recipe was first tuned on (its base 0.975)
  drops ranged from -0.025 to 0.05 over seven runs: a margin of one item, which a different CPU's
  floating-point results (the base is pretrained on the machine that runs it) used up;
- at share 1.0 (with 1e-2) the drop was 0.075, and one run at share 3.0 dropped 0.10, so more
  replay is not safer."""
REPLAY_LINES = 2000
"""General conversations in the replay file: more than the ~920 that the share draws for 460
training tickets, so none repeats."""


@dataclass(frozen=True)
class DemoRepo:
    root: Path
    remote: Path
    spec_path: Path


def _git(root: Path, *args: str) -> str:
    """Git as the person who owns the repo runs it: `init`, `add`, `commit`. The demo writes the
    repository the controller then reads; controller.source, which does all the reading, has no
    writer on purpose (the controller never commits to the repo it reconciles), so this one
    stays with the demo and its tests."""
    env = {**os.environ, "GIT_AUTHOR_NAME": os.environ.get("GIT_AUTHOR_NAME", "Dana Platform"),
           "GIT_AUTHOR_EMAIL": os.environ.get("GIT_AUTHOR_EMAIL", "dana@example.com"),
           "GIT_COMMITTER_NAME": os.environ.get("GIT_COMMITTER_NAME", "Dana Platform"),
           "GIT_COMMITTER_EMAIL": os.environ.get("GIT_COMMITTER_EMAIL", "dana@example.com")}
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True, env=env).stdout.strip()


EPOCHS = 4
"""The demo spec's epochs: what its RAFT-trained run needs to pass the hybrid gates."""


def spec_text(epochs: int = EPOCHS, task_min: float = 0.9, name: str = SPEC_NAME) -> str:
    import json

    from controller.tiny.task import RAG_ANSWER_SCHEMA

    return SPEC_TEMPLATE.format(name=name, data=DATA_PATH, epochs=epochs, task_min=task_min, corpus=CORPUS,
                                schema=json.dumps(RAG_ANSWER_SCHEMA), max_drop=MAX_DROP, replay=REPLAY_PATH,
                                replay_share=REPLAY_SHARE)


def corpus_documents(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The knowledge base the served model answers from (facts no model weights contain): one
    article per route plus two on other subjects; `overrides` changes the fact an article states."""
    from controller.tiny.task import kb_documents

    return kb_documents(overrides)


def write_corpus(root: Path, overrides: dict[str, str] | None = None) -> Path:
    folder = root / CORPUS
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in corpus_documents(overrides).items():
        (folder / name).write_text(text)
    return folder


EXAMPLES = 600
"""The demo's support tickets, for `ftops demo` and the end-to-end tests alike (measured: with 500
the served run cites the gold article 0.85 of the time, below the demo's 0.9 gate; with 400 one
served answer in 55 broke the JSON format)."""


def build(root: Path, remote: Path, examples: int = EXAMPLES, seed: int = 3, epochs: int = 4) -> DemoRepo:
    """Create the repo at `root` with one commit. DVC pushes the dataset to `remote`."""
    from controller.data import dvc
    from controller.tiny.model import init_tiny_model
    from controller.tiny.skills import replay_lines
    from controller.tiny.task import generate_rag_examples, write_jsonl

    root.mkdir(parents=True, exist_ok=True)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "commit.gpgsign", "false")
    init_tiny_model(root / "models" / "tiny")
    write_jsonl(root / DATA_PATH, generate_rag_examples(examples, seed=seed))
    write_jsonl(root / REPLAY_PATH, replay_lines(REPLAY_LINES))
    write_corpus(root)
    (root / "specs").mkdir(exist_ok=True)
    spec_path = root / "specs" / f"{SPEC_NAME}.yaml"
    spec_path.write_text(spec_text(epochs=epochs))
    _git(root, "add", "-A")
    _git(root, "reset", "-q", "--", DATA_PATH, REPLAY_PATH)  # the data goes to DVC, not to git
    dvc.version(root, DATA_PATH, remote_url=str(remote))
    dvc.version(root, REPLAY_PATH)
    write_reviews(root, SPEC_NAME)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "Add the support-triage fine-tune")
    return DemoRepo(root, remote, spec_path)


def write_reviews(root: Path, spec: str, reviewer: str = "expert@example.com") -> Path:
    """Play the domain expert: an approving verdict for every example in the dataset, so the
    review sample (whichever 10% of the cleaned data it is) is covered and approved."""
    from controller.data.normalize import example_hash

    examples = [json.loads(line) for line in (root / DATA_PATH).read_text().splitlines() if line.strip()]
    path = root / "reviews" / f"{spec}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for h in sorted({example_hash(e) for e in examples}):
            f.write(json.dumps({"example": h, "verdict": "approve", "reviewer": reviewer, "note": "demo review"}) + "\n")
    return path


def degrade_labels(root: Path, seed: int = 11) -> None:
    """Give every answer a random label: a data-quality regression the review missed (a bad export
    from a new helpdesk). The answers stay valid JSON; only the routing is wrong."""
    import random

    from controller.tiny.task import LABELS

    rng = random.Random(seed)
    lines = []
    for line in (root / DATA_PATH).read_text().splitlines():
        example = json.loads(line)
        answer = json.loads(example["messages"][-1]["content"])
        answer["label"] = rng.choice(LABELS)
        example["messages"][-1]["content"] = json.dumps(answer)
        lines.append(json.dumps(example))
    (root / DATA_PATH).write_text("\n".join(lines) + "\n")


def commit(root: Path, message: str) -> str:
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", message)
    return _git(root, "rev-parse", "HEAD")


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
