"""Fixtures shared by every test area. Area-specific fixtures live in tests/<area>/conftest.py."""
from __future__ import annotations

import os
import subprocess
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


OWN_GROUP = {"cluster/test_e2e_cluster.py", "reconciler/test_end_to_end.py", "backends/test_api_end_to_end.py"}
"""End-to-end modules that take minutes and build what they need in module fixtures: each gets a
worker of its own, so the area's other tests do not queue behind it."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One xdist group per test area (tests/<area>/), and one per module in OWN_GROUP: `make test`
    runs `-n 3 --dist loadgroup`, and an area's session fixtures (the tiny models it trains, the
    demo repo it builds) are then built by one worker only, once per test session, as without
    xdist. Three workers on two cores: much of the suite waits on subprocesses, servers and pods."""
    tests = Path(__file__).resolve().parent
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(tests)
        group = rel.as_posix() if rel.as_posix() in OWN_GROUP else (rel.parts[0] if len(rel.parts) > 1 else rel.stem)
        item.add_marker(pytest.mark.xdist_group(group))
