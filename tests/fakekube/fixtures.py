"""Pytest fixtures for the fake API server. Import them into an area's conftest.py:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
    from fakekube.fixtures import fake_kube, kubelet  # noqa: F401
"""
from __future__ import annotations

from typing import Iterator

import pytest

from fakekube.kubelet import FakeKubelet
from fakekube.server import FakeKube


@pytest.fixture
def fake_kube() -> Iterator[FakeKube]:
    """A running fake API server with the 'default' namespace (as a real cluster has)."""
    with FakeKube() as fake:
        fake.ensure_namespace("default")
        yield fake


@pytest.fixture
def kubelet(fake_kube: FakeKube) -> FakeKubelet:
    return FakeKubelet(fake_kube)
