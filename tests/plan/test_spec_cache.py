"""The spec cache on disk: a fresh process over unchanged specs is warm (nothing is parsed),
and nothing stale is ever served: a changed tree entry a spec's checks read, another GPU
catalog or another loader version each mean a fresh check; a damaged file is started afresh."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_plan_git import SPEC, dvc_pointer  # noqa: E402

import controller.source as source_module  # noqa: E402
from controller.source import GitSource, SpecCache, load_specs_at  # noqa: E402

GPUS = ["a100-80gb", "cpu"]


@pytest.fixture
def repo(git_repo):
    git_repo.write("models/tiny/config.json", "{}")
    git_repo.write("corpora/kb/a.md", "# A\n")
    git_repo.write("data/tickets.jsonl.dvc", dvc_pointer("a" * 32, 4_000_000, 1000))
    git_repo.write("specs/triage.yaml", SPEC)
    git_repo.write("specs/other.yaml", SPEC.replace("name: triage", "name: other").replace("epochs: 2", "epocs: 2"))
    return git_repo, git_repo.commit("two specs")


def load(root: Path, sha: str, directory: Path) -> dict:
    cache = SpecCache(directory)
    with GitSource(root) as source:
        specs = load_specs_at(source, sha, cache, GPUS)
    cache.save()
    return specs


def test_a_fresh_cache_on_the_same_folder_is_warm_and_gives_the_same_answer(repo, tmp_path, monkeypatch):
    git, sha = repo
    cold = load(git.root, sha, tmp_path / "cache")

    def no_parsing(*args, **kwargs):
        raise AssertionError("a warm cache parses nothing")

    monkeypatch.setattr(source_module, "parse_spec", no_parsing)
    monkeypatch.setattr(source_module, "parse_dvc_pointer", no_parsing)
    warm = load(git.root, sha, tmp_path / "cache")
    assert warm.keys() == cold.keys()
    for path in cold:
        assert warm[path].loaded.spec == cold[path].loaded.spec
        assert warm[path].loaded.issues == cold[path].loaded.issues
        assert warm[path].data == cold[path].data
    assert not warm["specs/other.yaml"].loaded.ok  # the invalid spec stays invalid, with its issues
    assert any(i.field == "spec.training.epocs" for i in warm["specs/other.yaml"].loaded.issues)


def test_a_changed_entry_the_checks_read_is_checked_again(repo, tmp_path):
    git, sha = repo
    load(git.root, sha, tmp_path / "cache")
    git.remove("corpora/kb")  # the spec's serving.corpus no longer exists; the spec file is unchanged
    head = git.commit("drop the corpus")
    after = load(git.root, head, tmp_path / "cache")
    assert not after["specs/triage.yaml"].loaded.ok
    assert any("corpora/kb" in i.message or i.field == "spec.serving.corpus" for i in after["specs/triage.yaml"].loaded.issues)


def test_another_loader_version_or_catalog_is_not_served_from_the_cache(repo, tmp_path, monkeypatch):
    git, sha = repo
    load(git.root, sha, tmp_path / "cache")
    calls = []
    real = source_module.parse_spec
    monkeypatch.setattr(source_module, "parse_spec", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(source_module, "_LOADER_VERSION", ["another-version"])
    load(git.root, sha, tmp_path / "cache")
    assert sorted(calls) == ["specs/other.yaml", "specs/triage.yaml"]
    calls.clear()
    cache = SpecCache(tmp_path / "cache")
    with GitSource(git.root) as src:
        load_specs_at(src, sha, cache, ["cpu"])  # a GPU catalog without a100-80gb: a different answer
    assert sorted(calls) == ["specs/other.yaml", "specs/triage.yaml"]


def test_a_damaged_cache_file_is_started_afresh(repo, tmp_path):
    git, sha = repo
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "specs.sqlite").write_bytes(b"this is not a database" * 100)
    specs = load(git.root, sha, tmp_path / "cache")
    assert specs["specs/triage.yaml"].loaded.ok
    assert load(git.root, sha, tmp_path / "cache")["specs/triage.yaml"].loaded.ok


def test_plan_uses_the_cache_folder_and_prints_the_same_plan(repo, tmp_path):
    git, sha = repo
    cmd = [sys.executable, "-m", "controller.cli", "plan", "--repo", str(git.root), "--head", sha, "--no-data",
           "--cache-dir", str(tmp_path / "ci-cache"), "-o", "json"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert (tmp_path / "ci-cache" / "specs.sqlite").is_file()
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == second.returncode == 1  # other.yaml is invalid
    assert json.loads(first.stdout) == json.loads(second.stdout)
