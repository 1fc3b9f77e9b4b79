"""The cost estimate follows training.precision: the operator's table is bf16 throughput, fp32
is estimated at half of it and needs more memory for LoRA; auto is bf16 on a GPU (the calibrated
default, pinned in test_cost_advisor_identity), fp32 on the CPU, qlora's compute dtype for qlora."""
from __future__ import annotations

import pytest

from controller.catalog import load_operator_config
from controller.cost import estimate, training_precision
from controller.spec.finetune import FineTune

REFERENCE_TOKENS_ALL = round(5_000_000 / 0.85)  # the calibration workload: 15M training tokens over 3 epochs


def spec(**changes) -> FineTune:
    """A LoRA 7B spec on one A100-80GB; `spec__training={...}` replaces that block."""
    data = {
        "apiVersion": "ftops.dev/v1alpha1", "kind": "FineTune", "metadata": {"name": "x", "owner": "team"},
        "spec": {"baseModel": {"uri": "models/m", "parametersBillions": 7},
                 "dataset": {"path": "data/x.jsonl", "testFraction": 0.15}, "method": {"type": "lora"},
                 "training": {"epochs": 3}, "hardware": {"gpuType": "a100-80gb", "maxHours": 720}},
    }
    for dotted, value in changes.items():
        data["spec"][dotted.removeprefix("spec__")] = value
    return FineTune.model_validate(data)


def test_auto_resolves_like_the_trainer() -> None:
    assert training_precision(spec()) == "bf16"
    assert training_precision(spec(spec__hardware={"gpuType": "cpu", "maxHours": 720})) == "fp32"
    assert training_precision(spec(spec__method={"type": "qlora", "quantization": {"computeDtype": "float16"}})) == "fp16"
    assert training_precision(spec(spec__training={"epochs": 3, "precision": "fp32"})) == "fp32"


def test_fp32_costs_twice_bf16_and_warns_about_memory_sooner() -> None:
    operator = load_operator_config()
    auto = estimate(spec(), operator, None, data_tokens=REFERENCE_TOKENS_ALL)
    bf16 = estimate(spec(spec__training={"epochs": 3, "precision": "bf16"}), operator, None, data_tokens=REFERENCE_TOKENS_ALL)
    fp32 = estimate(spec(spec__training={"epochs": 3, "precision": "fp32"}), operator, None, data_tokens=REFERENCE_TOKENS_ALL)
    assert auto.usd == bf16.usd and fp32.usd == pytest.approx(2 * bf16.usd)
    assert any("precision fp32" in a for a in fp32.assumptions) and not any("precision" in a for a in bf16.assumptions)
    # LoRA on a 20B base: bf16 weights (2.4 B/param = 48 GiB) fit an 80 GB A100, fp32 ones (88 GiB) do not
    big = {"spec__baseModel": {"uri": "models/m", "parametersBillions": 20}}
    assert not estimate(spec(**big), operator, 1_000_000).warnings
    heavy = estimate(spec(**big, spec__training={"epochs": 3, "precision": "fp32"}), operator, 1_000_000)
    assert any("GiB of GPU memory" in w for w in heavy.warnings)
    cpu = {"spec__hardware": {"gpuType": "cpu", "maxHours": 720}}
    assert estimate(spec(**cpu), operator, 1_000_000).usd == estimate(
        spec(**cpu, spec__training={"epochs": 3, "precision": "fp32"}), operator, 1_000_000).usd
