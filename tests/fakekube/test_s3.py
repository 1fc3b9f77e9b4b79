"""The moto S3 fixture works for the clients the cluster path uses: s3fs (fsspec), boto3, and
DVC's S3 remote (dvc-s3), configured only through the environment the fixture sets."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

DVC = [sys.executable, "-m", "dvc"]


def test_s3fs_write_read_list_and_delete(s3):
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)  # endpoint and credentials from the env
    with fs.open(f"{s3.name}/runs/r1/manifest.json", "wb") as f:
        f.write(b'{"files": {}}')
    fs.pipe(f"{s3.name}/runs/r1/model/adapter.safetensors", b"\0" * 1024)
    assert fs.cat(f"{s3.name}/runs/r1/manifest.json") == b'{"files": {}}'
    assert s3.keys("runs/") == ["runs/r1/manifest.json", "runs/r1/model/adapter.safetensors"]
    assert s3.get("runs/r1/model/adapter.safetensors") == b"\0" * 1024  # what boto3 sees too
    fs.rm(f"{s3.name}/runs/r1/manifest.json")
    assert s3.keys() == ["runs/r1/model/adapter.safetensors"]
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{s3.name}/runs/r1/manifest.json")


def test_outage_refuses_connections_and_keeps_objects(s3, s3_server):
    s3.put("k", "v")
    with s3_server.outage():
        assert not s3_server.is_up
        import boto3
        import botocore.config
        import botocore.exceptions

        fast = botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=1)
        c = boto3.client("s3", endpoint_url=s3.endpoint_url, config=fast)
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            c.get_object(Bucket=s3.name, Key="k")
    assert s3.get("k") == b"v"


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_dvc_push_and_pull_through_the_s3_remote(s3, git_repo, tmp_path):
    repo = git_repo.root
    data = os.urandom(4096)
    git_repo.write("data/train.jsonl", data)
    _run(DVC + ["init", "-q"], repo)
    _run(DVC + ["add", "-q", "data/train.jsonl"], repo)
    # The endpoint comes from AWS_ENDPOINT_URL_S3 (set by the fixture), as a pod's would.
    _run(DVC + ["remote", "add", "-d", "store", f"{s3.url}/dvc"], repo)
    git_repo.commit("data")
    _run(DVC + ["push", "-q"], repo)
    md5 = hashlib.md5(data).hexdigest()
    assert s3.keys("dvc/") == [f"dvc/files/md5/{md5[:2]}/{md5[2:]}"]
    assert s3.get(f"dvc/files/md5/{md5[:2]}/{md5[2:]}") == data

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert not (clone / "data" / "train.jsonl").exists()
    _run(DVC + ["pull", "-q"], clone)
    assert (clone / "data" / "train.jsonl").read_bytes() == data
