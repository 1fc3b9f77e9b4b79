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

from train_helpers import METHOD_RUNS, N_TEST, N_TRAIN, make_config, train_in_process  # noqa: E402

from controller.tiny.task import write_task  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from controller.tiny.model import init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def task_data(tmp_path_factory) -> tuple[Path, Path]:
    return write_task(tmp_path_factory.mktemp("data"), n_train=N_TRAIN, n_test=N_TEST, seed=0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_model, task_data):
    """method -> run root (run.json, out/, ckpt/), trained lazily on first use."""
    cache: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in cache:
            root = tmp_path_factory.mktemp(f"run-{method}")
            spec, training = METHOD_RUNS[method]
            config = make_config(root, tiny_model, task_data, spec, **training)
            assert train_in_process(config) == 0
            cache[method] = root
        return cache[method]

    return get
