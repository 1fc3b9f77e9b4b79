"""Fixtures for the data pipeline tests: the tiny model's tokenizer (built once per session).
Plain helpers live in data_helpers.py; this folder is put on sys.path so tests can import them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from controller.tiny.model import init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from controller.data.tokens import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))
