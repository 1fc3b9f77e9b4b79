"""Multi-process runs through real torchrun (two CPU ranks, gloo): FSDP2 trains, is preempted
(SIGTERM to the launcher, as Kubernetes sends it to PID 1), checkpoints on every rank, exits 143,
and resumes to exactly the losses of an uninterrupted run; a config error found by the workers
exits 78 although torchrun itself exits 1. The exit-code rule itself is a pure function."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import events, make_config, train_cli

from controller import exitcodes
from controller.tiny.task import write_task
from controller.train.checkpoint import list_checkpoints
from controller.train.launch import launcher_exit_code

FULL = {"type": "full"}
# 48 examples packed into rows of up to maxSeqLength 256 tokens (make_config's default), 4 rows per
# step, 2 epochs, a checkpoint every 5 steps (the SIGTERM lands between two). How many steps that
# is depends on the tokenizer's lengths, so it is derived from the data (`_planned_steps`).
N_EXAMPLES, MAX_SEQ_LENGTH = 48, 256
TRAINING = {"batchSize": 4, "epochs": 2, "learningRate": 3e-3, "packing": True, "checkpointEverySteps": 5,
            "maxSeqLength": MAX_SEQ_LENGTH}
FSDP = {"nodes": 1, "gpusPerNode": 2, "strategy": "fsdp"}
SIGTERM_AFTER_STEPS = 7


def _config(root: Path, model: Path, data, distributed: dict = FSDP, **training) -> Path:
    config = make_config(root, model, data, FULL, **{**TRAINING, **training})
    raw = json.loads(config.read_text())
    raw["distributed"] = distributed
    config.write_text(json.dumps(raw))
    return config


def _losses(root: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (root / "out" / "metrics.jsonl").read_text().splitlines()]


def _planned_steps(model: Path, train: Path) -> int:
    """Optimizer steps of TRAINING on `train`, counted from the examples' token lengths under the
    model's own chat template, not from the trainer's plan. Greedy packing puts between
    floor(256 / longest) and floor(256 / shortest) examples in a row; where the two agree, every
    row but an epoch's last holds exactly that many whatever the shuffle, so the count is exact."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    conversations = [json.loads(line)["messages"] for line in train.read_text().splitlines()]
    lengths = [len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in conversations]
    assert len(lengths) == N_EXAMPLES and max(lengths) <= MAX_SEQ_LENGTH
    per_row = MAX_SEQ_LENGTH // max(lengths)
    assert per_row == MAX_SEQ_LENGTH // min(lengths), (
        f"examples of {min(lengths)}..{max(lengths)} tokens pack unevenly into {MAX_SEQ_LENGTH}; "
        "the step count would depend on the shuffle: choose a maxSeqLength that packs them evenly")
    rows = math.ceil(N_EXAMPLES / per_row)
    return TRAINING["epochs"] * math.ceil(rows / TRAINING["batchSize"])


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("dist-data"), n_train=N_EXAMPLES, n_test=8, seed=0)


@pytest.fixture(scope="module")
def planned_steps(tiny_model, small_data) -> int:
    steps = _planned_steps(tiny_model, small_data[0])
    assert steps > SIGTERM_AFTER_STEPS + 1  # room for the SIGTERM test to stop mid-run, after a checkpoint
    return steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model, small_data) -> Path:
    root = tmp_path_factory.mktemp("fsdp-baseline")
    proc = train_cli(_config(root, tiny_model, small_data))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.mark.parametrize("torchrun, ranks, sigterm, expected", [
    (0, {0: 0, 1: 0}, False, exitcodes.OK),
    (1, {0: 78, 1: 78}, False, exitcodes.CONFIG_ERROR),
    (1, {0: 78}, False, exitcodes.CONFIG_ERROR),  # rank 1 was killed by torchrun after rank 0 failed
    (1, {0: 143, 1: 143}, True, exitcodes.PREEMPTED),
    (1, {0: 143, 1: 143}, False, exitcodes.PREEMPTED),  # another node's SIGTERM stopped every rank
    (1, {}, True, exitcodes.PREEMPTED),  # SIGTERM before any worker started
    (1, {0: 75}, False, exitcodes.TEMPORARY),
    (1, {0: 143}, False, exitcodes.FAILURE),  # rank 1 crashed: not a clean preemption
    (1, {}, False, exitcodes.FAILURE),  # a worker died without recording a code (uncaught exception)
    (0, {0: 0, 1: 143}, False, exitcodes.FAILURE),
])
def test_launcher_exit_code(torchrun, ranks, sigterm, expected) -> None:
    assert launcher_exit_code(torchrun, ranks, sigterm, local_ranks=2) == expected


GIB = 2**30


@pytest.mark.parametrize("requested, world, method, weights, gpu, expected", [
    ("auto", 1, "full", 14 * GIB, 80 * GIB, "single"),
    ("auto", 4, "full", 14 * GIB, 80 * GIB, "fsdp"),  # a 7B full fine-tune: weights + grads + moments do not fit
    ("auto", 2, "lora", 14 * GIB, 80 * GIB, "ddp"),  # 7B bf16 base fits one 80 GB GPU
    ("auto", 8, "lora", 140 * GIB, 80 * GIB, "fsdp"),  # a 70B base does not
    ("auto", 2, "lora", 14 * GIB, None, "ddp"),  # CPU ranks: memory is not the limit
    ("auto", 2, "qlora", 40 * GIB, 24 * GIB, "ddp"),
    ("ddp", 4, "full", 14 * GIB, 80 * GIB, "ddp"),
    ("fsdp", 2, "lora", 1 * GIB, 80 * GIB, "fsdp"),
])
def test_strategy_resolution(requested, world, method, weights, gpu, expected) -> None:
    from controller.train.distributed import resolve_strategy

    assert resolve_strategy(requested, world=world, method=method, base_weight_bytes=weights,
                            gpu_memory_bytes=gpu) == expected


def test_fsdp_refuses_4bit_weights() -> None:
    from controller.errors import PermanentError
    from controller.train.distributed import resolve_strategy

    with pytest.raises(PermanentError, match="distributed.strategy: fsdp does not shard 4-bit"):
        resolve_strategy("fsdp", world=2, method="qlora", base_weight_bytes=GIB, gpu_memory_bytes=None)


@pytest.mark.slow
def test_fsdp_writes_a_complete_trained_model(uninterrupted, tiny_model, planned_steps) -> None:
    """The shards are gathered into one complete model (tied weights once, as transformers writes
    them) that loads on its own. (That FSDP2 trains the same losses as DDP and one process was
    measured on this model: identical to 6 digits.)"""
    summary = json.loads((uninterrupted / "out" / "summary.json").read_text())
    assert summary["strategy"] == "fsdp" and summary["world"] == 2
    assert summary["totalSteps"] == planned_steps and summary["packing"] is True
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    weights = load_file(str(uninterrupted / "out" / "model" / "model.safetensors"))
    base = load_file(str(tiny_model / "model.safetensors"))
    assert set(weights) == set(base) and all(weights[k].shape == base[k].shape for k in base)
    assert not all(torch.equal(weights[k], base[k]) for k in base)  # trained, not the base copied
    model = AutoModelForCausalLM.from_pretrained(uninterrupted / "out" / "model")
    assert model.num_parameters() == summary["totalParameters"]


@pytest.mark.slow
def test_fsdp_sigterm_checkpoints_exits_143_and_resumes_to_the_same_losses(uninterrupted, tmp_path, tiny_model,
                                                                           small_data, planned_steps) -> None:
    config = _config(tmp_path, tiny_model, small_data)
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    with (tmp_path / "stdout").open("w") as out, (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "controller.train", "--config", str(config)], stdout=out,
                                stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            while proc.poll() is None and (not metrics.exists()
                                           or len(metrics.read_text().splitlines()) < SIGTERM_AFTER_STEPS):
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)  # to the launcher only, as the kubelet does
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    stdout = (tmp_path / "stdout").read_text()
    assert rc == exitcodes.PREEMPTED, (tmp_path / "stderr").read_text()[-3000:]
    exit_event = [e for e in events(stdout) if e.get("event") == "exit"][0]
    assert exit_event["rankExitCodes"] == {"0": 143, "1": 143} and exit_event["sigterm"] is True
    assert exit_event["torchrunExitCode"] != exitcodes.PREEMPTED  # torchrun alone would not have said 143
    stopped = [e for e in events(stdout) if e.get("event") == "preempted"][0]["step"]
    assert SIGTERM_AFTER_STEPS <= stopped < planned_steps
    assert [(s, ok) for s, _, ok in list_checkpoints(tmp_path / "ckpt")][-1] == (stopped, True)
    assert not (tmp_path / "out" / "manifest.json").exists()

    resumed = train_cli(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["resumedFromSteps"] == [stopped] and summary["strategy"] == "fsdp"
    assert [json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()] == \
        list(range(1, planned_steps + 1))
    assert _losses(tmp_path) == pytest.approx(_losses(uninterrupted), rel=1e-6, abs=1e-7)
    baseline = json.loads((uninterrupted / "out" / "summary.json").read_text())
    assert summary["testLoss"] == pytest.approx(baseline["testLoss"], rel=1e-6)


@pytest.mark.slow
def test_config_error_in_the_workers_exits_78_through_torchrun(tmp_path, tiny_model, small_data) -> None:
    config = _config(tmp_path, tiny_model, small_data)
    raw = json.loads(config.read_text())
    raw["data"]["trainSha256"] = "0" * 64  # found by every rank, after torchrun started them
    config.write_text(json.dumps(raw))
    proc = train_cli(config)
    assert proc.returncode == exitcodes.CONFIG_ERROR, proc.stderr[-3000:]
    exit_event = [e for e in events(proc.stdout) if e.get("event") == "exit"][0]
    assert exit_event["torchrunExitCode"] == 1  # what the Job would have seen without the launcher
    assert exit_event["rankExitCodes"] and set(exit_event["rankExitCodes"].values()) == {exitcodes.CONFIG_ERROR}
    assert "data.train" in proc.stderr and "0" * 64 in proc.stderr
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").glob("checkpoint-*"))
