"""Helpers shared by the cluster tests (binaries, example specs)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
