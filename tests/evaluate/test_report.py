"""report.json / report.md / chart.png and the manifest entry, on hand-made reports (no model)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from controller.evaluate.report import Report, render_markdown
from controller.evaluate.run import crashed_report
from controller.gate import decide

TRAINER_FILES = {"model/adapter_model.safetensors": {"sha256": "0" * 64, "size": 1}}


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "store" / "s" / "abcdef012345"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({
        "apiVersion": "ftops.dev/v1alpha1", "kind": "RunManifest", "runId": "abcdef012345",
        "files": dict(TRAINER_FILES), "provenance": {"specName": "s"}}))
    return run


def _completed(**metrics) -> dict:
    return {
        "runId": "abcdef012345", "specName": "s", "status": "completed",
        "metrics": {"task.exact_match": 0.9, **metrics},
        "task": {"metric": "exact_match", "score": 0.9, "examples": 10, "failed": 1,
                 "failures": [{"line": 3, "expected": "a", "output": "b"}]},
        "compare": {"samples": 10, "metric": "exact_match", "models": {"fine-tuned": {"score": 0.9}, "base": {"score": math.nan}},
                    "winRates": {"base": {"win": 0.5, "tie": 0.5, "loss": 0.0}}, "sideBySide": []},
    }


def test_nan_is_written_as_null_and_the_gate_fails_it(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    report = Report(_completed(**{"regression.drop": math.nan}))
    path = report.write(run)

    def no_nan(token):
        raise AssertionError(f"report.json contains {token}")

    data = json.loads(path.read_text(), parse_constant=no_nan)
    assert data["metrics"]["regression.drop"] is None
    assert data["compare"]["models"]["base"]["score"] is None
    from controller.spec.evaluation import EvaluationSpec

    decision = decide(data, EvaluationSpec(), "abcdef012345")
    assert "regression.drop" in [line.metric for line in decision.failures]


def test_manifest_gets_the_report_hash_and_keeps_the_trainer_entries(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    report = Report(_completed())
    report.write(run)
    manifest = json.loads((run / "manifest.json").read_text())
    digest = hashlib.sha256((run / "eval" / "report.json").read_bytes()).hexdigest()
    assert report.sha256 == digest == manifest["evaluation"]["reportSha256"]
    assert manifest["evaluation"]["reportPath"] == "eval/report.json"
    assert manifest["files"]["model/adapter_model.safetensors"] == TRAINER_FILES["model/adapter_model.safetensors"]
    assert set(manifest["files"]) == {"model/adapter_model.safetensors", "eval/report.json", "eval/report.md", "eval/chart.png"}
    assert (run / "eval" / "chart.png").read_bytes()[:4] == b"\x89PNG"

    # A later crashed evaluation: its chart is gone from disk and from the manifest.
    crashed_report("abcdef012345", "CUDA out of memory", "s").write(run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert not (run / "eval" / "chart.png").exists()
    assert set(manifest["files"]) == {"model/adapter_model.safetensors", "eval/report.json", "eval/report.md"}
    assert "Evaluation crashed" in (run / "eval" / "report.md").read_text()
    assert "CUDA out of memory" in (run / "eval" / "report.md").read_text()


def test_markdown_fits_a_pull_request_comment() -> None:
    data = _completed()
    data["task"]["failures"] = [{"line": i, "expected": "x" * 300, "output": "y" * 300} for i in range(10)]
    data["task"]["failed"] = 10
    text = render_markdown(data, limit=1500)
    assert len(text) <= 1500 and text.rstrip().endswith("_(truncated; full details in eval/report.json)_")
    full = render_markdown(data)
    assert "y" * 69 + "…" in full and "y" * 70 not in full  # cells are clipped to 70 characters
    assert "**Task accuracy** (exact_match): 90.0% on 10 held-out examples (10 wrong)." in full
