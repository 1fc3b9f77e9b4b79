"""Preemption: SIGTERM mid-run checkpoints and exits PREEMPTED (143); a restart finishes at the
planned step count with the same result as an uninterrupted run. SIGKILL in the middle of a
checkpoint write leaves a partial checkpoint that the restart ignores, resuming from the previous
complete one. LoRA dropout is on, so a resume that did not restore the RNG state would differ."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import LORA, events, make_config, train_cli, train_in_process

from controller.exitcodes import PREEMPTED
from controller.train.checkpoint import KILL_HOOK_ENV, list_checkpoints

METHOD = {"type": "lora", **LORA, "dropout": 0.1}
TRAINING = {"epochs": 1.0, "checkpointEverySteps": 10}  # 30 steps


def _result(root: Path) -> dict:
    return json.loads((root / "out" / "summary.json").read_text())


def _steps(root: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (root / "out" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_model, task_data) -> Path:
    root = tmp_path_factory.mktemp("resume-baseline")
    assert train_in_process(make_config(root, tiny_model, task_data, METHOD, **TRAINING)) == 0
    return root


def _assert_matches(root: Path, baseline: Path) -> None:
    got, want = _result(root), _result(baseline)
    assert got["totalSteps"] == want["totalSteps"] == 30
    assert _steps(root) == list(range(1, 31))  # every step exactly once, never going back
    assert got["testLoss"] == pytest.approx(want["testLoss"], rel=1e-3, abs=1e-5)
    assert got["finalLoss"] == pytest.approx(want["finalLoss"], rel=1e-3, abs=1e-5)


@pytest.mark.slow
def test_sigterm_checkpoints_and_restart_matches_uninterrupted(tmp_path, tiny_model, task_data, baseline) -> None:
    config = make_config(tmp_path, tiny_model, task_data, METHOD, **TRAINING)
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    with (tmp_path / "stdout").open("w") as out, (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "controller.train", "--config", str(config)], stdout=out,
                                stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            while proc.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < 8):
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == PREEMPTED, (tmp_path / "stderr").read_text()[-2000:]
    stopped = [e for e in events((tmp_path / "stdout").read_text()) if e.get("event") == "preempted"][0]["step"]
    assert 8 <= stopped < 30
    assert [(s, ok) for s, _, ok in list_checkpoints(tmp_path / "ckpt")][-1] == (stopped, True)
    assert not (tmp_path / "out" / "manifest.json").exists()

    assert train_in_process(config) == 0  # the restart (in-process: same code, no second interpreter start)
    assert _result(tmp_path)["resumedFromSteps"] == [stopped]
    _assert_matches(tmp_path, baseline)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["20", "20:marker"], ids=["before-rename", "before-marker"])
def test_sigkill_during_checkpoint_write_resumes_from_previous(point, tmp_path, tiny_model, task_data, baseline) -> None:
    config = make_config(tmp_path, tiny_model, task_data, METHOD, **TRAINING)
    killed = train_cli(config, env={KILL_HOOK_ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    on_disk = {p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("checkpoint-")}
    assert "checkpoint-00000010" in on_disk
    assert ("checkpoint-00000020.partial" if point == "20" else "checkpoint-00000020") in on_disk
    assert [(s, ok) for s, _, ok in list_checkpoints(tmp_path / "ckpt")][-1][1] is (point == "20")  # marker-less dir is incomplete

    assert train_in_process(config) == 0
    assert _result(tmp_path)["resumedFromSteps"] == [10]
    assert not {p.name for p in (tmp_path / "ckpt").iterdir()} & {"checkpoint-00000020.partial"}
    assert all(ok for _, _, ok in list_checkpoints(tmp_path / "ckpt"))
    _assert_matches(tmp_path, baseline)
