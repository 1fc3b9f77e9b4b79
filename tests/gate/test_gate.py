"""The gate is a pure function of (report, spec thresholds, run id): these tests need no model."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from controller.gate import decide
from controller.spec import load_spec_text

RUN = "0123456789ab"


def spec(evaluation: str):
    text = f"""apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {{name: gated, owner: tests}}
spec:
  baseModel: {{uri: models/tiny}}
  dataset: {{path: data/x.jsonl}}
  method: {{type: lora}}
  evaluation:
{evaluation}
"""
    loaded = load_spec_text(text, "specs/gated.yaml")
    assert loaded.spec is not None, [i.format() for i in loaded.issues]
    return loaded.spec


FULL = spec("""    task: {metric: token_f1, min: 0.7}
    format: {regex: '.+', min: 0.95}
    regression: {maxDrop: 0.05}
    compare:
      mustBeat: [base, big]
      models: [{name: big, endpoint: "https://example.invalid/v1"}]
    bias: {path: data/bias.jsonl, maxGap: 0.1}""")


def report(**metrics) -> dict:
    base = {"task.token_f1": 0.8, "format.compliance": 1.0, "regression.drop": 0.01, "compare.fine-tuned.score": 0.8,
            "compare.base.score": 0.4, "compare.big.score": 0.75, "bias.gap": 0.05}
    base.update(metrics)
    return {"runId": RUN, "status": "completed", "metrics": {k: v for k, v in base.items() if v != "DROP"}}


def test_a_good_report_passes_with_one_line_per_gate() -> None:
    decision = decide(report(), FULL, RUN, report_sha256="ab" * 32)
    assert decision.passed and decision.reason == "Succeeded"
    assert [(line.metric, line.kind) for line in decision.lines] == [
        ("task.token_f1", "min"), ("format.compliance", "min"), ("regression.drop", "maxDrop"),
        ("compare.fine-tuned.score", "mustBeat"), ("compare.fine-tuned.score", "mustBeat"), ("bias.gap", "maxGap"),
    ]
    assert [line.threshold for line in decision.lines] == [0.7, 0.95, 0.05, 0.4, 0.75, 0.1]
    record = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert record["passed"] is True and record["runId"] == RUN and record["reportSha256"] == "ab" * 32
    assert len(record["lines"]) == 6


@pytest.mark.parametrize("bad", [math.nan, math.inf, None, "0.9", True])
def test_a_non_number_never_passes(bad) -> None:
    decision = decide(report(**{"task.token_f1": bad}), FULL, RUN)
    assert not decision.passed
    [line] = decision.failures
    assert line.metric == "task.token_f1" and line.value is None and "not a number" in line.message
    json.dumps(decision.to_dict(), allow_nan=False)  # NaN never reaches the ledger as NaN


def test_a_missing_metric_fails() -> None:
    decision = decide(report(**{"bias.gap": "DROP"}), FULL, RUN)
    assert [line.metric for line in decision.failures] == ["bias.gap"]
    assert "missing from the report" in decision.failures[0].message
    # A report scored with another task metric than the spec asks for is missing that metric.
    other = spec("    task: {metric: rouge_l, min: 0.5}")
    assert "task.rouge_l is missing" in decide(report(), other, RUN).message()


def test_a_report_for_another_run_fails() -> None:
    decision = decide({**report(), "runId": "ffffffffffff"}, FULL, RUN)
    assert not decision.passed and len(decision.lines) == 1
    assert "report is for run 'ffffffffffff', not '0123456789ab'" in decision.message()


def test_a_crashed_or_missing_evaluation_fails() -> None:
    crashed = {"runId": RUN, "status": "crashed", "error": "CUDA out of memory", "metrics": {}}
    decision = decide(crashed, FULL, RUN)
    assert not decision.passed and "did not complete (status 'crashed'): CUDA out of memory" in decision.message()
    assert not decide(None, FULL, RUN).passed
    assert "no evaluation report" in decide(None, FULL, RUN).message()
    assert not decide({"runId": RUN, "metrics": report()["metrics"]}, FULL, RUN).passed  # no status: not completed


def test_thresholds_are_inclusive_and_each_direction_is_right() -> None:
    assert decide(report(**{"task.token_f1": 0.7, "regression.drop": 0.05, "bias.gap": 0.1}), FULL, RUN).passed
    assert decide(report(**{"compare.fine-tuned.score": 0.75}), FULL, RUN).passed  # a tie with big passes
    fails = decide(report(**{"task.token_f1": 0.69, "regression.drop": 0.06, "bias.gap": 0.11, "format.compliance": 0.9}),
                   FULL, RUN)
    assert [line.metric for line in fails.failures] == ["task.token_f1", "format.compliance", "regression.drop", "bias.gap"]
    assert "regression drop from base 0.0600 > maxDrop 0.0500" in fails.message()


def test_must_beat_fails_when_the_reference_scores_higher_or_is_missing() -> None:
    beaten = decide(report(**{"compare.big.score": 0.9}), FULL, RUN)
    assert [line.message.split(":")[0] for line in beaten.failures] == ["mustBeat big"]
    assert "fine-tuned 0.8000 < big 0.9000" in beaten.message()
    missing = decide(report(**{"compare.big.score": "DROP"}), FULL, RUN)
    assert "mustBeat big: compare.big.score is missing from the report" in missing.message()
    nan = decide(report(**{"compare.base.score": math.nan}), FULL, RUN)
    assert "mustBeat base: compare.base.score is not a number" in nan.message()


def test_defaults_gate_task_regression_and_base() -> None:
    minimal = spec("    task: {metric: exact_match}")
    decision = decide({"runId": RUN, "status": "completed", "metrics": {
        "task.exact_match": 0.85, "regression.drop": 0.0, "compare.fine-tuned.score": 0.85, "compare.base.score": 0.3}}, minimal, RUN)
    assert decision.passed and [(l.metric, l.threshold) for l in decision.lines] == [
        ("task.exact_match", 0.8), ("regression.drop", 0.05), ("compare.fine-tuned.score", 0.3)]


def test_decide_accepts_the_evaluation_block_or_the_whole_spec() -> None:
    assert decide(report(), FULL.spec.evaluation, RUN).to_dict() == decide(report(), FULL, RUN).to_dict()
    assert decide(report(), FULL.spec, RUN).passed


def test_gate_is_pure_and_light() -> None:
    code = "import sys, controller.gate; bad = {'torch', 'transformers', 'controller.evaluate', 'controller.train'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert out == "[]"


def rag_spec():
    text = """apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {name: gated, owner: tests}
spec:
  baseModel: {uri: models/tiny}
  dataset: {path: data/x.jsonl}
  method: {type: lora}
  evaluation:
    task: {metric: json_field_match, fields: [label, source], min: 0.9}
    rag:
      recallAtK: {min: 0.9}
      citationAccuracy: {min: 0.85}
      groundedness: {min: 0.8}
  serving: {corpus: corpora/kb, topK: 2}
"""
    loaded = load_spec_text(text, "specs/gated.yaml")
    assert loaded.spec is not None, [i.format() for i in loaded.issues]
    return loaded.spec


def rag_report(**metrics) -> dict:
    base = {"task.json_field_match": 0.95, "regression.drop": 0.0, "compare.fine-tuned.score": 0.95,
            "compare.base.score": 0.1, "rag.recallAtK": 0.97, "rag.citationAccuracy": 0.9, "rag.groundedness": 0.85}
    base.update(metrics)
    return {"runId": RUN, "status": "completed", "servingConfig": {"sha256": "c" * 64},
            "metrics": {k: v for k, v in base.items() if v != "DROP"}}


def test_rag_metrics_gate_each_with_its_own_line() -> None:
    spec_ = rag_spec()
    ok = decide(rag_report(), spec_, RUN, serving_config="c" * 64)
    assert ok.passed, ok.format()
    assert {line.metric for line in ok.lines} >= {"rag.recallAtK", "rag.citationAccuracy", "rag.groundedness"}
    assert ok.to_dict()["servingConfigSha256"] == "c" * 64
    cites_distractors = decide(rag_report(**{"rag.citationAccuracy": 0.3}), spec_, RUN)
    assert [line.metric for line in cites_distractors.failures] == ["rag.citationAccuracy"]
    assert "citation accuracy (cites the gold source) 0.3000 < min 0.8500" in cites_distractors.message()
    ungrounded = decide(rag_report(**{"rag.groundedness": None}), spec_, RUN)
    assert [line.metric for line in ungrounded.failures] == ["rag.groundedness"]
    assert "not a number" in ungrounded.message()
    missing = decide(rag_report(**{"rag.recallAtK": "DROP"}), spec_, RUN)
    assert "rag.recallAtK is missing" in missing.message()


def test_a_report_for_another_serving_configuration_never_passes() -> None:
    """The report evaluated the served system on one corpus/retriever/prompt; another one serves."""
    decision = decide(rag_report(), rag_spec(), RUN, serving_config="d" * 64)
    assert not decision.passed and [line.metric for line in decision.failures] == ["report.servingConfig"]
    assert "report evaluated serving configuration cccccccccccc…, not dddddddddddd…" in decision.message()
    unrecorded = {k: v for k, v in rag_report().items() if k != "servingConfig"}
    assert not decide(unrecorded, rag_spec(), RUN, serving_config="c" * 64).passed
    assert decide(unrecorded, rag_spec(), RUN).to_dict()["servingConfigSha256"] is None


def test_rag_gates_and_retrieval_training_need_a_corpus() -> None:
    text = """apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {name: gated, owner: tests}
spec:
  baseModel: {uri: models/tiny}
  dataset: {path: data/x.jsonl}
  method: {type: lora}
  training: {retrieval: {goldShare: 0.8}}
  evaluation:
    rag: {citationAccuracy: {min: 0.9}}
"""
    loaded = load_spec_text(text, "specs/gated.yaml")
    assert loaded.spec is None
    assert any("set spec.serving.corpus" in i.message for i in loaded.issues), [i.format() for i in loaded.issues]
