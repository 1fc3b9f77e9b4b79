"""Fixtures for the CLI tests: a controller home made by the reconciler (tests/cli/homes.py), and
the command line run in-process with its output captured."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # homes.py

from homes import Built, build_home  # noqa: E402

from controller import cli  # noqa: E402
from tests.conftest import GitRepo  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """One home per test module (reading commands never change it)."""
    return build_home(tmp_path_factory.mktemp("cli-home"), GitRepo)


@pytest.fixture
def ftops(capsys, monkeypatch):
    """`ftops ARGS...` in-process: (exit code, stdout, stderr). Not a terminal, no COLUMNS."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("FTOPS_HOME", raising=False)
    monkeypatch.delenv("FTOPS_REPO", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
