"""Fixtures for the trainer tests: one tiny model, one synthetic data set, and the three methods
trained once per session (real training on the CPU, one thread, so that test runs of other areas
in parallel do not oversubscribe the two cores). Plain helpers live in train_helpers.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from built_once import built_once  # noqa: E402
from train_helpers import METHOD_RUNS, N_TEST, N_TRAIN, make_config, train_in_process  # noqa: E402

from controller.tiny.task import write_task  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from controller.tiny.model import init_tiny_model

    return built_once(tmp_path_factory, "train-tiny", lambda folder: init_tiny_model(folder / "model", seed=0)) / "model"


@pytest.fixture(scope="session")
def task_data(tmp_path_factory) -> tuple[Path, Path]:
    def write(folder: Path) -> None:
        write_task(folder, n_train=N_TRAIN, n_test=N_TEST, seed=0)

    folder = built_once(tmp_path_factory, "train-data", write)
    return folder / "train.jsonl", folder / "test.jsonl"


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_model, task_data):
    """method -> run root (run.json, out/, ckpt/), trained lazily on first use, once per test run
    (test_methods and test_precision read the same three runs, often from two xdist workers).
    Tests only read a run root; one that trains writes a root of its own."""
    cache: dict[str, Path] = {}

    def train(method: str, root: Path) -> None:
        spec, training = METHOD_RUNS[method]
        config = make_config(root, tiny_model, task_data, spec, **training)
        assert train_in_process(config) == 0

    def get(method: str) -> Path:
        if method not in cache:
            cache[method] = built_once(tmp_path_factory, f"train-run-{method}", lambda root: train(method, root))
        return cache[method]

    return get
