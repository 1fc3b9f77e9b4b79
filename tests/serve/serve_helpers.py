"""Shared constants and helpers of the serving tests (imported by conftest and the test modules)."""
from __future__ import annotations

import json
import shutil
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


def corpus_version() -> str:
    """The on-disk version of the test corpus (what `ftops deploy`/`ftops eval --corpus` name it)."""
    import tempfile

    from controller.serve.corpus import folder_version

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in CORPUS.items():
            (Path(tmp) / name).write_text(text)
        return folder_version(Path(tmp))


def served_config(version: str | None = None) -> str:
    """sha256 of the serving configuration spec_text() serves over the test corpus (the one a report
    must have evaluated for the deployers to promote it); `version` names another corpus version."""
    from controller.identity import serving_config, serving_config_sha256
    from controller.spec import load_spec_text

    spec = load_spec_text(spec_text(), f"specs/{SPEC_NAME}.yaml").spec
    sha = serving_config_sha256(serving_config(spec, version or corpus_version()))
    assert sha is not None
    return sha


PASSING_METRICS = {"task.json_field_match": 0.97, "format.compliance": 1.0, "regression.drop": 0.01,
                   "compare.fine-tuned.score": 0.9, "compare.base.score": 0.4}


def write_gate(run_dir: Path, passed: bool = True, run_id: str | None = None, config: str | None = None) -> Path:
    """eval/report.json (written here, in the evaluator's shape) and eval/gate.json decided by the
    real gate (controller.gate.decide) against the spec's thresholds. `passed=False` reports a
    task accuracy under the spec's minimum; `run_id` makes a decision for another run; `config`
    is the serving configuration the report evaluated (default: the test corpus's)."""
    import hashlib

    from controller.gate import decide
    from controller.spec import load_spec_text

    manifest = json.loads((run_dir / "manifest.json").read_text())
    run_id = run_id or manifest["runId"]
    metrics = dict(PASSING_METRICS)
    if not passed:
        metrics["task.json_field_match"] = 0.41
    report = {"runId": run_id, "status": "completed", "metrics": metrics,
              "servingConfig": {"sha256": config or served_config()}}
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    sha = hashlib.sha256((out / "report.json").read_bytes()).hexdigest()
    spec = load_spec_text(spec_text(), f"specs/{SPEC_NAME}.yaml").spec
    decision = decide(report, spec, run_id, report_sha256=sha)
    assert decision.passed is passed, decision.format()
    (out / "gate.json").write_text(json.dumps(decision.to_dict(), indent=2, sort_keys=True) + "\n")
    return out / "gate.json"


def copy_run(src: Path, store: Path) -> Path:
    dst = store / SPEC_NAME / src.name
    shutil.copytree(src, dst)
    return dst


def wait_ready(url: str, timeout: float = 120) -> dict:
    """Poll `url`/readyz until it answers 200 (a gateway or node started in the test)."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout}s: {last}")
