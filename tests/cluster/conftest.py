"""Fixtures for the cluster tests: the fake API server (tests/fakekube) and the helm and kubectl
binaries from `make tools` (a missing binary fails the test, it never skips)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the fakekube package
sys.path.insert(0, str(HERE))  # cluster_helpers, crdschema

from cluster_helpers import tool  # noqa: E402
from fakekube.fixtures import cluster, fake_kube, kubelet, s3, s3_server  # noqa: E402,F401


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl")
