"""The pretrained base has general skills, and the regression gate sees a fine-tune lose them.

Measured by the real evaluator (`controller.evaluate.run_evaluation` on runs the real trainer
trained, the default suite, bare prompts) and judged by the real gate, with the demo's threshold
(`regression: {maxDrop: 0.05}`):
- a LoRA fine-tune on the support tickets that replays general conversations
  (spec.training.replay, mixed in by the data step's own `controller.data.replay.mix`) learns the
  tickets and keeps the skills: it passes;
- a full fine-tune trained far past that (every weight, many epochs) answers the skill prompts
  the way it answers tickets: the gate blocks it on `regression.drop`, and says which items.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_helpers import spec, train_run, write_task_splits

from controller.evaluate import run_evaluation
from controller.gate import decide

BASE_BAR = 0.9
"""The base's score on the default suite it must reach (measured: see the report)."""
MAX_DROP = 0.05
"""The demo's regression gate."""
LORA = ({"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
        {"epochs": 6.0, "batchSize": 24, "learningRate": 4e-3})
"""LoRA as the LoRA paper has it (query and value projections), at a learning rate that does not
rewrite attention. Measured on 45 held-out tickets and the default suite:
- on the base as one machine pretrained it (suite 0.95): tickets alone (50 steps) task 0.87,
  below the 0.9 bar; 8 epochs learn it (0.98) but forget (drop 0.15), and so does lr 5e-3
  (task 1.0, drop 0.30); with replay at share 0.5 and 5 epochs, task 0.98 and drop 0.0;
- on the base as another machine pretrained it (suite 0.975: the same code and inputs gave other
  weights), that 5-epoch recipe reached task 0.89 only. With replay at share 0.5, 6 epochs at lr
  4e-3 (used here): task 0.98, format 1.0, drop 0.0; 8 epochs at lr 3e-3: task 0.98, drop 0.025;
  at share 1.0, 8 or 10 epochs broke the format of one answer in 45 (0.978, the gate wants 1.0)
  and 6 epochs at 4e-3 dropped 0.05."""
REPLAY_SHARE = 0.5
REPLAY_LINES = 2000
OVERTRAINED_FULL = ({"type": "full"}, {"epochs": 6.0, "batchSize": 24, "learningRate": 3e-3})


def with_replay(data: tuple[Path, Path]) -> Path:
    """The training split as the data step mixes it for `training.replay: {share: 0.5}`: general
    conversations (`skills.replay_lines`) drawn by the run's seed, none a held-out prompt."""
    from controller.data.replay import ReplaySettings, held_out_prompts, mix
    from controller.evaluate.datasets import DEFAULT_SUITE, suite_path
    from controller.tiny.skills import replay_lines

    train, test = data
    replay = train.parent / "replay.jsonl"
    replay.write_text("".join(json.dumps(line) + "\n" for line in replay_lines(REPLAY_LINES)))
    held_out = held_out_prompts(test, suite_path(DEFAULT_SUITE, None), DEFAULT_SUITE)
    lines, block = mix(train.read_bytes().splitlines(), replay.read_bytes(),
                       ReplaySettings("replay.jsonl", REPLAY_SHARE, seed=1), held_out)
    assert block["added"] == REPLAY_SHARE * len(train.read_bytes().splitlines())
    mixed = train.parent / "train-with-replay.jsonl"
    mixed.write_bytes(b"\n".join(lines) + b"\n")
    return mixed


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base: Path) -> dict[str, Path]:
    store = tmp_path_factory.mktemp("store")
    data = write_task_splits(tmp_path_factory.mktemp("data"))
    return {
        "data": data[1],
        "lora": train_run(store, tiny_base, "0000000a1111", (with_replay(data), data[1]), *LORA),
        "overtrained": train_run(store, tiny_base, "0000000b2222", data, *OVERTRAINED_FULL),
    }


@pytest.mark.slow
def test_the_base_is_skilled_and_a_lora_fine_tune_with_replay_keeps_the_skills_while_learning_the_task(runs, tmp_path: Path) -> None:
    ft = spec(tmp_path / "specs", MAX_DROP)
    report = run_evaluation(runs["lora"], ft, runs["data"], output_dir=tmp_path / "eval", batch_size=32, progress=False)
    reg = report.data["regression"]
    assert reg["suite"] == "default" and reg["examples"] == 40
    assert reg["base"] >= BASE_BAR, reg["perSkill"]
    assert all(scores["base"] >= 0.7 for scores in reg["perSkill"].values()), reg["perSkill"]
    assert report.metrics["task.json_field_match"] >= 0.9
    assert reg["drop"] <= MAX_DROP, reg["forgotten"]
    decision = decide(report, ft, report.data["runId"], report.sha256)
    assert decision.passed, decision.message()


@pytest.mark.slow
def test_an_overtrained_full_fine_tune_forgets_the_skills_and_the_gate_blocks_it(runs, tmp_path: Path) -> None:
    ft = spec(tmp_path / "specs", MAX_DROP)
    report = run_evaluation(runs["overtrained"], ft, runs["data"], output_dir=tmp_path / "eval", batch_size=32, progress=False)
    reg = report.data["regression"]
    assert reg["base"] >= BASE_BAR
    assert reg["drop"] > MAX_DROP
    # It learned the task: what blocks it is only what it forgot.
    assert report.metrics["task.json_field_match"] >= 0.9
    decision = decide(report, ft, report.data["runId"], report.sha256)
    assert [line.metric for line in decision.failures] == ["regression.drop"]
    assert "regression drop from base" in decision.message()
    assert reg["forgottenCount"] >= 3 and reg["forgotten"][0]["fineTuned"] != reg["forgotten"][0]["expected"]
