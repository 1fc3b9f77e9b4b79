"""The world of fakes (world.py) as a fixture."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # world.py

from world import World, make_world  # noqa: E402


@pytest.fixture
def world(tmp_path) -> World:
    return make_world(tmp_path)
