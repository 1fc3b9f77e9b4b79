"""`ftops validate` and `ftops schema` as a user runs them, including the example specs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

EXAMPLES = sorted((REPO_ROOT / "specs").glob("*.yaml"))


def ftops(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_the_example_specs_cover_each_method():
    import yaml

    from controller.spec.method import METHOD_TYPES

    methods = {yaml.safe_load(p.read_text())["spec"]["method"]["type"] for p in EXAMPLES}
    assert methods == set(METHOD_TYPES) == {"lora", "qlora", "full", "api"}


@pytest.mark.parametrize("spec", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_spec_is_valid(spec: Path):
    done = ftops("validate", str(spec), "--output", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == []


def test_validate_reports_every_bad_spec_in_a_folder_as_json(tmp_path):
    (tmp_path / "specs").mkdir()
    good = (REPO_ROOT / "specs" / "legal-clauses.yaml").read_text()
    (tmp_path / "data" / "examples").mkdir(parents=True)
    (tmp_path / "data" / "examples" / "legal-clauses.jsonl").write_text("{}\n")
    (tmp_path / "specs" / "legal-clauses.yaml").write_text(good)
    (tmp_path / "specs" / "a.yaml").write_text(good.replace("name: legal-clauses", "name: a").replace("epochs: 2", "epochz: 2"))
    (tmp_path / "specs" / "b.yaml").write_text(good.replace("name: legal-clauses", "name: b").replace("type: qlora", "type: qlorra"))
    done = ftops("validate", str(tmp_path), "--output", "json")
    assert done.returncode == 1
    issues = json.loads(done.stdout)
    by_file = {(i["file"], i["field"]) for i in issues}
    assert ("specs/a.yaml", "spec.training.epochz") in by_file
    assert ("specs/b.yaml", "spec.method") in by_file
    assert not any(i["file"] == "specs/legal-clauses.yaml" for i in issues)
    assert set(issues[0]) >= {"file", "line", "field", "message"}


def test_validate_text_output_and_usage_errors(tmp_path):
    done = ftops("validate", str(tmp_path / "missing"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    done = ftops("validate", "--bogus")
    assert done.returncode == 2
    done = ftops("validate", str(REPO_ROOT))
    assert done.returncode == 0 and "4 spec(s): 4 valid, 0 invalid" in done.stdout


def test_validate_at_a_git_revision_ignores_uncommitted_edits(git_repo):
    spec = (REPO_ROOT / "specs" / "legal-clauses.yaml").read_text()
    git_repo.write("data/examples/legal-clauses.jsonl", "{}\n")
    git_repo.write("specs/legal-clauses.yaml", spec)
    sha = git_repo.commit("good")
    git_repo.write("specs/legal-clauses.yaml", spec.replace("epochs: 2", "epochs: -1"))  # not committed
    done = ftops("validate", "--rev", sha, "--repo", str(git_repo.root))
    assert done.returncode == 0, done.stdout
    git_repo.commit("bad")
    done = ftops("validate", "--rev", "HEAD", "--repo", str(git_repo.root))
    assert done.returncode == 1 and "spec.training.epochs" in done.stdout


def test_committed_symlink_leading_out_of_the_repo_is_refused(git_repo):
    spec = (REPO_ROOT / "specs" / "legal-clauses.yaml").read_text()
    git_repo.write("specs/legal-clauses.yaml", spec)
    (git_repo.root / "data" / "examples").mkdir(parents=True)
    (git_repo.root / "data" / "examples" / "legal-clauses.jsonl").symlink_to("../../../outside.jsonl")
    git_repo.commit("sneaky link")
    done = ftops("validate", "--rev", "HEAD", "--repo", str(git_repo.root))
    assert done.returncode == 1
    assert "symlink that leads outside the repository" in done.stdout


def test_committed_json_schema_and_reference_are_current():
    done = ftops("schema")
    assert done.stdout == (REPO_ROOT / "docs" / "finetune.schema.json").read_text(), "run `make schema`"
    done = ftops("schema", "--markdown")
    assert done.stdout == (REPO_ROOT / "docs" / "spec.md").read_text(), "run `make schema`"


def test_json_schema_accepts_the_examples():
    import jsonschema
    import yaml

    schema = json.loads((REPO_ROOT / "docs" / "finetune.schema.json").read_text())
    for path in EXAMPLES:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_validate_reads_a_git_url_at_a_revision(git_repo, tmp_path):
    spec = (REPO_ROOT / "specs" / "legal-clauses.yaml").read_text()
    git_repo.write("data/examples/legal-clauses.jsonl", "{}\n")
    git_repo.write("specs/legal-clauses.yaml", spec)
    good = git_repo.commit("good")
    git_repo.write("specs/legal-clauses.yaml", spec.replace("epochs: 2", "epochs: -1"))
    git_repo.commit("bad")
    env = {**__import__("os").environ, "HOME": str(tmp_path / "home")}  # the mirror goes to ~/.cache/ftops
    url = f"file://{git_repo.root}"
    ok = subprocess.run([sys.executable, "-m", "controller.cli", "validate", "--rev", good, "--repo", url],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-m", "controller.cli", "validate", "--rev", "main", "--repo", url],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "spec.training.epochs" in bad.stdout
    assert any((tmp_path / "home" / ".cache" / "ftops" / "git").iterdir())
    gone = subprocess.run([sys.executable, "-m", "controller.cli", "validate", "--rev", "main", "--repo",
                           f"file://{tmp_path / 'nowhere'}"], capture_output=True, text=True, env=env)
    assert gone.returncode == 2 and "failed" in gone.stderr
