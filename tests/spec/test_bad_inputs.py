"""A catalog of bad specs. Each case plants one mistake in a valid spec and asserts the exact
field path, the line, and that the message tells the author what to write instead."""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

import pytest

from controller.catalog import load_operator_config
from controller.source import WorkingTreeView
from controller.spec.load import load_spec_text

VALID = textwrap.dedent(
    """\
    apiVersion: ftops.dev/v1alpha1
    kind: FineTune
    metadata:
      name: triage
      owner: support
    spec:
      baseModel:
        uri: models/tiny
      dataset:
        path: data/train.jsonl
        testFraction: 0.15
      method:
        type: lora
        r: 8
      training:
        epochs: 3
        learningRate: 2.0e-4
        packing: false
      hardware:
        gpuType: a100-80gb
      evaluation:
        task: {metric: exact_match, min: 0.9}
      serving:
        corpus: corpora/kb
        replicas: 2
    """
)


@dataclass(frozen=True)
class Case:
    id: str
    old: str
    new: str
    field: str
    message: str  # regex the message must match
    line: int | None = None
    severity: str = "error"


CASES = [
    Case("unknown-field-typo", "    epochs: 3\n", "    epocs: 3\n", "spec.training.epocs", r"unknown field 'epocs'\. Did you mean 'epochs'\?", 16),
    Case("unknown-top-level", "kind: FineTune\n", "kind: FineTune\nspecs: {}\n", "specs", r"unknown field 'specs'\. Did you mean 'spec'\?", 3),
    Case("unknown-method-field", "    r: 8\n", "    rank: 8\n", "spec.method.rank", r"unknown field 'rank'.*Known fields here: type, r, alpha"),
    Case("missing-owner", "  owner: support\n", "", "metadata.owner", r"required field 'owner' is missing \(Team that owns"),
    Case("missing-dataset-path", "    path: data/train.jsonl\n", "", "spec.dataset.path", r"required field 'path' is missing"),
    Case("wrong-api-version", "apiVersion: ftops.dev/v1alpha1", "apiVersion: ftops.dev/v1", "apiVersion", r"must be one of 'ftops\.dev/v1alpha1', not 'ftops\.dev/v1'", 1),
    Case("wrong-kind", "kind: FineTune", "kind: Finetune", "kind", r"must be one of 'FineTune'", 2),
    Case("name-uppercase", "  name: triage", "  name: Triage", "metadata.name", r"RFC 1123 label.*for example 'triage'", 4),
    Case("name-too-long", "  name: triage", "  name: " + "a" * 41, "metadata.name", r"41 characters long; use at most 40"),
    Case("name-not-file-name", "  name: triage", "  name: other", "metadata.name", r"does not match the file name: rename the file to specs/other\.yaml"),
    Case("owner-number", "  owner: support", "  owner: 42", "metadata.owner", r"YAML reads the unquoted 42 as the number 42: write it in quotes, '42'"),
    Case("method-unknown-type", "    type: lora", "    type: dora", "spec.method", r"type 'dora' is not a method: write one of lora, qlora, full"),
    Case("method-missing-type", "    type: lora\n", "", "spec.method", r"needs `type:` set to one of lora, qlora, full"),
    Case("lora-rank-zero", "    r: 8", "    r: 0", "spec.method.r", r"greater than or equal to 1"),
    Case("test-fraction-too-high", "    testFraction: 0.15", "    testFraction: 0.3", "spec.dataset.testFraction", r"less than or equal to 0\.2", 11),
    Case("test-fraction-too-low", "    testFraction: 0.15", "    testFraction: 0.05", "spec.dataset.testFraction", r"greater than or equal to 0\.15"),
    Case("min-examples-below-seed", "    testFraction: 0.15\n", "    testFraction: 0.15\n    minExamples: 50\n", "spec.dataset.minExamples", r"greater than or equal to 200"),
    Case("yaml11-bool-no", "    packing: false", "    packing: no", "spec.training.packing", r"'no' is a boolean only in YAML 1\.1.*write false"),
    Case("yaml11-bool-yes", "    packing: false", "    packing: yes", "spec.training.packing", r"write true"),
    Case("quoted-number", "    epochs: 3", "    epochs: '3'", "spec.training.epochs", r"the value is quoted: remove the quotes around '3'"),
    Case("float-to-string-field", "  owner: support", "  owner: 1.10", "metadata.owner", r"reads the unquoted 1\.10 as the number 1\.1: write it in quotes, '1\.10'"),
    Case("yaml11-exponent-warning", "    learningRate: 2.0e-4", "    learningRate: 2e-4", "spec.training.learningRate", r"YAML 1\.1 tools \(PyYAML\) read it as a string: write 2\.0e-4", 17, "warning"),
    Case("yaml-anchor", "  dataset:\n", "  dataset: &d\n", "", r"YAML anchor '&d' is not allowed", 9),
    Case("yaml-alias", "  serving:\n    corpus: corpora/kb\n", "  serving:\n    corpus: *x\n", "", r"alias|anchor"),
    Case("python-tag", "    uri: models/tiny", "    uri: !!python/object/apply:os.system [ls]", "", r"YAML tag '!!python/object/apply:os\.system' is not allowed", 8),
    Case("custom-tag", "    uri: models/tiny", "    uri: !model tiny", "", r"YAML tag '!model' is not allowed", 8),
    Case("duplicate-key", "    r: 8\n", "    r: 8\n    r: 16\n", "spec.method.r", r"duplicate key 'r' \(first set on line 14\): keep one", 15),
    Case("two-documents", "kind: FineTune\n", "kind: FineTune\n---\nkind: FineTune\n", "", r"more than one YAML document"),
    Case("bad-indentation", "  owner: support\n", "  owner: support\n   bad: [\n", "", r"not valid YAML"),
    Case("dotdot-path", "    path: data/train.jsonl", "    path: ../secrets/train.jsonl", "spec.dataset.path", r"must stay inside the repository: '\.\.' is not allowed", 10),
    Case("absolute-path", "    path: data/train.jsonl", "    path: /etc/passwd", "spec.dataset.path", r"must be relative to the repository root, not absolute"),
    Case("home-path", "    corpus: corpora/kb", "    corpus: ~/kb", "spec.serving.corpus", r"not absolute"),
    Case("missing-dataset-file", "    path: data/train.jsonl", "    path: data/nope.jsonl", "spec.dataset.path", r"'data/nope\.jsonl' does not exist in the repository: commit it or its DVC pointer 'data/nope\.jsonl\.dvc'"),
    Case("symlink-escape", "    path: data/train.jsonl", "    path: data/escape.jsonl", "spec.dataset.path", r"symlink that leads outside the repository"),
    Case("base-model-not-dir", "    uri: models/tiny", "    uri: data/train.jsonl", "spec.baseModel.uri", r"is a file, expected a dir"),
    Case("hf-without-revision", "    uri: models/tiny", "    uri: hf://meta-llama/Llama-3.1-8B", "spec.baseModel.revision", r"is required for hf:// models: write the 40-hex commit sha"),
    Case("hf-branch-revision", "    uri: models/tiny", "    uri: hf://org/model\n    revision: main", "spec.baseModel.revision", r"must be a 40-character lowercase hex commit sha, not 'main'"),
    Case("unsupported-scheme", "    uri: models/tiny", "    uri: gs://bucket/model", "spec.baseModel.uri", r"scheme 'gs://' is not supported"),
    Case("literal-api-key", "    task: {metric: exact_match, min: 0.9}", "    task: {metric: exact_match, min: 0.9}\n    compare:\n      models:\n        - {name: big, endpoint: 'https://x.example/v1', apiKey: 'supersecretvalue123'}", "spec.evaluation.compare.models[0].apiKey", r"literal credential \(value not shown\).*secretRef"),
    Case("openai-key-in-label", "  owner: support\n", "  owner: support\n  labels: {note: sk-abcdefghijklmnopqrstuvwx}\n", "metadata.labels.note", r"looks like an OpenAI-style API key \(value not shown\)"),
    Case("token-field", "  owner: support\n", "  owner: support\n  token: ghp_abcdefghijklmnopqrstuvwxyz0123456789\n", "metadata.token", r"literal credential \(value not shown\)"),
    Case("private-key", "    corpus: corpora/kb", "    corpus: corpora/kb\n    retriever: '-----BEGIN RSA PRIVATE KEY-----'", "spec.serving.retriever", r"a private key \(value not shown\)"),
    Case("gpu-not-in-catalog", "    gpuType: a100-80gb", "    gpuType: a100", "spec.hardware.gpuType", r"'a100' is not in the operator's GPU catalog\. Did you mean 'a100-40gb'\?", 20),
    Case("canary-one-replica", "    replicas: 2", "    replicas: 1\n    rollout: {strategy: canary}", "spec.serving", r"canary rollout needs replicas >= 2"),
    Case("format-two-kinds", "    task: {metric: exact_match, min: 0.9}", "    task: {metric: exact_match, min: 0.9}\n    format: {regex: 'x', jsonSchema: {type: object}}", "spec.evaluation.format", r"set exactly one of jsonSchema, schemaPath or regex \(got json_schema, regex\)"),
    Case("format-bad-regex", "    task: {metric: exact_match, min: 0.9}", "    task: {metric: exact_match, min: 0.9}\n    format: {regex: '(unclosed'}", "spec.evaluation.format.regex", r"not a valid regular expression"),
    Case("must-beat-unknown", "    task: {metric: exact_match, min: 0.9}", "    task: {metric: exact_match, min: 0.9}\n    compare: {mustBeat: [gpt-big]}", "spec.evaluation.compare", r"mustBeat names \['gpt-big'\] that are not 'base'"),
    Case("unknown-metric", "    task: {metric: exact_match, min: 0.9}", "    task: {metric: accuracy, min: 0.9}", "spec.evaluation.task.metric", r"must be one of 'exact_match', 'json_field_match', 'token_f1' or 'rouge_l', not 'accuracy'"),
    Case("threshold-above-one", "    task: {metric: exact_match, min: 0.9}", "    task: {metric: exact_match, min: 90}", "spec.evaluation.task.min", r"less than or equal to 1"),
    Case("unknown-need", "spec:\n", "spec:\n  needs: [speed]\n", "spec.needs[0]", r"must be one of 'currentData'"),
    Case("list-instead-of-map", "  hardware:\n    gpuType: a100-80gb\n", "  hardware:\n    - gpuType: a100-80gb\n", "spec.hardware", r"valid dictionary|instance of HardwareSpec"),
    Case("epochs-float-string", "    epochs: 3", "    epochs: three", "spec.training.epochs", r"valid number"),
    Case("batch-float", "    packing: false", "    packing: false\n    batchSize: 8.5", "spec.training.batchSize", r"whole number, not 8\.5"),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    (root / "specs").mkdir()
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text('{"messages": []}\n')
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "corpora" / "kb").mkdir(parents=True)
    outside = tmp_path_factory.mktemp("outside") / "secret.jsonl"
    outside.write_text("secret\n")
    (root / "data" / "escape.jsonl").symlink_to(outside)
    return root


def load(text: str, repo):
    gpus = sorted(load_operator_config().gpus)
    return load_spec_text(text, "specs/triage.yaml", WorkingTreeView(repo), gpus)


def test_valid_baseline_has_no_issues(repo):
    result = load(VALID, repo)
    assert result.ok, [i.format() for i in result.issues]
    assert result.issues == ()


def test_catalog_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, repo):
    assert case.old in VALID, f"case {case.id} does not apply to the baseline"
    text = VALID.replace(case.old, case.new, 1)
    result = load(text, repo)
    matching = [i for i in result.issues if i.field == case.field and re.search(case.message, i.message)]
    assert matching, f"expected {case.field}: /{case.message}/ in {[i.format() for i in result.issues]}"
    issue = matching[0]
    assert issue.severity == case.severity
    assert issue.file == "specs/triage.yaml"
    if case.line is not None:
        assert issue.line == case.line, issue.format()
    if case.severity == "error":
        assert not result.ok and result.spec is None
    else:
        assert result.ok


def test_credentials_are_never_echoed(repo):
    secret = "sk-THISISASECRETVALUE0123456789"
    text = VALID.replace("  owner: support\n", f"  owner: support\n  labels: {{k: {secret}}}\n  password: hunter2hunter2\n")
    result = load(text, repo)
    rendered = "\n".join(i.format() for i in result.issues)
    assert secret not in rendered and "hunter2" not in rendered
    assert {i.field for i in result.errors} >= {"metadata.labels.k", "metadata.password"}


def test_every_error_in_a_file_is_reported_at_once(repo):
    text = VALID.replace("    epochs: 3", "    epocs: 3").replace("  owner: support", "  owner: 42").replace(
        "    testFraction: 0.15", "    testFraction: 0.5"
    )
    fields = {i.field for i in load(text, repo).errors}
    assert {"spec.training.epocs", "metadata.owner", "spec.dataset.testFraction"} <= fields


def test_empty_and_non_mapping_files(repo):
    assert "this file is empty" in load("", repo).issues[0].message
    assert "this file is a list" in load("- a\n- b\n", repo).issues[0].message


def test_billion_laughs_is_refused_before_expansion(repo):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b]\n"
    issue = load(bomb, repo).issues[0]
    assert issue.line == 1 and "anchor" in issue.message
