"""Cost estimate calibrated to the seed's table, the advisor's decision matrix, and run identity."""
from __future__ import annotations

import copy

import pytest

from controller.advisor import advise
from controller.catalog import load_operator_config
from controller.cost import estimate
from controller.identity import eval_id, run_id, serving_id
from controller.spec.finetune import FineTune

BASE = {
    "apiVersion": "ftops.dev/v1alpha1",
    "kind": "FineTune",
    "metadata": {"name": "x", "owner": "team"},
    "spec": {
        "baseModel": {"uri": "models/m", "parametersBillions": 7},
        "dataset": {"path": "data/x.jsonl", "testFraction": 0.15},
        "method": {"type": "lora"},
        "training": {"epochs": 3},
        "hardware": {"gpuType": "a100-80gb"},
    },
}
# The reference workload the operator tables are calibrated to: 5,000 examples × 1,000 tokens.
REFERENCE_TOKENS = 5_000_000
# testFraction 0.15 leaves 85% for training; scale so training tokens × epochs = 15M as documented.
REFERENCE_TOKENS_ALL = round(REFERENCE_TOKENS / 0.85)


def spec(**changes) -> FineTune:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return FineTune.model_validate(data)


@pytest.mark.parametrize(
    "method,gpu,gpus,low,high",
    [
        ("qlora", "rtx4090", 1, 5, 15),  # seed: QLoRA 7B ~$10 on one RTX 4090
        ("lora", "a100-80gb", 1, 50, 200),  # seed: LoRA 7B $50-200 on one A100
        ("full", "a100-80gb", 4, 500, 2000),  # seed: full 7B $500-2,000 on 4x A100
    ],
)
def test_reference_workload_reproduces_the_seed_cost_table(method, gpu, gpus, low, high):
    s = spec(spec__method={"type": method}, spec__hardware={"gpuType": gpu, "gpusPerNode": gpus, "maxHours": 720})
    est = estimate(s, load_operator_config(), None, data_tokens=REFERENCE_TOKENS_ALL)
    assert low <= est.usd <= high, est.assumptions
    assert est.usd_low < est.usd < est.usd_high
    assert any("tokens" in a for a in est.assumptions) and any("$" in a for a in est.assumptions)


def test_estimate_scales_with_data_epochs_and_spot():
    operator = load_operator_config()
    one = estimate(spec(), operator, 4_000_000).usd
    assert estimate(spec(), operator, 8_000_000).usd == pytest.approx(2 * one)
    assert estimate(spec(spec__training={"epochs": 6}), operator, 4_000_000).usd == pytest.approx(2 * one)
    spot = estimate(spec(spec__hardware={"gpuType": "a100-80gb", "spot": True}), operator, 4_000_000).usd
    assert spot == pytest.approx(one * operator.spot_discount)
    assert estimate(spec(), operator, None) is None


def test_estimate_warns_when_the_run_outlives_max_hours_or_memory():
    operator = load_operator_config()
    long = estimate(spec(spec__hardware={"gpuType": "a100-80gb", "maxHours": 1}), operator, 400_000_000)
    assert any("exceeds hardware.maxHours 1" in w for w in long.warnings)
    big = estimate(spec(spec__method={"type": "full"}, spec__hardware={"gpuType": "rtx4090"}), operator, 1_000_000)
    assert any("GiB of GPU memory" in w for w in big.warnings)


def test_operator_override_changes_prices(tmp_path):
    override = tmp_path / "operator.yaml"
    override.write_text("gpus:\n  a100-80gb:\n    usdPerHour: 5.0\n")
    doubled = estimate(spec(), load_operator_config(override), 4_000_000).usd
    assert doubled == pytest.approx(2 * estimate(spec(), load_operator_config(), 4_000_000).usd)


def codes(advice):
    return {a.code: a.level for a in advice}


def test_advisor_example_thresholds_from_the_seed():
    assert codes(advise(spec(), 150))["TooFewExamples"] == "error"
    assert codes(advise(spec(), 300))["FewExamples"] == "warning"
    assert "FewExamples" not in codes(advise(spec(), 800))
    assert codes(advise(spec(spec__dataset={"path": "d.jsonl", "complexity": "complex"}), 1500))["ComplexTaskNeedsMore"] == "warning"
    assert "ComplexTaskNeedsMore" not in codes(advise(spec(spec__dataset={"path": "d.jsonl", "complexity": "complex"}), 2500))
    assert codes(advise(spec(), None))["ExamplesUnknown"] == "info"


def test_advisor_decision_matrix():
    rag_only = advise(spec(spec__needs=["currentData", "citations"]), 1000)
    assert codes(rag_only) == {"RagFitsBetter": "warning", "NeedsRetrieval": "warning"}
    with_corpus = advise(spec(spec__needs=["currentData", "consistentFormat"], spec__serving={"corpus": "kb"},
                              spec__evaluation={"format": {"regex": "x"}}), 1000)
    assert codes(with_corpus) == {}
    assert codes(advise(spec(spec__needs=["consistentFormat"]), 1000)) == {"NoFormatGate": "warning"}
    assert codes(advise(spec(), 1000)) == {"NeedsNotDeclared": "info"}
    assert codes(advise(spec(spec__method={"type": "full"}, spec__needs=["lowerCost"]), 1000)) == {"ConsiderLora": "info"}


def test_run_identity_changes_only_with_what_determines_the_result():
    base = run_id(spec(), "a" * 32, "t1")
    assert base == run_id(spec(), "a" * 32, "t1")
    for changed in (
        run_id(spec(spec__training={"epochs": 4}), "a" * 32, "t1"),
        run_id(spec(), "b" * 32, "t1"),
        run_id(spec(), "a" * 32, "t2"),
        run_id(spec(spec__method={"type": "lora", "r": 32}), "a" * 32, "t1"),
        run_id(spec(spec__hardware={"gpuType": "a100-80gb", "gpusPerNode": 2}), "a" * 32, "t1"),
        run_id(spec(spec__baseModel={"uri": "models/other"}), "a" * 32, "t1"),
        run_id(spec(metadata={"name": "y", "owner": "team"}), "a" * 32, "t1"),  # another spec, another run
    ):
        assert changed != base
    for same in (
        run_id(spec(metadata={"name": "x", "owner": "other", "labels": {"a": "b"}}), "a" * 32, "t1"),
        run_id(spec(spec__hardware={"gpuType": "h100-80gb", "spot": True, "maxHours": 2}), "a" * 32, "t1"),
        run_id(spec(spec__budget={"maxUsd": 5}), "a" * 32, "t1"),
        run_id(spec(spec__serving={"replicas": 3}), "a" * 32, "t1"),
        run_id(spec(spec__evaluation={"task": {"min": 0.99}}), "a" * 32, "t1"),
    ):
        assert same == base
    s = spec()
    assert eval_id(base, s) != eval_id(base, spec(spec__evaluation={"task": {"min": 0.99}}))
    assert serving_id(base, s, "c1") != serving_id(base, s, "c2")


def test_the_evaluation_id_follows_the_served_configuration_not_the_replicas():
    """What the served system answers (corpus version, retriever, topK, generation limit) is part of
    the evaluation; how many replicas serve it is not. Neither retrains."""
    from controller.identity import serving_config, serving_config_sha256

    served = spec(spec__serving={"corpus": "kb", "retriever": "bm25", "topK": 2})
    run = run_id(served, "a" * 32, "t1")
    evaluated = eval_id(run, served, "git:1")
    assert eval_id(run, served, "git:1") == evaluated
    for other in (eval_id(run, served, "git:2"),
                  eval_id(run, spec(spec__serving={"corpus": "kb", "retriever": "dense", "topK": 2}), "git:1"),
                  eval_id(run, spec(spec__serving={"corpus": "kb", "retriever": "bm25", "topK": 3}), "git:1"),
                  eval_id(run, spec(spec__serving={"corpus": "kb", "retriever": "bm25", "topK": 2, "maxTokens": 9}), "git:1")):
        assert other != evaluated
    scaled = spec(spec__serving={"corpus": "kb", "retriever": "bm25", "topK": 2, "replicas": 3})
    assert eval_id(run, scaled, "git:1") == evaluated and run_id(scaled, "a" * 32, "t1") == run
    assert serving_id(run, scaled, "git:1") != serving_id(run, served, "git:1")
    config = serving_config(served, "git:1")
    assert config is not None and config["corpus"] == "git:1" and config["topK"] == 2
    assert serving_config_sha256(config) != serving_config_sha256(serving_config(served, "git:2"))
    assert serving_config(spec(), "git:1") is None  # not served: nothing to evaluate it on
