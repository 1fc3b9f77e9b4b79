"""Shared constants and helpers of the serving tests (imported by conftest and the test modules)."""
from __future__ import annotations

import json
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SPEC_NAME = "tiny-support"
RUN_A = "aaaa0000aaaa0001"
RUN_B = "bbbb0000bbbb0002"
ANSWER_DOC = "zorblax.md"
QUESTION = "What does error code ZX-4417 on the Zorblax cluster mean?"

CORPUS = {
    "zorblax.md": "# Zorblax outage code\n\nError code ZX-4417 means the quantum flux router on the Zorblax cluster "
                  "is rebooting. Wait nine minutes, then retry.\n",
    "refunds.md": "# Refunds\n\nRefunds take six business days to reach the card. Annual plans are refunded pro rata.\n",
    "login.md": "# Login\n\nReset your password from the sign in page. Two-factor codes expire after five minutes.\n",
}


def spec_text(name: str = SPEC_NAME, retriever: str = "bm25", rollout: str = "{strategy: rolling}", replicas: int = 1) -> str:
    """The example support-triage spec with a serving block for the tiny corpus."""
    base = (ROOT / "specs" / "support-triage.yaml").read_text()
    head, _, tail = base.partition("  serving:")
    budget = tail[tail.index("  budget:"):]
    head = head.replace("name: support-triage", f"name: {name}")
    serving = (f"  serving:\n    corpus: corpora/kb\n    retriever: {retriever}\n    topK: 2\n    replicas: {replicas}\n"
               f"    maxTokens: 24\n    rollout: {rollout}\n")
    return head + serving + budget


@dataclass
class Env:
    root: Path
    base: Path
    store: Path
    repo: Path
    spec_file: Path

    def run_dir(self, run_id: str) -> Path:
        return self.store / SPEC_NAME / run_id


def write_gate(run_dir: Path, passed: bool = True, run_id: str | None = None) -> Path:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    gate = {"runId": run_id or manifest["runId"], "passed": passed,
            "reasons": [] if passed else [{"metric": "task", "message": "task accuracy 0.41 < min 0.90"}]}
    path = run_dir / "eval" / "gate.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gate))
    return path


def copy_run(src: Path, store: Path) -> Path:
    dst = store / SPEC_NAME / src.name
    shutil.copytree(src, dst)
    return dst
