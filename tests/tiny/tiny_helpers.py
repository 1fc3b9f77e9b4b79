"""Plain helpers for the tiny-model tests (tests/tiny/conftest.py puts this folder on sys.path):
train a run with the real trainer and evaluate it with the real evaluator, as tests/evaluate does."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from controller.tiny import task

SPEC_NAME = "tiny-skills"
LABEL_SCHEMA = '{"type": "object", "required": ["label"], "additionalProperties": false, ' \
               '"properties": {"label": {"enum": ["billing", "bug", "account"]}}}'


def write_task_splits(root: Path, n_train: int = 240, n_test: int = 45) -> tuple[Path, Path]:
    """The ticket task as the demo trains it: system prompt, ticket, JSON label (disjoint seeds)."""
    train = task.write_jsonl(root / "train.jsonl", task.generate_examples(n_train, seed=0))
    test = task.write_jsonl(root / "test.jsonl", task.generate_examples(n_test, seed=1_000_003))
    return train, test


def train_run(store: Path, base: Path, run_id: str, data: tuple[Path, Path], method: dict, training: dict) -> Path:
    """One run trained in-process through `controller.train.trainer.run(run.json)`, the entry
    point `python -m controller.train` uses; returns its artifact directory."""
    from controller.runconfig import RunConfig, write_run_config
    from controller.train.trainer import run

    config = RunConfig.model_validate({
        "runId": run_id, "specName": SPEC_NAME, "baseModel": {"uri": str(base)}, "method": method,
        "training": {"maxSeqLength": 256, "seed": 1, "checkpointEverySteps": 1000, "warmupRatio": 0.0, **training},
        "data": {"train": str(data[0]), "test": str(data[1]), "md5": "0" * 32},
        "outputDir": str(store / SPEC_NAME / run_id), "checkpointDir": str(store / "ckpt" / run_id), "device": "cpu",
    })
    config_path = store / f"{run_id}.run.json"
    write_run_config(config, config_path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run(config_path) == 0
    return Path(config.output_dir)


def spec(root: Path, max_drop: float, task_min: float = 0.9):
    """A FineTune whose gate is the ticket task and the default regression suite."""
    from controller.spec import load_spec_text

    text = f"""apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata:
  name: {SPEC_NAME}
  owner: tests
spec:
  baseModel:
    uri: models/tiny
  dataset:
    path: data/tickets.jsonl
  method:
    type: lora
  evaluation:
    task: {{metric: json_field_match, fields: [label], min: {task_min}}}
    format:
      jsonSchema: {LABEL_SCHEMA}
      min: 1.0
    regression: {{suite: default, maxDrop: {max_drop}}}
"""
    path = root / f"{SPEC_NAME}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    loaded = load_spec_text(text, str(path))
    assert loaded.spec is not None, [i.format() for i in loaded.issues]
    return loaded.spec
