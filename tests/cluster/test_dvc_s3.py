"""The controller pulls datasets from an S3 DVC remote (moto's server through dvc-s3): the
repository's own remote, or the operator's global one when the repository names none, with
DVC's site cache somewhere writable (a read-only root in the controller's pod)."""
from __future__ import annotations

from pathlib import Path

import pytest

from controller.data import dvc

DATA = "data/examples.jsonl"
TEXT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 50


def _repo(git_repo, remote_url: str | None) -> str:
    git_repo.write(DATA, TEXT)
    dvc.ensure_dvc_repo(git_repo.root)
    dvc.version(git_repo.root, DATA, remote_url=remote_url)
    return git_repo.commit("data")


def test_pull_from_an_s3_remote_committed_in_the_repo_and_an_outage(git_repo, s3, s3_server, tmp_path, monkeypatch):
    import tempfile

    sha = _repo(git_repo, s3.uri("dvc"))
    assert any(k.startswith("dvc/files/md5/") for k in s3.keys())  # pushed to the bucket
    monkeypatch.delenv("DVC_SITE_CACHE_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the temporary directory: an emptyDir in a pod
    with s3_server.outage():
        with pytest.raises((dvc.RemoteUnreachable, dvc.DvcFailed)):
            dvc.pull(git_repo.root, sha, DATA, tmp_path / "down.jsonl", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "down.jsonl").exists()
    pulled = dvc.pull(git_repo.root, sha, DATA, tmp_path / "out" / "examples.jsonl", cache_dir=tmp_path / "cache")
    assert pulled.path.read_text() == TEXT and not pulled.reused
    assert (tmp_path / "dvc-site-cache").is_dir()  # DVC's site cache went where it can write


def test_the_operators_global_remote_is_used_when_the_repo_names_none(git_repo, s3, tmp_path, monkeypatch):
    # Data pushed to the operator's bucket; the repository's config has no remote at all.
    sha = _repo(git_repo, s3.uri("team-data"))
    assert dvc.run_dvc(["remote", "remove", "ftops"], git_repo.root).returncode == 0
    sha = git_repo.commit("no remote in the repo")
    assert "remote" not in (git_repo.root / ".dvc" / "config").read_text()
    with pytest.raises(dvc.RemoteNotConfigured, match="DVC_GLOBAL_CONFIG_DIR"):
        dvc.pull(git_repo.root, sha, DATA, tmp_path / "none.jsonl")
    global_dir = tmp_path / "dvc-global"
    global_dir.mkdir()
    (global_dir / "config").write_text(f"[core]\n    remote = operator\n['remote \"operator\"']\n    url = {s3.uri('team-data')}\n")
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(global_dir))
    pulled = dvc.pull(git_repo.root, sha, DATA, tmp_path / "out.jsonl", cache_dir=tmp_path / "cache")
    assert Path(pulled.path).read_text() == TEXT
