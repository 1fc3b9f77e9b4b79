"""Fixtures shared by every test area. Area-specific fixtures live in tests/<area>/conftest.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Offline and quiet, as the CLI sets them: nothing is fetched from a hub, DVC never phones home.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GIT_AUTHOR_NAME", "ftops test")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "test@ftops.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "ftops test")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "test@ftops.invalid")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers every area shares (built_once)


LONG_MODULES = (
    "tests/reconciler/test_end_to_end.py", "tests/cluster/test_e2e_cluster.py", "tests/train/test_precision.py",
    "tests/serve/test_vllm_pool.py", "tests/tiny/test_base_skills.py", "tests/backends/test_api_end_to_end.py",
    "tests/reconciler/test_hybrid_gates.py",
)
"""The modules that take longest (measured with --durations on two cores: the first three 4-9
minutes each, the others about 3), collected first, longest first. `make test` runs xdist's
--dist loadfile with --no-loadscope-reorder, which hands modules out in collection order, two to
each worker to start (here: worker 1 the reconciler's and the vLLM pool's, worker 2 the
cluster's and the base skills', worker 3 precision and the API backend's), then one at a time.
Why: xdist's default order (most tests first) started these few-test modules last, and the
last of them ran alone while the other workers sat idle."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(REPO_ROOT).as_posix() if item.path.is_relative_to(REPO_ROOT) else ""
        return LONG_MODULES.index(path) if path in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the order within a module and among the others stays


class GitRepo:
    """A real git repository in a temporary directory, for tests that need commits."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.git("config", "commit.gpgsign", "false")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=self.root, check=True, capture_output=True, text=True
        ).stdout.strip()

    def write(self, rel: str, text: str | bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def remove(self, rel: str) -> None:
        self.git("rm", "-q", "-r", rel)

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The pretrained tiny base, copied out of the on-disk cache (pretrained at most once per
    machine and key, whatever the number of test sessions or xdist workers)."""
    from controller.tiny.model import init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("base") / "tiny")
