"""Precision, attention kernel, activation checkpointing and 4-bit quantization are what run.json
asked for, checked on the model itself (hooks on a real forward and backward pass, the layers'
own types), never on what the trainer says about itself; and bf16 autocast learns the tiny task
as well as fp32."""
from __future__ import annotations

import json

import pytest
from train_helpers import LORA, METHOD_RUNS, greedy_accuracy, make_config, train_in_process

from controller.errors import PermanentError
from controller.spec.method import FullMethod, LoraMethod, QloraMethod, Quantization
from controller.train.loading import (
    CHECKPOINTING_MIN_PARAMETERS, attention_implementation, base_parameter_count, check_quantization,
    checkpointing_enabled, load_model, quantization_readback, resolve_attention, wants_checkpointing,
)
from controller.train.precision import autocast, resolve_precision

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.mark.parametrize("requested, device, bf16, qlora, expected", [
    ("auto", "cuda", True, None, "bf16"),
    ("auto", "cuda", False, None, "fp16"),  # V100, T4
    ("auto", "cpu", True, None, "fp32"),
    ("auto", "cuda", True, "float16", "fp16"),  # qlora: follows its compute dtype
    ("auto", "cpu", True, "bfloat16", "bf16"),
    ("bf16", "cpu", True, None, "bf16"),
    ("fp16", "cuda", False, None, "fp16"),
    ("fp32", "cuda", True, None, "fp32"),
    ("fp32", "cpu", True, "float32", "fp32"),
])
def test_resolve_precision(requested, device, bf16, qlora, expected) -> None:
    precision = resolve_precision(requested, device, bf16_supported=bf16, qlora_compute_dtype=qlora)
    assert precision.name == expected and precision.requested == requested
    assert precision.loss_scaling is (expected == "fp16") and precision.autocast is (expected != "fp32")


def test_precision_errors_name_the_fields() -> None:
    with pytest.raises(PermanentError, match=r"training.precision: bf16 disagrees with method.quantization.computeDtype"):
        resolve_precision("bf16", "cuda", bf16_supported=True, qlora_compute_dtype="float32")
    with pytest.raises(PermanentError, match=r"training.precision: bf16 is not supported by this GPU.*fp16"):
        resolve_precision("bf16", "cuda", bf16_supported=False)
    with pytest.raises(PermanentError, match=r"computeDtype: float16"):
        resolve_precision("auto", "cuda", bf16_supported=False, qlora_compute_dtype="bfloat16")


def _linear_dtypes(model, precision, device="cpu"):
    """Forward + backward on a tiny batch with a hook on every Linear: {name: (weight dtype,
    output dtype)}, and the gradient dtypes of the trained parameters."""
    import torch

    seen: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, (mod.weight.dtype, out.dtype)))
             for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        ids = torch.randint(4, 390, (2, 12))
        with autocast(precision, device):
            out = model(input_ids=ids, use_cache=False)
        out.logits.float().sum().backward()
    finally:
        for h in hooks:
            h.remove()
    grads = {p.grad.dtype for p in model.parameters() if p.requires_grad}
    return seen, grads, out.logits.dtype


@pytest.mark.parametrize("method, requested, frozen, activations", [
    (LoraMethod(type="lora", **LORA), "bf16", "bfloat16", "bfloat16"),
    (LoraMethod(type="lora", **LORA), "fp16", "float16", "float16"),
    (LoraMethod(type="lora", **LORA), "fp32", "float32", "float32"),
    (FullMethod(type="full"), "bf16", None, "bfloat16"),  # every weight float32 (master), matmuls in bf16
])
def test_parameter_and_activation_dtypes_follow_the_precision(tiny_model, method, requested, frozen, activations) -> None:
    import torch

    precision = resolve_precision(requested, "cpu", bf16_supported=True)
    model = load_model(tiny_model, method, "cpu", dtype=precision.dtype(), gradient_checkpointing=False).train()
    seen, grads, _ = _linear_dtypes(model, precision)
    assert len(seen) >= 2 * len(PROJECTIONS)
    for name, (weight, output) in seen.items():
        is_adapter = ".lora_" in name
        if is_adapter or method.type == "full":
            assert weight == torch.float32, name  # the master weights
        else:
            assert str(weight) == f"torch.{frozen}", name  # the frozen base (lm_head too), stored in the compute dtype
        assert str(output) == f"torch.{activations}", name
    assert grads == {torch.float32}  # optimizer updates float32 parameters with float32 gradients


def test_sdpa_is_the_attention_that_runs(tiny_model, monkeypatch) -> None:
    import torch

    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    ids = torch.randint(4, 390, (1, 10))
    lora = LoraMethod(type="lora", **LORA)
    model = load_model(tiny_model, lora, "cpu", dtype=torch.float32, gradient_checkpointing=False,
                       attention=resolve_attention("auto", "cpu"))
    model(input_ids=ids, use_cache=False)
    assert attention_implementation(model) == "sdpa" and len(calls) == model.config.num_hidden_layers
    calls.clear()
    eager = load_model(tiny_model, lora, "cpu", dtype=torch.float32, gradient_checkpointing=False, attention="eager")
    eager(input_ids=ids, use_cache=False)
    assert attention_implementation(eager) == "eager" and calls == []


def test_attention_resolution(monkeypatch) -> None:
    from controller.train import loading

    monkeypatch.setattr(loading, "flash_attention_installed", lambda: False)
    assert resolve_attention("auto", "cuda:0") == "sdpa"
    with pytest.raises(PermanentError, match=r"training.attention: flash_attention_2 needs a CUDA GPU and the flash-attn"):
        resolve_attention("flash_attention_2", "cpu")
    monkeypatch.setattr(loading, "flash_attention_installed", lambda: True)
    assert resolve_attention("auto", "cuda:0") == "flash_attention_2"  # varlen kernels for packed rows
    assert resolve_attention("auto", "cpu") == "sdpa"


def test_gradient_checkpointing_default_follows_model_size(tiny_model) -> None:
    parameters, size = base_parameter_count(tiny_model)
    assert 50_000 < parameters < 1_000_000 and size == 4 * parameters  # float32 tiny Llama, from the headers
    assert wants_checkpointing(None, CHECKPOINTING_MIN_PARAMETERS) and not wants_checkpointing(None, parameters)
    assert wants_checkpointing(True, parameters) and not wants_checkpointing(False, 7_000_000_000)


@pytest.mark.parametrize("enabled", [True, False])
def test_gradient_checkpointing_recomputes_layers_in_backward(tiny_model, enabled) -> None:
    """On, each decoder layer's insides run twice per step (forward, then recomputed in backward); off, once."""
    import torch

    precision = resolve_precision("fp32", "cpu", bf16_supported=True)
    model = load_model(tiny_model, LoraMethod(type="lora", **LORA), "cpu", dtype=torch.float32,
                       gradient_checkpointing=enabled).train()
    assert checkpointing_enabled(model) is enabled
    inside = model.get_base_model().model.layers[0].self_attn.q_proj  # the layer's forward is what is checkpointed
    runs = []
    inside.register_forward_hook(lambda *_: runs.append(1))
    _linear_dtypes(model, precision)
    assert len(runs) == (2 if enabled else 1)


@pytest.mark.parametrize("quant", [
    {"quantType": "nf4", "doubleQuant": True, "computeDtype": "float32"},
    {"quantType": "fp4", "doubleQuant": False, "computeDtype": "bfloat16"},
])
def test_qlora_base_layers_are_really_4bit(tiny_model, quant) -> None:
    """Every projection under the adapters is a bitsandbytes Linear4bit with Params4bit weights of
    the configured type, double quantization and compute dtype. Loading QLoRA like LoRA fails this."""
    import bitsandbytes as bnb
    import torch

    method = QloraMethod.model_validate({"type": "qlora", **LORA, "quantization": quant})
    model = load_model(tiny_model, method, "cpu", dtype=getattr(torch, quant["computeDtype"]), gradient_checkpointing=False)
    bases = {name: m.base_layer for name, m in model.named_modules() if name.endswith(PROJECTIONS) and hasattr(m, "base_layer")}
    bases.update({name: m for name, m in model.named_modules()
                  if name.endswith(("gate_proj", "up_proj", "down_proj")) and not hasattr(m, "base_layer")})
    assert len(bases) == 2 * len(PROJECTIONS)
    for name, layer in bases.items():
        assert isinstance(layer, bnb.nn.Linear4bit), name
        assert isinstance(layer.weight, bnb.nn.Params4bit) and layer.weight.dtype == torch.uint8, name
        assert layer.weight.quant_type == quant["quantType"] and layer.weight.quant_state.quant_type == quant["quantType"]
        assert layer.compute_dtype == getattr(torch, quant["computeDtype"]), name
        assert bool(layer.weight.quant_state.nested) is quant["doubleQuant"], name
    readback = quantization_readback(model)
    assert readback["linear4bit"] == 2 * len(PROJECTIONS) and readback["params4bit"] is True
    assert (readback["quantType"], readback["computeDtype"], readback["doubleQuant"]) == (
        quant["quantType"], quant["computeDtype"], str(quant["doubleQuant"]))
    check_quantization(readback, method.quantization)  # consistent: no error


def test_a_qlora_base_that_is_not_4bit_is_refused(tiny_model) -> None:
    import torch

    plain = load_model(tiny_model, LoraMethod(type="lora", **LORA), "cpu", dtype=torch.float32, gradient_checkpointing=False)
    assert quantization_readback(plain) is None
    with pytest.raises(PermanentError, match="no 4-bit layers"):
        check_quantization(quantization_readback(plain), Quantization())
    method = QloraMethod.model_validate({"type": "qlora", **LORA, "quantization": {"computeDtype": "float32"}})
    quantized = load_model(tiny_model, method, "cpu", dtype=torch.float32, gradient_checkpointing=False)
    with pytest.raises(PermanentError, match="quantType: got nf4, want fp4"):
        check_quantization(quantization_readback(quantized), Quantization(quant_type="fp4", compute_dtype="float32"))


@pytest.mark.slow
def test_qlora_manifest_records_the_quantization_read_back(trained) -> None:
    prov = json.loads((trained("qlora") / "out" / "manifest.json").read_text())["provenance"]
    q = prov["quantization"]
    assert q["linear4bit"] == 2 * len(PROJECTIONS) and q["params4bit"] is True
    assert (q["quantType"], q["computeDtype"], q["doubleQuant"], q["storage"]) == ("nf4", "float32", "True", "uint8")
    assert "uint8" in prov["parameterDtypes"]["frozen"] and prov["parameterDtypes"]["trainable"] == ["float32"]
    assert prov["precision"]["resolved"] == "fp32"  # auto follows computeDtype float32
    assert json.loads((trained("lora") / "out" / "manifest.json").read_text())["provenance"]["quantization"] is None


@pytest.mark.slow
def test_a_qlora_run_is_evaluated_on_the_weights_its_server_serves(trained) -> None:
    """The servers (the embedded engine, the vLLM pool) serve a QLoRA adapter over the base loaded
    unquantized; the evaluation that decides whether the run serves loads the same base weights
    under the adapter, not the 4-bit base the run trained on (a model nobody serves)."""
    import torch

    from controller.evaluate.generation import load_run_model
    from controller.serve.model import load_engine_base, open_run

    out = trained("qlora") / "out"
    run = open_run(out)
    served = load_engine_base(run.base_dir(), run, device="cpu").model.state_dict()
    evaluated = load_run_model(out, "cpu").model.get_base_model()
    wrapped = {name: type(m.base_layer) for name, m in evaluated.named_modules() if hasattr(m, "base_layer")}
    assert wrapped and set(wrapped.values()) == {torch.nn.Linear}, wrapped
    compared = 0
    for name, weight in evaluated.state_dict().items():
        if ".lora_" not in name:
            key = name.replace(".base_layer.", ".")
            assert weight.dtype == served[key].dtype and torch.equal(weight, served[key]), name
            compared += 1
    assert compared == len(served)


def test_runs_record_what_their_models_used(trained) -> None:
    """The tiny model is below the checkpointing threshold: off unless asked (the LoRA run asks)."""
    lora = json.loads((trained("lora") / "out" / "summary.json").read_text())
    full = json.loads((trained("full") / "out" / "summary.json").read_text())
    assert lora["gradientCheckpointing"] is True and full["gradientCheckpointing"] is False
    assert lora["attention"] == full["attention"] == "sdpa"
    assert lora["precision"]["resolved"] == full["precision"]["resolved"] == "fp32"  # auto on the CPU
    assert full["parameterDtypes"] == {"frozen": [], "trainable": ["float32"]}


@pytest.mark.slow
def test_bf16_autocast_learns_as_well_as_fp32(trained, tiny_model, task_data, tmp_path) -> None:
    """The same LoRA run as the session's fp32 one, in bf16 autocast on the CPU (frozen base stored
    in bf16), reaches the accuracy bar every method must reach. Measured on 60 held-out tickets,
    seeds 1/2/3: bf16 0.917/0.983/1.0, fp32 0.983/1.0/1.0 (bf16 rounding changes the trajectory; a
    broken bf16 path would sit at chance, 0.33). So: both >= 0.9 and at most 6 of 60 apart.
    Without gradient checkpointing, which recomputes the same forward (the same losses, one forward
    pass more per step): on a CPU without native bf16 (AVX2 only, no AVX512-BF16 or AMX) a bf16
    matmul runs about 50x slower than fp32 (measured: 70 ms against 1.2 ms for 1280x128 @ 128x256),
    and this run was the most expensive test of its module (150 s of CPU)."""
    method, training = METHOD_RUNS["lora"]
    config = make_config(tmp_path, tiny_model, task_data, {**method, "merge": False},
                         **{**training, "gradientCheckpointing": False}, precision="bf16")
    assert train_in_process(config) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["precision"]["resolved"] == "bf16" and summary["parameterDtypes"]["frozen"] == ["bfloat16"]
    bf16 = greedy_accuracy(tmp_path / "out" / "model", tiny_model, task_data[1])
    fp32 = greedy_accuracy(trained("lora") / "out" / "model", tiny_model, task_data[1])
    print(f"held-out accuracy: bf16 {bf16:.3f}, fp32 {fp32:.3f}")
    assert fp32 >= 0.9 and bf16 >= 0.9 and abs(bf16 - fp32) <= 0.1
    assert summary["testLoss"] < 0.1  # per assistant token, in bf16; an untrained model is above 2


@pytest.mark.slow
def test_fp16_loss_scaling_survives_a_kill_and_resume(tmp_path, tiny_model) -> None:
    """fp16 scales the loss (GradScaler) and the scaler's state is part of the checkpoint: a run
    SIGKILLed mid-checkpoint and resumed trains the same losses, with the same final scale, as an
    uninterrupted one."""
    import signal

    from train_helpers import train_cli

    from controller.tiny.task import write_task
    from controller.train.checkpoint import KILL_HOOK_ENV, latest_complete

    data = write_task(tmp_path / "data", n_train=48, n_test=8, seed=0)
    training = {"batchSize": 8, "epochs": 1, "precision": "fp16", "checkpointEverySteps": 2}
    runs = {}
    for name in ("uninterrupted", "resumed"):
        root = tmp_path / name
        root.mkdir()
        runs[name] = make_config(root, tiny_model, data, {"type": "lora", **LORA}, **training)
    killed = train_cli(runs["resumed"], env={KILL_HOOK_ENV: "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    for config in runs.values():
        assert train_in_process(config) == 0
    results = {}
    for name, config in runs.items():
        out = config.parent / "out"
        summary = json.loads((out / "summary.json").read_text())
        scaler = json.loads((latest_complete(config.parent / "ckpt") / "state.json").read_text())["scaler"]
        results[name] = ([json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()],
                         scaler, summary)
    (losses, scaler, summary), (losses2, scaler2, summary2) = results["uninterrupted"], results["resumed"]
    assert summary["precision"]["lossScaling"] is True and summary["parameterDtypes"]["frozen"] == ["float16"]
    assert summary2["resumedFromSteps"] == [2]
    assert scaler["scale"] > 0 and scaler == scaler2
    assert losses2 == pytest.approx(losses, rel=1e-6)
