"""Validation like a compiler: one run reports every mistake of every kind in a spec (the YAML,
the schema, the name, the GPU catalog, repository paths, the data versions they point at), each
at `file:line:col` with its source line and a caret under the wrong part, with a "did you mean"
for enum values and GPU types, and paths as the person typing sees them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controller.catalog import load_operator_config
from controller.source import GitSource, WorkingTreeView, load_specs_at
from controller.spec.load import load_spec_text, render
from tests.conftest import REPO_ROOT

MISTAKES = textwrap.dedent(
    """\
    apiVersion: ftops.dev/v1alpha1
    kind: FineTune
    metadata:
      name: triage-bot
      owner: 42
    spec:
      baseModel:
        uri: hf://org/base
        revision: main
      dataset:
        path: data/tickets.jsonl
        testFraction: 0.5
      method: {type: dora, r: 8}
      training:
        epocs: 3
        epochs: 2
        epochs: 4
      hardware:
        gpuType: a100
      evaluation:
        task: {metric: exact_match, min: 0.9}
        bias: {path: data/missing-bias.jsonl, groupField: region}
      serving:
        corpus: corpora/kb
        retriever: hybird
    """
)

# (field, line, column, the text the caret underlines, message pattern): eleven mistakes of nine kinds
EXPECTED = [
    ("metadata.name", 4, 9, "triage-bot", r"does not match the file name: rename the file to specs/triage-bot\.yaml"),  # name
    ("metadata.owner", 5, 10, "42", r"YAML reads the unquoted 42 as the number 42: write it in quotes"),  # type trap
    ("spec.baseModel.revision", 9, 15, "main", r"40-character lowercase hex commit sha, not 'main'"),  # validator
    ("spec.dataset.path", 11, 11, "data/tickets.jsonl", r"data/tickets\.jsonl\.dvc has no valid md5 under outs"),  # data ref
    ("spec.dataset.testFraction", 12, 19, "0.5", r"less than or equal to 0\.2"),  # range
    ("spec.method", 13, 18, "dora", r"type 'dora' is not a method: .* Did you mean 'lora'\?"),  # union tag
    ("spec.training.epocs", 15, 5, "epocs", r"unknown field 'epocs'\. Did you mean 'epochs'\?"),  # unknown field
    ("spec.training.epochs", 17, 5, "epochs", r"duplicate key 'epochs' \(first set on line 16\): keep one"),  # YAML
    ("spec.hardware.gpuType", 19, 14, "a100", r"not in the operator's GPU catalog\. Did you mean 'a100-40gb'\?"),  # catalog
    ("spec.evaluation.bias.path", 22, 18, "data/missing-bias.jsonl", r"does not exist in the repository"),  # path
    ("spec.serving.retriever", 25, 16, "hybird", r"must be one of 'bm25', 'dense' or 'hybrid', not 'hybird'\. Did you mean 'hybrid'\?"),  # enum
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "specs").mkdir(parents=True)
    (root / "corpora" / "kb").mkdir(parents=True)
    (root / "corpora" / "kb" / "refunds.md").write_text("Refunds take 5 business days.\n")
    (root / "data").mkdir()
    (root / "data" / "tickets.jsonl.dvc").write_text("outs:\n- path: tickets.jsonl\n")  # a pointer without its md5
    (root / "specs" / "triage.yaml").write_text(MISTAKES)
    return root


def _caret(rendered: str) -> str:
    """The text the caret of a rendered issue underlines."""
    _, source, carets = rendered.split("\n")
    code = source.split(" | ", 1)[1]
    marks = carets.split("| ", 1)[1]
    start = marks.index("^")
    return code[start:start + len(marks.rstrip()) - start]


def test_every_mistake_of_every_kind_is_reported_in_one_run_with_line_column_and_caret(repo):
    gpus = sorted(load_operator_config().gpus)
    loaded = load_spec_text(MISTAKES, "specs/triage.yaml", WorkingTreeView(repo), gpus)
    assert not loaded.ok and loaded.spec is None
    for field, line, column, token, pattern in EXPECTED:
        found = [i for i in loaded.errors if i.field == field and re.search(pattern, i.message)]
        assert found, f"{field}: /{pattern}/ missing from {[i.format() for i in loaded.errors]}"
        issue = found[0]
        assert (issue.line, issue.column) == (line, column), issue.format()
        rendered = render(issue, loaded.source)
        assert rendered.startswith(f"specs/triage.yaml:{line}:{column}: error: {field}: ")
        assert rendered.split("\n")[1] == f"   {line} | {MISTAKES.splitlines()[line - 1]}"
        assert _caret(rendered) == token, rendered
    assert len(loaded.errors) == len(EXPECTED)  # nothing reported twice, nothing invented


def test_the_cli_prints_them_all_with_paths_from_the_current_directory(repo):
    done = subprocess.run([sys.executable, "-m", "controller.cli", "validate", "triage.yaml"], cwd=repo / "specs",
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    heads = [ln for ln in lines if re.match(r"^triage\.yaml:\d+:\d+: error: ", ln)]
    assert len(heads) == len(EXPECTED)
    for field, line, column, token, _ in EXPECTED:
        k = next(i for i, ln in enumerate(lines) if ln.startswith(f"triage.yaml:{line}:{column}: error: {field}:"))
        assert lines[k + 1].endswith(MISTAKES.splitlines()[line - 1]) and "^" in lines[k + 2]
    assert lines[-1] == f"1 spec(s): 0 valid, 1 invalid; {len(EXPECTED)} error(s), 0 warning(s)"
    assert "\x1b[" not in done.stdout  # piped: no colour

    outside = subprocess.run([sys.executable, "-m", "controller.cli", "validate", str(repo)], cwd=repo.parent,
                             capture_output=True, text=True)
    assert "repo/specs/triage.yaml:4:9: error: metadata.name:" in outside.stdout


def test_json_output_keeps_repo_paths_and_adds_columns_lengths_and_what_was_shown(repo):
    done = subprocess.run([sys.executable, "-m", "controller.cli", "-o", "json", "validate", "specs"], cwd=repo,
                          capture_output=True, text=True)
    issues = json.loads(done.stdout)
    by_field = {i["field"]: i for i in issues}
    retriever = by_field["spec.serving.retriever"]
    assert (retriever["file"], retriever["path"], retriever["line"], retriever["column"], retriever["length"]) == \
        ("specs/triage.yaml", "specs/triage.yaml", 25, 16, len("hybird"))
    done = subprocess.run([sys.executable, "-m", "controller.cli", "validate", "specs", "-o", "name"], cwd=repo,
                          capture_output=True, text=True)
    assert done.stdout == "specs/triage.yaml\n" and done.returncode == 1


def test_refused_yaml_is_reported_beside_the_schema_mistakes_and_an_alias_is_never_guessed(repo):
    text = MISTAKES.replace("  dataset:\n", "  dataset: &d\n").replace("    corpus: corpora/kb", "    corpus: *d")
    loaded = load_spec_text(text, "specs/triage.yaml", WorkingTreeView(repo), sorted(load_operator_config().gpus))
    messages = [i.message for i in loaded.errors]
    assert any("YAML anchor '&d' is not allowed" in m for m in messages)
    assert any("YAML alias '*d' is not allowed" in m for m in messages)
    assert any("unknown field 'epocs'" in m for m in messages)  # the schema still speaks
    assert not [i for i in loaded.errors if i.field == "spec.serving.corpus"]  # the alias's value is unknown: no guess


def test_a_spec_at_a_revision_gets_every_check_too(git_repo):
    git_repo.write("specs/triage.yaml", MISTAKES)
    git_repo.write("data/tickets.jsonl.dvc", "outs:\n- path: tickets.jsonl\n")
    git_repo.write("corpora/kb/refunds.md", "x\n")
    sha = git_repo.commit("many mistakes")
    with GitSource(str(git_repo.root)) as source:
        (state,) = load_specs_at(source, sha, gpu_types=sorted(load_operator_config().gpus)).values()
    fields = {i.field for i in state.loaded.errors}
    assert fields == {f for f, *_ in EXPECTED}


def test_the_example_specs_still_have_no_issue_at_all():
    for spec in sorted((REPO_ROOT / "specs").glob("*.yaml")):
        loaded = load_spec_text(spec.read_text(), f"specs/{spec.name}", WorkingTreeView(REPO_ROOT),
                                sorted(load_operator_config().gpus))
        assert loaded.issues == (), [i.format() for i in loaded.issues]
