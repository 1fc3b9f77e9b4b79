"""Test-run-wide builds: what several test modules need, built once for the whole run."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

BUILT = ".built"
"""Written last into a directory `built_once` built: a folder without it is a crashed build."""


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory built once per test run and shared by every xdist worker (`build(folder)`
    writes it in place, so absolute paths inside it, such as a run.json's, stay true).

    Why: a session fixture is per worker, and `make test` runs three; a model two test modules
    train would otherwise be trained once per worker that runs one of them (measured: the trainer
    tests trained each of the three methods twice, about 140 s of CPU on a two-core machine).
    Without xdist this is the plain session build. One build per name at a time (a file lock):
    a second worker waits for the first one's result instead of training it again."""
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent / "built-once"  # this run's, common to its workers
    shared.mkdir(exist_ok=True)
    folder = shared / name
    with FileLock(str(shared / f"{name}.lock"), timeout=1800):
        if not (folder / BUILT).exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / BUILT).touch()
    return folder
