"""Pytest fixtures for the fake cluster. Import them into an area's conftest.py:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
    from fakekube.fixtures import fake_kube, kubelet, cluster, s3_server, s3  # noqa: F401

* `fake_kube`: the fake API server alone (objects, watches, status), no controllers.
* `kubelet`: the scripted `FakeKubelet` over it: the test moves Job status by hand.
* `cluster`: a `FakeCluster` (cluster.py): the API server plus the process kubelet that really
  runs pods and the Job, JobSet, Deployment/ReplicaSet controllers around it.
* `s3_server` (session) and `s3` (a fresh bucket, AWS env set): moto's S3 on 127.0.0.1 (s3.py).
See README.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from fakekube.kubelet import FakeKubelet
from fakekube.s3 import S3Bucket, S3Server
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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 for the whole session."""
    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh bucket, with AWS_* (endpoint, dummy credentials, region) set in os.environ for
    this test, so any client in this process or its subprocesses finds the server. The bucket
    is emptied and deleted afterwards (if the server is up)."""
    if not s3_server.is_up:
        s3_server.up()
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.create_bucket()
    yield bucket
    if not s3_server.is_up:
        s3_server.up()
    s3_server.delete_bucket(bucket.name)


@pytest.fixture
def cluster(tmp_path: Path):
    """A fake cluster whose kubelet really runs pods (see cluster.py)."""
    from fakekube.cluster import FakeCluster

    with FakeCluster(tmp_path / "cluster") as c:
        yield c
