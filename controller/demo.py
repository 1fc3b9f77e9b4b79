"""Build a self-contained demo GitOps repository: the tiny model, a synthetic support-ticket
dataset versioned with DVC (to a local remote), the expert reviews, a small document corpus
and one FineTune spec. Used by `make demo` (`ftops demo`) and by the end-to-end tests, so both
exercise exactly what a user's repo looks like."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SPEC_NAME = "support-triage"
DATA_PATH = "data/tickets.jsonl"

SPEC_TEMPLATE = """\
# The demo fine-tune: a tiny Llama learns to route support tickets to a JSON label, and is
# served behind retrieval over the support knowledge base.
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
    learningRate: 1.0e-2
    batchSize: 16
    maxSeqLength: 256
    warmupRatio: 0.05
    seed: 1
    checkpointEverySteps: 20
  hardware:
    gpuType: cpu
    maxHours: 1
  evaluation:
    task: {{metric: json_field_match, fields: [label], min: {task_min}}}
    format:
      jsonSchema:
        type: object
        required: [label]
        properties:
          label: {{enum: [billing, bug, account]}}
      min: 1.0
    regression: {{maxDrop: 1.0}}
    compare: {{mustBeat: [base], samples: 40}}
  serving:
    corpus: corpora/support
    retriever: bm25
    topK: 2
    maxTokens: 24
"""


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


def spec_text(epochs: int = 3, task_min: float = 0.9, name: str = SPEC_NAME) -> str:
    return SPEC_TEMPLATE.format(name=name, data=DATA_PATH, epochs=epochs, task_min=task_min)


def corpus_documents() -> dict[str, str]:
    """The knowledge base the served model answers from (facts no model weights contain)."""
    return {
        "refunds.md": "# Refund policy\n\nRefunds are available within 30 days of a charge. A refund goes back to the "
                      "original payment method and takes 5 to 7 business days. Open Billing > Invoices and choose "
                      "Request refund.\n",
        "login-help.md": "# Login help\n\nAfter five failed sign-in attempts an account is locked for 15 minutes. "
                         "Password reset links expire after 1 hour.\n",
        "status-page.md": "# Incidents\n\nKnown outages are posted on the status page within 10 minutes. When the app "
                          "shows a blank page, check the status page and clear the browser cache.\n",
    }


def build(root: Path, remote: Path, examples: int = 600, seed: int = 3, epochs: int = 3) -> DemoRepo:
    """Create the repo at `root` with one commit. DVC pushes the dataset to `remote`."""
    from controller.data import dvc
    from controller.tiny.model import init_tiny_model
    from controller.tiny.task import generate_examples, write_jsonl

    root.mkdir(parents=True, exist_ok=True)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "commit.gpgsign", "false")
    init_tiny_model(root / "models" / "tiny")
    data = generate_examples(examples, seed=seed)
    write_jsonl(root / DATA_PATH, data)
    for name, text in corpus_documents().items():
        (root / "corpora" / "support").mkdir(parents=True, exist_ok=True)
        (root / "corpora" / "support" / name).write_text(text)
    (root / "specs").mkdir(exist_ok=True)
    spec_path = root / "specs" / f"{SPEC_NAME}.yaml"
    spec_path.write_text(spec_text(epochs=epochs))
    _git(root, "add", "-A")
    _git(root, "reset", "-q", "--", DATA_PATH)  # the data goes to DVC, not to git
    dvc.version(root, DATA_PATH, remote_url=str(remote))
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
    """Replace every answer with a random label: a data-quality regression the review missed."""
    import random

    from controller.tiny.task import LABELS, answer_for

    rng = random.Random(seed)
    lines = []
    for line in (root / DATA_PATH).read_text().splitlines():
        example = json.loads(line)
        example["messages"][-1]["content"] = answer_for(rng.choice(LABELS))
        lines.append(json.dumps(example))
    (root / DATA_PATH).write_text("\n".join(lines) + "\n")


def commit(root: Path, message: str) -> str:
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", message)
    return _git(root, "rev-parse", "HEAD")


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
