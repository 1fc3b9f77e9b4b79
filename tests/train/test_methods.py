"""LoRA, QLoRA and full fine-tuning each learn the synthetic task on the CPU (held-out accuracy by
greedy decoding, strict JSON parsing), and each run's outputs are complete: safetensors weights,
metrics, summary and a manifest that matches the files it lists."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from train_helpers import events, greedy_accuracy, train_cli

from controller.tiny.model import END_OF_TURN


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_method_learns_the_task(method: str, trained, tiny_model: Path, task_data) -> None:
    root = trained(method)
    acc = greedy_accuracy(root / "out" / "model", tiny_model, task_data[1])
    assert acc >= 0.9, f"{method}: held-out accuracy {acc:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_outputs_and_manifest(method: str, trained) -> None:
    out = trained(method) / "out"
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    weights = "model/adapter_model.safetensors" if method != "full" else "model/model.safetensors"
    assert weights in names and "model/chat_template.jinja" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))]

    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}
    for rel, entry in manifest["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == entry["sha256"], rel
    prov = manifest["provenance"]
    assert prov["runId"] == manifest["runId"] == "0123abcd"
    assert prov["dataMd5"] == "0" * 32 and prov["method"]["type"] == method
    assert prov["chatTemplate"] == (out / "model" / "chat_template.jinja").read_text()
    assert prov["specialTokens"]["eos_token"]["token"] == END_OF_TURN
    assert prov["libraries"]["torch"] and prov["libraries"]["transformers"]

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [m["step"] for m in metrics] == list(range(1, summary["totalSteps"] + 1))
    assert {"step", "loss", "learningRate", "tokensPerSecond", "gradNorm"} <= set(metrics[-1])
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 10


@pytest.mark.slow
def test_lora_merged_model_answers_like_the_adapter(trained, tiny_model: Path, task_data) -> None:
    out = trained("lora") / "out"
    assert (out / "merged" / "model.safetensors").is_file()
    assert greedy_accuracy(out / "merged", tiny_model, task_data[1]) >= 0.9


@pytest.mark.slow
def test_finished_run_is_not_retrained(trained) -> None:
    root = trained("full")
    manifest_before = (root / "out" / "manifest.json").read_bytes()
    proc = train_cli(root / "run.json")
    assert proc.returncode == 0, proc.stderr
    assert any(e.get("event") == "done" and e.get("alreadyFinished") for e in events(proc.stdout))
    assert (root / "out" / "manifest.json").read_bytes() == manifest_before
