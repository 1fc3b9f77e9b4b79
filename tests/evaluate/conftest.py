"""Session fixtures: the tiny base model and three runs trained once by the real trainer.

- `well`: 240 tickets, 40 LoRA steps (measured: 100% held-out accuracy);
- `under`: one step at a tiny learning rate (the answers are not even JSON yet);
- `full`: a short full fine-tune; `forgetting`: a full fine-tune of the merged `well` model on
  label-shuffled tickets (it forgets what its base knew: the regression gate's case);
- `shuffled`: the same tickets with their labels shuffled, 20 steps: it learns the answer format
  but not which label goes with which ticket (measured: ~35%, chance is 33%).

System prompts are dropped from the tickets to halve the tokens per step (the CPU is shared).
Each run is trained in-process through `controller.train.trainer.run(run.json)`, the same entry
point `python -m controller.train` uses, and writes the real artifact layout with manifest.json.
"""
from __future__ import annotations

import contextlib
import io
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_helpers import N_TEST, N_TRAIN, SPEC_NAME, OracleServer, TrainedRun, strip_system  # noqa: E402

from controller.tiny import task  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, torch's spinning worker threads make the tiny
    model's steps ~3x slower (measured: 10 LoRA steps 17 s vs 45 s under load)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def splits(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    train = [strip_system(e) for e in task.generate_examples(N_TRAIN, seed=0)]
    shuffled = json.loads(json.dumps(train))
    labels = [task.expected_label(e) for e in shuffled]
    random.Random(5).shuffle(labels)
    for example, label in zip(shuffled, labels):
        example["messages"][-1]["content"] = task.answer_for(label)
    test = [strip_system(e) for e in task.generate_examples(N_TEST, seed=1_000_003)]
    return {
        "train": task.write_jsonl(root / "train.jsonl", train),
        "shuffled": task.write_jsonl(root / "shuffled.jsonl", shuffled),
        "test": task.write_jsonl(root / "test.jsonl", test),
    }


def _train(root: Path, base: Path, name: str, run_id: str, train: Path, test: Path, training: dict,
           method: dict | None = None) -> TrainedRun:
    from controller.runconfig import RunConfig, write_run_config
    from controller.train.trainer import run

    config = RunConfig.model_validate({
        "runId": run_id, "specName": SPEC_NAME, "baseModel": {"uri": str(base)}, "method": method or {"type": "lora"},
        "training": {"maxSeqLength": 256, "seed": 1, "checkpointEverySteps": 1000, "warmupRatio": 0.0, **training},
        "data": {"train": str(train), "test": str(test), "md5": "0" * 32},
        "outputDir": str(root / SPEC_NAME / run_id), "checkpointDir": str(root / "ckpt" / run_id), "device": "cpu",
    })
    config_path = root / f"{run_id}.run.json"
    write_run_config(config, config_path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run(config_path) == 0
    return TrainedRun(name, Path(config.output_dir), run_id, train, test, config_path)


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def well_run(store: Path, tiny_base: Path, splits: dict[str, Path]) -> TrainedRun:
    return _train(store, tiny_base, "well", "11111111aaaa", splits["train"], splits["test"],
                  {"epochs": 4.0, "batchSize": 24, "learningRate": 1e-2}, method={"type": "lora", "merge": True})


@pytest.fixture(scope="session")
def under_run(store: Path, tiny_base: Path, splits: dict[str, Path]) -> TrainedRun:
    return _train(store, tiny_base, "under", "22222222bbbb", splits["train"], splits["test"],
                  {"epochs": 0.1, "batchSize": 24, "learningRate": 1e-4})


@pytest.fixture(scope="session")
def shuffled_run(store: Path, tiny_base: Path, splits: dict[str, Path]) -> TrainedRun:
    return _train(store, tiny_base, "shuffled", "33333333cccc", splits["shuffled"], splits["test"],
                  {"epochs": 2.0, "batchSize": 24, "learningRate": 2e-2})


@pytest.fixture
def oracle_server():
    """A real OpenAI-compatible HTTP server on 127.0.0.1 (a keyword policy that classifies every
    ticket of the tiny task correctly: the 'larger model' to compare against)."""
    server = OracleServer(api_key="sk-test-oracle")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def full_run(store: Path, tiny_base: Path, splits: dict[str, Path]) -> TrainedRun:
    """A short full fine-tune (every weight trained; model/ holds a whole model, no adapter)."""
    return _train(store, tiny_base, "full", "44444444dddd", splits["train"], splits["test"],
                  {"epochs": 0.5, "batchSize": 24, "learningRate": 1e-3}, method={"type": "full"})


@pytest.fixture(scope="session")
def forgetting_run(store: Path, well_run: TrainedRun, splits: dict[str, Path]) -> TrainedRun:
    """Catastrophic forgetting on purpose: the well-trained model (merged into full weights) is the
    base of a full fine-tune on label-shuffled tickets, so it unlearns what its base could do."""
    return _train(store, well_run.run_dir / "merged", "forgetting", "55555555eeee", splits["shuffled"], splits["test"],
                  {"epochs": 1.0, "batchSize": 24, "learningRate": 2e-3}, method={"type": "full"})
