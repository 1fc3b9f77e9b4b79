"""Fixtures for the tiny-model tests: the pretrained base (from the shared cache, so the whole
test session pretrains it at most once), one torch thread, and an isolated cache for the tests
that watch the cache build."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: the CPU is small and shared (see tests/evaluate/conftest.py)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own, so what it builds (and what it breaks) is nobody else's."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FTOPS_TINY_CACHE", str(root))
    return root
