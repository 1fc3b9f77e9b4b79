"""torchrun command lines for multi-GPU / multi-node runs (cannot run here, so the argv is pinned)."""
from __future__ import annotations

import pytest

from controller.train.launch import needs_launcher, torchrun_command


def test_single_process_needs_no_launcher() -> None:
    assert not needs_launcher(1, 1)
    assert needs_launcher(1, 8) and needs_launcher(2, 1)


def test_single_node_multi_gpu_is_standalone() -> None:
    argv = torchrun_command("/run/run.json", gpus_per_node=4, python="/venv/bin/python")
    assert argv == [
        "/venv/bin/python", "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=4",
        "-m", "controller.train", "--config", "/run/run.json",
    ]


def test_multi_node_uses_c10d_rendezvous_keyed_by_run() -> None:
    argv = torchrun_command(
        "/run/run.json", nodes=3, gpus_per_node=8, run_id="abc123ef", node_rank="$(JOB_COMPLETION_INDEX)",
        master_addr="train-abc-0.train-abc", master_port=29400,
    )
    assert argv[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nnodes=3" in argv and "--nproc-per-node=8" in argv
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in argv
    assert "--rdzv-backend=c10d" in argv and "--rdzv-endpoint=train-abc-0.train-abc:29400" in argv
    assert "--rdzv-id=abc123ef" in argv and "--standalone" not in argv
    assert argv[argv.index("-m", 3):] == ["-m", "controller.train", "--config", "/run/run.json"]


@pytest.mark.parametrize("kwargs, message", [
    ({"nodes": 2}, "master_addr"),
    ({"nodes": 2, "master_addr": "h"}, "node_rank"),
    ({"gpus_per_node": 0}, "gpusPerNode"),
])
def test_incomplete_multi_node_settings_are_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        torchrun_command("/run/run.json", **kwargs)


@pytest.mark.slow
def test_two_processes_on_cpu_train_through_torchrun(tmp_path, tiny_model) -> None:
    """gpusPerNode: 2 re-executes the trainer through torchrun; on the CPU the two ranks use gloo.
    This runs the real DDP path (sharded micro-batches, rank-0 checkpoints and outputs)."""
    import json

    from train_helpers import LORA, events, make_config, train_cli

    from controller.tiny.task import write_task

    data = write_task(tmp_path / "data", n_train=32, n_test=8, seed=0)
    config = make_config(tmp_path, tiny_model, data, {"type": "lora", **LORA}, batchSize=8, epochs=1,
                         checkpointEverySteps=2)
    raw = json.loads(config.read_text())
    raw["distributed"] = {"nodes": 1, "gpusPerNode": 2}
    config.write_text(json.dumps(raw))
    proc = train_cli(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs = events(proc.stdout)
    launch = [e for e in evs if e.get("event") == "launch"]
    assert launch and "torch.distributed.run" in launch[0]["argv"] and "--nproc-per-node=2" in launch[0]["argv"]
    assert [e.get("event") for e in evs].count("done") == 1  # only rank 0 reports
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["world"] == 2 and summary["totalSteps"] == 4
    steps = [json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and (tmp_path / "out" / "manifest.json").is_file()
