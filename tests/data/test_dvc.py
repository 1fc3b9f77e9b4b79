"""The DVC adapter against real git, real DVC and a real local remote, fault by fault.

For each fault: the error is clear (names the file or object and what to do) and nothing that
existed before is deleted or replaced: the user's working copy (data file and .dvc pointer), an
earlier pulled copy, and the remote's good objects all stay byte for byte the same.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from data_helpers import diverse_examples, md5, run_ftops, write_lines

from controller.data import dvc

DATA = "data/train.jsonl"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def commit(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


def raw_dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)


def remote_object(remote: Path, digest: str) -> Path:
    return remote / "files" / "md5" / digest[:2] / digest[2:]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A repo with one dataset versioned and pushed (commit v1), built once with real DVC. The
    remote is configured by a relative URL so a copy of the folder is a self-contained world."""
    base = tmp_path_factory.mktemp("dvc-template")
    root = base / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "commit.gpgsign", "false")
    (base / "remote").mkdir()
    dvc.ensure_dvc_repo(root)
    assert raw_dvc(root, "remote", "add", "-d", "store", "../remote").returncode == 0
    assert "url = ../../remote" in (root / ".dvc" / "config").read_text()  # relative to .dvc/
    write_lines(root / DATA, diverse_examples(240, seed=1))
    result = dvc.version(root, DATA, meta={"examples": 240})
    assert result.pushed
    commit(root, "v1")
    return base


@pytest.fixture
def world(template, tmp_path):
    """A private copy: (repo, remote, v1 sha, v1 md5)."""
    base = tmp_path / "world"
    shutil.copytree(template, base, symlinks=True)
    root = base / "repo"
    v1 = git(root, "rev-parse", "HEAD")
    return root, base / "remote", v1, md5(root / DATA)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in (DATA, DATA + ".dvc")}


def test_version_records_md5_and_meta_and_pull_gets_exact_revisions(world, tmp_path):
    root, remote, v1, v1_md5 = world
    pointer = yaml.safe_load((root / (DATA + ".dvc")).read_text())
    assert pointer["outs"][0]["md5"] == v1_md5
    assert pointer["meta"]["ftops"] == {"md5": v1_md5, "examples": 240, "bytes": (root / DATA).stat().st_size}
    assert md5(remote_object(remote, v1_md5)) == v1_md5

    # v2 in the working copy; v1 must still come back exactly when asked for by revision.
    write_lines(root / DATA, diverse_examples(260, seed=2))
    v2_md5 = dvc.version(root, DATA, meta={"examples": 260}).md5
    v2 = commit(root, "v2")
    before = snapshot(root)
    got1 = dvc.pull(root, v1, DATA, tmp_path / "out" / "v1.jsonl")
    got2 = dvc.pull(root, v2, DATA, tmp_path / "out" / "v2.jsonl")
    assert (got1.md5, got2.md5) == (v1_md5, v2_md5) and md5(got1.path) == v1_md5 and not got1.reused
    assert dvc.pull(root, v1, DATA, tmp_path / "out" / "v1.jsonl").reused
    assert snapshot(root) == before and git(root, "status", "--porcelain") == ""
    with pytest.raises(dvc.DestinationConflict, match="left untouched"):
        dvc.pull(root, v1, DATA, got2.path)
    assert md5(got2.path) == v2_md5


def test_unreachable_remote(world, tmp_path):
    root, remote, v1, _ = world
    # Pull through an HTTP remote nobody listens on (DVC itself would call it "missing files").
    (root / ".dvc" / "config").write_text((root / ".dvc" / "config").read_text().replace("url = ../../remote", "url = http://127.0.0.1:9/store"))
    off = commit(root, "remote moved to an http server that is down")
    dest = tmp_path / "out.jsonl"
    with pytest.raises(dvc.RemoteUnreachable, match=r"127\.0\.0\.1:9/store\) is unreachable"):
        dvc.pull(root, off, DATA, dest)
    assert not dest.exists()
    # Push to a local remote whose directory is gone (an unmounted volume): refused before DVC
    # could create it, and the working copy keeps its old pointer.
    (root / ".dvc" / "config").write_text((root / ".dvc" / "config").read_text().replace("url = http://127.0.0.1:9/store", "url = ../../unmounted"))
    write_lines(root / DATA, diverse_examples(250, seed=9))
    before = snapshot(root)
    with pytest.raises(dvc.RemoteUnreachable, match="does not exist: mount or create"):
        dvc.version(root, DATA)
    assert snapshot(root) == before
    assert not (root.parent / "unmounted").exists()


def test_partial_push_is_caught_on_pull_and_on_push(world, tmp_path):
    root, remote, v1, v1_md5 = world
    earlier = dvc.pull(root, v1, DATA, tmp_path / "earlier.jsonl").path
    # Someone ran `dvc add` but their push never finished, and committed the pointer anyway.
    write_lines(root / DATA, diverse_examples(255, seed=3))
    unpushed = dvc.version(root, DATA, push=False)
    rev = commit(root, "pointer to data that never reached the remote")
    with pytest.raises(dvc.ObjectMissing, match="never finished") as err:
        dvc.pull(root, rev, DATA, tmp_path / "new.jsonl")
    assert unpushed.md5 in str(err.value) and DATA in str(err.value)
    assert not (tmp_path / "new.jsonl").exists() and md5(earlier) == v1_md5

    # A push that fails part-way: the object's place in the remote is blocked.
    write_lines(root / DATA, diverse_examples(256, seed=4))
    new_md5 = md5(root / DATA)
    remote_object(remote, new_md5).mkdir(parents=True)
    before = snapshot(root)
    with pytest.raises(dvc.DvcError, match="push is incomplete"):
        dvc.version(root, DATA)
    assert snapshot(root) == before  # the old pointer is back: nobody can commit the new one
    assert md5(remote_object(remote, v1_md5)) == v1_md5


def test_corrupted_object_in_the_remote(world, tmp_path):
    root, remote, v1, v1_md5 = world
    earlier = dvc.pull(root, v1, DATA, tmp_path / "earlier.jsonl").path
    obj = remote_object(remote, v1_md5)
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[100:110] = b"CORRUPTED!"
    obj.write_bytes(bytes(data))
    before = snapshot(root)
    corrupted = obj.read_bytes()
    with pytest.raises(dvc.DataCorrupted, match="corrupted") as err:
        dvc.pull(root, v1, DATA, tmp_path / "fresh.jsonl")
    assert str(obj) in str(err.value)
    assert not (tmp_path / "fresh.jsonl").exists()
    assert md5(earlier) == v1_md5 and snapshot(root) == before
    assert obj.read_bytes() == corrupted  # kept as evidence
    # Versioning the same data again does not report the corrupted object as a good push.
    with pytest.raises(dvc.DataCorrupted, match="remote object .* is corrupted"):
        dvc.version(root, DATA)
    assert snapshot(root) == before and obj.read_bytes() == corrupted

    # What plain DVC does with it: the pull fails as "missing" and the remote object is deleted.
    scratch = tmp_path / "scratch"
    (scratch / "data").mkdir(parents=True)
    git(scratch, "init", "-q")
    shutil.copytree(root / ".dvc", scratch / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    (scratch / ".dvc" / "config.local").write_text(f"['remote \"store\"']\n    url = {remote}\n")
    shutil.copy(root / (DATA + ".dvc"), scratch / "data")
    plain = raw_dvc(scratch, "pull", DATA + ".dvc")
    assert plain.returncode != 0 and "missing" in (plain.stdout + plain.stderr).lower()
    assert not obj.exists()


def test_corrupted_cache_object_is_not_reported_as_pushed(world):
    root, remote, v1, v1_md5 = world
    write_lines(root / DATA, diverse_examples(245, seed=5))
    new_md5 = dvc.version(root, DATA, push=False).md5
    cached = root / ".dvc" / "cache" / "files" / "md5" / new_md5[:2] / new_md5[2:]
    cached.chmod(0o644)
    cached.write_bytes(cached.read_bytes()[:-20] + b"garbage-garbage-xxx\n")
    corrupted = cached.read_bytes()
    before = snapshot(root)
    with pytest.raises(dvc.DataCorrupted, match="cache object .* is corrupted") as err:
        dvc.version(root, DATA)
    assert "Move that file out of the cache" in str(err.value)
    assert snapshot(root) == before and md5(root / DATA) == new_md5
    assert cached.read_bytes() == corrupted  # kept as evidence
    # What plain DVC does here: exit 0, nothing pushed, and the corrupted object deleted.
    plain = raw_dvc(root, "push", DATA + ".dvc")
    assert plain.returncode == 0 and not remote_object(remote, new_md5).exists() and not cached.exists()
    # Once the bad object is out of the way, versioning recreates it from the intact workspace file.
    assert dvc.version(root, DATA).pushed
    assert md5(remote_object(remote, new_md5)) == new_md5


def test_hand_edited_dvc_hash(world, tmp_path):
    root, remote, v1, v1_md5 = world
    pointer = root / (DATA + ".dvc")
    # (a) An md5 that names nothing.
    pointer.write_text(pointer.read_text().replace(f"md5: {v1_md5}", "md5: 0123456789abcdef0123456789abcdef", 1))
    bogus = commit(root, "hand edit")
    with pytest.raises(dvc.ObjectMissing, match="edited by hand"):
        dvc.pull(root, bogus, DATA, tmp_path / "a.jsonl")
    # (b) An md5 copied from another version while the size still says this one: DVC would
    # happily check out the other version's bytes.
    write_lines(root / DATA, diverse_examples(300, seed=6))
    v2 = dvc.version(root, DATA)
    commit(root, "v2")
    pointer.write_text(pointer.read_text().replace(f"md5: {v2.md5}", f"md5: {v1_md5}", 1))
    edited = commit(root, "md5 pasted from v1")
    with pytest.raises(dvc.DataCorrupted, match="edited by hand"):
        dvc.pull(root, edited, DATA, tmp_path / "b.jsonl")
    assert not (tmp_path / "a.jsonl").exists() and not (tmp_path / "b.jsonl").exists()
    # (c) Not hex at all: named by file and field.
    pointer.write_text(pointer.read_text().replace(f"md5: {v1_md5}", "md5: not-a-hash", 1))
    broken = commit(root, "garbage")
    with pytest.raises(dvc.PointerInvalid, match=r"train\.jsonl\.dvc@.*outs\[0\]\.md5"):
        dvc.pull(root, broken, DATA, tmp_path / "c.jsonl")
    # (d) Versioning again trusts the workspace bytes, which stay untouched.
    data_before = (root / DATA).read_bytes()
    assert dvc.version(root, DATA).md5 == v2.md5
    assert (root / DATA).read_bytes() == data_before
    assert yaml.safe_load(pointer.read_text())["outs"][0]["md5"] == v2.md5


def test_cli_version_and_pull(git_repo, tmp_path):
    root = git_repo.root
    write_lines(root / DATA, diverse_examples(230, seed=7) + ['{"broken'])
    store = tmp_path / "store"
    proc = run_ftops("data", "version", DATA, "--remote", str(store), "--output", "json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    meta = yaml.safe_load((root / (DATA + ".dvc")).read_text())["meta"]["ftops"]
    assert meta == out["meta"]
    assert meta["examples"] == 231 and meta["valid"] == 230 and meta["errors"] == 1
    assert "train" not in meta  # no split is predicted for data with errors
    assert meta["bytes"] == (root / DATA).stat().st_size and meta["tokens"] > 0 and meta["tokensMethod"] == "estimate:chars/4"
    assert md5(remote_object(store, out["md5"])) == out["md5"] == hashlib.md5((root / DATA).read_bytes()).hexdigest()
    rev = commit(root, "data")
    proc = run_ftops("data", "pull", DATA, "--rev", rev, "--out", str(tmp_path / "p.jsonl"), cwd=root)
    assert proc.returncode == 0 and md5(tmp_path / "p.jsonl") == out["md5"]
    proc = run_ftops("data", "pull", DATA, "--rev", "nope", "--out", str(tmp_path / "q.jsonl"), cwd=root)
    assert proc.returncode == 1 and "revision 'nope' does not exist" in proc.stderr

    # Versioning through a spec records what `prepare` will do with the spec's settings.
    lines = diverse_examples(300, seed=11)
    write_lines(root / DATA, lines + lines[:5])
    git_repo.write("specs/s.yaml", "\n".join([
        "apiVersion: ftops.dev/v1alpha1", "kind: FineTune", "metadata: {name: s, owner: team}",
        "spec:", "  baseModel: {uri: models/none}", f"  dataset: {{path: {DATA}, testFraction: 0.2}}", "  method: {type: lora}", "",
    ]))
    proc = run_ftops("data", "version", "specs/s.yaml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    meta = yaml.safe_load((root / (DATA + ".dvc")).read_text())["meta"]["ftops"]
    assert (meta["examples"], meta["exactDuplicates"], meta["kept"], meta["train"], meta["test"], meta["trainable"]) == (305, 5, 300, 240, 60, True)
    assert meta["md5"] == md5(root / DATA) == md5(remote_object(store, meta["md5"]))


def test_a_file_committed_to_git_is_not_taken_over_silently(git_repo, tmp_path):
    root = git_repo.root
    write_lines(root / DATA, diverse_examples(220, seed=8))
    git_repo.commit("data in git")
    before = (root / DATA).read_bytes()
    with pytest.raises(dvc.PermanentError, match=r"committed to git directly.*git rm --cached data/train.jsonl"):
        dvc.version(root, DATA, remote_url=str(tmp_path / "store"))
    assert (root / DATA).read_bytes() == before and not (root / ".dvc").exists() and git(root, "status", "--porcelain") == ""
    assert not (tmp_path / "store").exists()
