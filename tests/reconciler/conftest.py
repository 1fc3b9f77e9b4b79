"""Fixtures for reconciler tests: a demo GitOps repo (tiny model, DVC data, reviews, corpus)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from controller import demo

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reconcile_helpers


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> demo.DemoRepo:
    """Built once; tests copy it (git repo + DVC remote) so each starts from the same commit. The
    demo as it ships (its number of tickets, its spec): the end-to-end tests hold `make demo`'s
    gates to what they promise (measured: with 400 tickets one served answer in 55 broke the JSON
    format, which the demo's format gate, min 1.0, refuses)."""
    root = tmp_path_factory.mktemp("demo-template")
    return demo.build(root / "repo", root / "remote")


@pytest.fixture
def demo_repo(demo_template, tmp_path) -> demo.DemoRepo:
    repo = tmp_path / "repo"
    remote = tmp_path / "remote"
    shutil.copytree(demo_template.root, repo, symlinks=True)
    shutil.copytree(demo_template.remote, remote)
    # the DVC remote URL is recorded in the repo's config: point the copy at the copied remote
    config = repo / ".dvc" / "config"
    config.write_text(config.read_text().replace(str(demo_template.remote), str(remote)))
    demo.commit(repo, "point the DVC remote at this copy") if _dirty(repo) else None
    return demo.DemoRepo(repo, remote, repo / "specs" / f"{demo.SPEC_NAME}.yaml")


def _dirty(repo: Path) -> bool:
    import subprocess

    return bool(subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout.strip())
