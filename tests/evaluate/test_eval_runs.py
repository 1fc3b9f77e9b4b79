"""End-to-end evaluation of runs trained by the real trainer on the tiny model."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import LABEL_SCHEMA_YAML, load_spec, strip_system, write_spec

from controller.errors import PermanentError
from controller.evaluate import run_evaluation
from controller.evaluate.reference import secret_env_name
from controller.gate import decide
from controller.tiny import task

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = secret_env_name("oracle-key", "api-key")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines(decision) -> dict:
    return {(line.metric, line.kind, line.message.split(":")[0]): line for line in decision.lines}


def _by_metric(decision) -> dict:
    out = {}
    for line in decision.lines:
        out.setdefault(line.metric, []).append(line)
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_well_trained_run_passes_every_gate_through_the_cli(well_run, tmp_path: Path, oracle_server) -> None:
    # regression's maxDrop is 1.0 here, not the guide's 0.05: this fixture's fine-tune (LoRA on the
    # default targets at 1e-2) forgets the base's general skills, which the next test shows the gate
    # blocking at 0.05. A LoRA run that learns the task and keeps them, passing at 0.05, is
    # tests/tiny/test_base_skills.py.
    repo = tmp_path / "repo"
    _write_jsonl(repo / "bias" / "tickets.jsonl",
                 [{**strip_system(e), "channel": "email" if i % 2 else "chat"} for i, e in enumerate(task.generate_examples(24, seed=77))])
    spec_file = write_spec(repo / "specs", f"""    task: {{metric: json_field_match, fields: [label], min: 0.9}}
    format:
{LABEL_SCHEMA_YAML}
      min: 1.0
    regression: {{suite: default, maxDrop: 1.0}}
    compare:
      samples: 30
      mustBeat: [base]
      models:
        - name: oracle
          endpoint: {oracle_server.base_url}
          model: oracle-large
          apiKey: {{name: oracle-key, key: api-key}}
    bias: {{path: bias/tickets.jsonl, groupField: channel, maxGap: 0.2}}""")
    before = json.loads((well_run.run_dir / "manifest.json").read_text())
    env = {**os.environ, KEY_ENV: oracle_server.api_key, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "eval", str(well_run.run_dir), "--spec", str(spec_file),
         "--run-config", str(well_run.run_config), "--repo-root", str(repo), "--batch-size", "32"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"gate PASS for run {well_run.run_id}" in proc.stdout

    eval_dir = well_run.run_dir / "eval"
    gate = json.loads((eval_dir / "gate.json").read_text())
    assert gate["passed"] is True and gate["runId"] == well_run.run_id
    assert sorted((line["metric"], line["kind"]) for line in gate["lines"]) == sorted([
        ("task.json_field_match", "min"), ("format.compliance", "min"), ("regression.drop", "maxDrop"),
        ("compare.fine-tuned.score", "mustBeat"), ("bias.gap", "maxGap"),
    ])
    assert all(line["passed"] for line in gate["lines"])

    report = json.loads((eval_dir / "report.json").read_text())
    assert report["runId"] == well_run.run_id and report["status"] == "completed"
    assert report["task"]["examples"] == len(well_run.test.read_text().splitlines())
    assert report["metrics"]["task.json_field_match"] >= 0.9
    # The reference endpoint was compared on the same 30 inputs and classifies them all correctly.
    assert report["compare"]["samples"] == 30
    assert report["compare"]["models"]["oracle"]["score"] == 1.0
    assert set(report["compare"]["winRates"]) == {"base", "oracle"}
    assert len(oracle_server.requests) == 30
    assert report["contamination"]["test"]["exactCopies"] == 0

    # The manifest vouches for the report; the trainer's file hashes are untouched.
    manifest = json.loads((well_run.run_dir / "manifest.json").read_text())
    assert manifest["evaluation"]["reportSha256"] == _sha(eval_dir / "report.json")
    for rel in ("eval/report.json", "eval/report.md", "eval/chart.png", "eval/gate.json"):
        assert manifest["files"][rel]["sha256"] == _sha(well_run.run_dir / rel)
    for rel, entry in before["files"].items():
        assert manifest["files"][rel] == entry
        assert _sha(well_run.run_dir / rel) == entry["sha256"]
    assert manifest["provenance"] == before["provenance"] and manifest["runId"] == before["runId"]

    assert (eval_dir / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (eval_dir / "report.md").read_text()
    assert len(md) < 65536 and "Gate: PASS" in md and "oracle" in md


def test_a_run_that_forgets_the_base_skills_is_blocked_by_the_regression_gate(well_run, tmp_path: Path) -> None:
    """The pretrained tiny base has general skills (copy a span, first/last word, reverse); this
    ticket fine-tune learns its task and forgets them (measured: base 0.95, fine-tuned under 0.1 on
    the default suite). The regression gate at the guide's 0.05 blocks it, and only it, naming
    what was forgotten. (A LoRA recipe that keeps the skills and passes at 0.05:
    tests/tiny/test_base_skills.py.)"""
    spec_file = write_spec(tmp_path / "specs", f"""    task: {{metric: json_field_match, fields: [label], min: 0.9}}
    format:
{LABEL_SCHEMA_YAML}
      min: 1.0
    regression: {{suite: default, maxDrop: 0.05}}""")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "eval", str(well_run.run_dir), "--spec", str(spec_file),
         "--run-config", str(well_run.run_config), "--out", str(out), "--batch-size", "32"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    gate = json.loads((out / "gate.json").read_text())
    failed = [line["metric"] for line in gate["lines"] if not line["passed"]]
    assert gate["passed"] is False and failed == ["regression.drop"], gate
    regression = json.loads((out / "report.json").read_text())["regression"]
    assert regression["base"] >= 0.9 and regression["drop"] > 0.05 and regression["forgottenCount"] > 0
    assert regression["forgotten"][0]["expected"] and regression["forgotten"][0]["base"] != regression["forgotten"][0]["fineTuned"]


def test_under_trained_run_fails_task_accuracy_with_the_reason(under_run, tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", f"""    task: {{metric: json_field_match, fields: [label], min: 0.9}}
    format:
{LABEL_SCHEMA_YAML}
      min: 1.0
    compare: {{samples: 5}}"""))
    report = run_evaluation(under_run.run_dir, spec, under_run.test, output_dir=tmp_path / "eval", batch_size=32, progress=False)
    decision = decide(report, spec, under_run.run_id, report.sha256)
    assert not decision.passed
    task_line = _by_metric(decision)["task.json_field_match"][0]
    assert not task_line.passed and task_line.value < 0.9 and task_line.threshold == 0.9
    assert "task accuracy (json_field_match)" in task_line.message and "< min 0.9000" in task_line.message
    assert task_line in decision.failures and "task accuracy" in decision.message()
    # The wrong answers are listed with what was expected and what came out.
    failures = report.data["task"]["failures"]
    assert failures and all({"line", "expected", "output"} <= set(f) for f in failures)
    assert report.data["task"]["failed"] > 0.1 * report.data["task"]["examples"]
    json.dumps(decision.to_dict(), allow_nan=False)


def test_label_shuffled_run_fails_and_the_http_reference_beats_it(shuffled_run, tmp_path: Path, oracle_server) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", f"""    task: {{metric: exact_match, min: 0.8}}
    format:
{LABEL_SCHEMA_YAML}
      min: 1.0
    compare:
      samples: 20
      mustBeat: [base, oracle]
      models:
        - {{name: oracle, endpoint: "{oracle_server.base_url}", model: oracle-large, apiKey: {{name: oracle-key, key: api-key}}}}"""))
    report = run_evaluation(shuffled_run.run_dir, spec, shuffled_run.test, output_dir=tmp_path / "eval", batch_size=32,
                            progress=False, env={KEY_ENV: oracle_server.api_key})
    decision = decide(report, spec, shuffled_run.run_id, report.sha256)
    assert not decision.passed
    lines = _by_metric(decision)
    assert not lines["task.exact_match"][0].passed
    # It learned the answer's shape from the shuffled data, not which label fits a ticket.
    assert report.metrics["format.compliance"] > report.metrics["task.exact_match"] + 0.3
    must_beat = {line.message.split(":")[0]: line for line in lines["compare.fine-tuned.score"]}
    assert not must_beat["mustBeat oracle"].passed and must_beat["mustBeat oracle"].threshold == 1.0
    wins = report.data["compare"]["winRates"]["oracle"]
    assert wins["loss"] > 0.3 and wins["win"] == 0.0
    # The reference saw exactly the prompts, greedy, never the reference answer.
    assert len(oracle_server.requests) == 20
    for body in oracle_server.requests:
        assert body["model"] == "oracle-large" and body["temperature"] == 0
        assert body["messages"][-1]["role"] == "user"
    side = report.data["compare"]["sideBySide"][0]
    assert set(side["outputs"]) == {"fine-tuned", "base", "oracle"}


def test_bias_set_with_a_degraded_group_fails_max_gap(well_run, tmp_path: Path) -> None:
    """Tickets written in capitals are a group the model never saw: its accuracy there collapses.
    Also uses a spec-supplied regression suite (tiny-task questions with an `answer` key)."""
    repo = tmp_path / "repo"
    rows = []
    for i, e in enumerate(task.generate_examples(30, seed=99)):
        e = strip_system(e)
        if i % 2:
            e["messages"][0]["content"] = e["messages"][0]["content"].upper()
        rows.append({**e, "style": "all-caps" if i % 2 else "standard"})
    _write_jsonl(repo / "bias" / "styles.jsonl", rows)
    _write_jsonl(repo / "suites" / "tickets.jsonl", [
        {"id": f"t{i}", "skill": "triage", "messages": [e["messages"][1]], "answer": e["messages"][2]["content"], "match": "exact"}
        for i, e in enumerate(task.generate_examples(8, seed=123))
    ])
    spec = load_spec(write_spec(repo / "specs", f"""    task: {{metric: json_field_match, min: 0.9}}
    format:
{LABEL_SCHEMA_YAML}
      min: 1.0
    regression: {{suite: suites/tickets.jsonl, maxDrop: 0.0}}
    compare: {{samples: 5}}
    bias: {{path: bias/styles.jsonl, groupField: style, maxGap: 0.2}}"""))
    report = run_evaluation(well_run.run_dir, spec, well_run.test, repo_root=repo, output_dir=tmp_path / "eval",
                            batch_size=32, progress=False)
    decision = decide(report, spec, well_run.run_id, report.sha256)
    assert not decision.passed
    assert [line.metric for line in decision.failures] == ["bias.gap"]
    bias = report.data["bias"]
    assert bias["worst"] == "all-caps" and bias["best"] == "standard"
    assert bias["groups"]["standard"]["score"] >= 0.9 and bias["gap"] > 0.5
    assert {g: v["examples"] for g, v in bias["groups"].items()} == {"all-caps": 15, "standard": 15}
    # The custom suite: the base model cannot do the task, the fine-tune can (a negative drop).
    reg = report.data["regression"]
    assert reg["suite"] == "suites/tickets.jsonl" and reg["examples"] == 8
    assert reg["base"] == 0.0 and reg["fineTuned"] == 1.0 and reg["drop"] == -1.0
    assert "bias" in (tmp_path / "eval" / "chart.png").name or (tmp_path / "eval" / "chart.png").stat().st_size > 1000


def test_missing_api_key_env_is_a_clear_error_before_any_model_loads(well_run, tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", """    compare:
      models:
        - {name: big, endpoint: "http://127.0.0.1:9/v1", model: big, apiKey: {name: big-key, key: token}}"""))
    with pytest.raises(PermanentError) as err:
        run_evaluation(well_run.run_dir, spec, well_run.test, output_dir=tmp_path / "eval", env={}, progress=False)
    assert "FTOPS_SECRET_BIG_KEY_TOKEN" in str(err.value)
    assert "big-key/token" in str(err.value)


def test_test_split_must_be_the_runs_own(well_run, tmp_path: Path) -> None:
    other = _write_jsonl(tmp_path / "other.jsonl", [strip_system(e) for e in task.generate_examples(5, seed=4)])
    spec = load_spec(write_spec(tmp_path / "specs", "    task: {metric: exact_match, min: 0.5}"))
    with pytest.raises(PermanentError, match="is not the held-out split run 11111111aaaa recorded"):
        run_evaluation(well_run.run_dir, spec, other, output_dir=tmp_path / "eval", progress=False)


def test_cli_refuses_an_unfinished_run_and_records_a_crashed_eval(well_run, tmp_path: Path) -> None:
    spec_file = write_spec(tmp_path / "specs", "    bias: {path: bias/missing.jsonl}")
    unfinished = tmp_path / "store" / "tiny-triage" / "deadbeef"
    (unfinished / "model").mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "eval", str(unfinished), "--spec", str(spec_file),
                           "--test", str(well_run.test)], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 1 and "no manifest.json, so this run is not finished" in proc.stderr
    assert not (unfinished / "eval").exists()

    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "eval", str(well_run.run_dir), "--spec", str(spec_file),
                           "--test", str(well_run.test), "--repo-root", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "evaluation.bias.path: 'bias/missing.jsonl' not found" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "crashed" and "bias/missing.jsonl" in report["error"]
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passed"] is False and "evaluation did not complete" in gate["lines"][0]["message"]
    assert "Evaluation crashed" in (out / "report.md").read_text()


def test_full_fine_tune_against_a_local_reference_model(full_run, tiny_base: Path, tmp_path: Path) -> None:
    """A full run loads from model/ and its base separately; a reference given as a repo path is
    loaded with its own tokenizer and template and compared on the same inputs."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_base, repo / "models" / "previous")
    spec = load_spec(write_spec(repo / "specs", """    task: {metric: exact_match, min: 0.0}
    compare:
      samples: 6
      mustBeat: [base]
      models: [{name: previous, path: models/previous}]"""))
    report = run_evaluation(full_run.run_dir, spec, full_run.test, repo_root=repo, output_dir=tmp_path / "eval",
                            batch_size=32, progress=False)
    assert report.data["method"] == "full" and report.data["status"] == "completed"
    models = report.data["compare"]["models"]
    assert set(models) == {"fine-tuned", "base", "previous"}
    # "previous" is a copy of the base model: same weights, same template, same greedy answers.
    side = report.data["compare"]["sideBySide"]
    assert all(row["outputs"]["previous"] == row["outputs"]["base"] for row in side)
    assert models["previous"]["score"] == models["base"]["score"]
    assert report.data["compare"]["winRates"]["previous"] == report.data["compare"]["winRates"]["base"]


def test_gate_only_refuses_a_report_of_another_run(well_run, tmp_path: Path) -> None:
    """A finished run (its real manifest) holding a report written for a different run id."""
    run_dir = tmp_path / "store" / "tiny-triage" / well_run.run_id
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "manifest.json").write_bytes((well_run.run_dir / "manifest.json").read_bytes())
    (run_dir / "eval" / "report.json").write_text(json.dumps({
        "runId": "99999999ffff", "status": "completed",
        "metrics": {"task.exact_match": 1.0, "regression.drop": 0.0, "compare.fine-tuned.score": 1.0, "compare.base.score": 0.0}}))
    spec_file = write_spec(tmp_path / "specs", "    task: {metric: exact_match, min: 0.5}")
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "eval", str(run_dir), "--spec", str(spec_file), "--gate-only", "-o", "json"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    decision = json.loads(proc.stdout)
    assert decision["passed"] is False and decision["runId"] == well_run.run_id
    assert "report is for run '99999999ffff'" in decision["lines"][0]["message"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["evaluation"]["gate"] == {"passed": False, "reason": "GateFailed"}


def test_json_field_match_needs_json_references_and_says_so_before_loading(well_run, tmp_path: Path) -> None:
    bias = tmp_path / "repo" / "bias.jsonl"
    _write_jsonl(bias, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "plain words"}], "group": "a"}])
    spec = load_spec(write_spec(tmp_path / "specs", """    task: {metric: json_field_match, min: 0.5}
    bias: {path: bias.jsonl}"""))
    with pytest.raises(PermanentError, match=r"reference answer at line 1 \(bias set\) is not a JSON object"):
        run_evaluation(well_run.run_dir, spec, well_run.test, repo_root=tmp_path / "repo", output_dir=tmp_path / "eval", progress=False)


def test_reference_endpoint_failures_are_classified(well_run, tmp_path: Path, oracle_server) -> None:
    """A wrong key is permanent (retrying cannot help); an endpoint that does not answer is
    temporary (the reconciler retries it with backoff)."""
    import socket

    from controller.errors import TemporaryError

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    specs = {}
    for name, url in (("wrongkey", oracle_server.base_url), ("down", f"http://127.0.0.1:{dead}/v1")):
        specs[name] = load_spec(write_spec(tmp_path / name, f"""    task: {{metric: exact_match, min: 0.5}}
    compare:
      samples: 2
      models: [{{name: ref, endpoint: "{url}", model: m, apiKey: {{name: ref-key, key: k}}}}]"""))
    env = {secret_env_name("ref-key", "k"): "sk-wrong"}
    with pytest.raises(PermanentError, match=r"compare.models\[ref\]: .* refused the API key"):
        run_evaluation(well_run.run_dir, specs["wrongkey"], well_run.test, output_dir=tmp_path / "e1", env=env, progress=False, batch_size=32)
    with pytest.raises(TemporaryError, match=r"compare.models\[ref\]: .* failed \(unreachable: .*ConnectError"):
        run_evaluation(well_run.run_dir, specs["down"], well_run.test, output_dir=tmp_path / "e2", env=env, progress=False, batch_size=32)


def test_a_run_that_forgets_what_its_base_could_do_fails_the_regression_gate(forgetting_run, tmp_path: Path) -> None:
    """The suite here is ticket triage, which the base (the merged well-trained model) does
    perfectly; after fine-tuning on shuffled labels the run has forgotten much of it."""
    repo = tmp_path / "repo"
    _write_jsonl(repo / "suites" / "triage.jsonl", [
        {"id": f"t{i}", "skill": "triage", "messages": [e["messages"][1]], "answer": e["messages"][2]["content"], "match": "exact"}
        for i, e in enumerate(task.generate_examples(24, seed=321))
    ])
    spec = load_spec(write_spec(repo / "specs", """    task: {metric: exact_match, min: 0.0}
    regression: {suite: suites/triage.jsonl, maxDrop: 0.1}
    compare: {samples: 3}"""))
    report = run_evaluation(forgetting_run.run_dir, spec, forgetting_run.test, repo_root=repo, output_dir=tmp_path / "eval",
                            batch_size=32, progress=False)
    decision = decide(report, spec, forgetting_run.run_id, report.sha256)
    reg = report.data["regression"]
    assert reg["base"] == 1.0 and reg["drop"] > 0.1
    failed = {line.metric for line in decision.failures}
    # Its base (the previous, better model) may also beat it head to head on the A/B inputs.
    assert "regression.drop" in failed and failed <= {"regression.drop", "compare.fine-tuned.score"}
    assert "regression drop from base" in decision.message() and "> maxDrop 0.1000" in decision.message()
    assert reg["forgottenCount"] == round(reg["drop"] * 24) and reg["forgotten"][0]["id"].startswith("t")


def test_format_schema_path_is_read_from_the_repo_and_checked(well_run, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "schemas").mkdir(parents=True)
    (repo / "schemas" / "label.json").write_text('{"type": "object", "required": ["label"],')
    spec = load_spec(write_spec(repo / "specs", "    format: {schemaPath: schemas/label.json}"))
    with pytest.raises(PermanentError, match=r"label.json:1: the JSON Schema is not valid JSON"):
        run_evaluation(well_run.run_dir, spec, well_run.test, repo_root=repo, output_dir=tmp_path / "eval", progress=False)
    (repo / "schemas" / "label.json").write_text('{"type": "object", "required": 7}')
    with pytest.raises(PermanentError, match="the JSON Schema is invalid"):
        run_evaluation(well_run.run_dir, spec, well_run.test, repo_root=repo, output_dir=tmp_path / "eval", progress=False)
