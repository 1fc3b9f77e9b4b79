"""Cost estimate for one training run (pure).

tokens x epochs / (throughput x GPUs) -> GPU-hours -> dollars, from the operator's tables
(controller/defaults/operator.yaml, calibrated to the seed's cost table). Every number that
went in is returned as an assumption, so a reviewer can see why the estimate is what it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from controller.catalog import OperatorConfig
from controller.spec.finetune import FineTune

DEFAULT_PARAMETERS_B = 7.0
LOW, HIGH = 0.5, 2.0
"""The estimate's range: half to double the point estimate (throughput varies that much)."""
PRECISION_THROUGHPUT = {"bf16": 1.0, "fp16": 1.0, "fp32": 0.5}
"""The operator's throughput table is bf16 throughput (what `precision: auto` trains in on every
GPU in the catalog). fp32 runs its matmuls on TF32 tensor cores (the trainer enables them) at
half of bf16's peak on A100 and H100 (156 vs 312, 495 vs 989 TFLOP/s) and moves twice the bytes,
so it is at best half as fast. The CPU row is measured in fp32 (CPU `auto`) and is not scaled."""
FP32_EXTRA_BYTES_PER_PARAMETER = {"lora": 2.0, "qlora": 0.0, "full": 0.0}
"""fp32 LoRA keeps the frozen base in float32 (4 bytes) instead of bf16 (2); QLoRA's base is 4-bit
either way; a full fine-tune keeps float32 master weights, gradients and AdamW moments either way."""
_DTYPE_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def training_precision(spec: FineTune) -> str:
    """The precision the run will train in on its GPU type (controller.train.precision's rule,
    assuming the catalog's GPUs support bf16, as all of its defaults do)."""
    s = spec.spec
    if s.training.precision != "auto":
        return s.training.precision
    if s.method.type == "qlora":
        return _DTYPE_PRECISION[s.method.quantization.compute_dtype]
    return "fp32" if s.hardware.gpu_type == "cpu" else "bf16"


@dataclass(frozen=True)
class CostEstimate:
    usd: float
    usd_low: float
    usd_high: float
    gpu_hours: float
    wall_hours: float
    training_tokens: float
    assumptions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "usd": round(self.usd, 2),
            "usdLow": round(self.usd_low, 2),
            "usdHigh": round(self.usd_high, 2),
            "gpuHours": round(self.gpu_hours, 2),
            "wallHours": round(self.wall_hours, 2),
            "trainingTokens": round(self.training_tokens),
            "assumptions": self.assumptions,
            "warnings": self.warnings,
        }


def estimate(
    spec: FineTune, operator: OperatorConfig, data_bytes: int | None, data_tokens: int | None = None
) -> CostEstimate | None:
    """Estimate one run's cost, or None when the dataset's size is unknown."""
    s = spec.spec
    method = s.method.type
    gpu = s.hardware.gpu_type
    assumptions: list[str] = []
    warnings: list[str] = []
    if data_tokens is None:
        if data_bytes is None:
            return None
        data_tokens = int(data_bytes / operator.bytes_per_token)
        assumptions.append(f"dataset ≈ {data_tokens:,} tokens ({data_bytes:,} bytes at {operator.bytes_per_token:g} bytes/token)")
    else:
        assumptions.append(f"dataset = {data_tokens:,} tokens (counted)")
    train_share = 1 - s.dataset.test_fraction
    training_tokens = data_tokens * train_share * s.training.epochs
    assumptions.append(
        f"training tokens = {data_tokens:,} × {train_share:.2f} (train split) × {s.training.epochs:g} epochs = {training_tokens:,.0f}"
    )
    params = s.base_model.parameters_billions
    if params is None:
        params = DEFAULT_PARAMETERS_B
        assumptions.append(f"model size unknown: assumed {params:g}B (set spec.baseModel.parametersBillions)")
    else:
        assumptions.append(f"model size {params:g}B parameters")
    per_gpu_7b = operator.throughput7b.get(method, {}).get(gpu)
    gpu_type = operator.gpus.get(gpu)
    if per_gpu_7b is None or gpu_type is None:
        warnings.append(f"no throughput for {method} on {gpu} in the operator's table: cost not estimated")
        return CostEstimate(0, 0, 0, 0, 0, training_tokens, assumptions, warnings)
    per_gpu = per_gpu_7b * DEFAULT_PARAMETERS_B / params
    precision = training_precision(spec)
    if gpu != "cpu" and PRECISION_THROUGHPUT[precision] != 1.0:
        per_gpu *= PRECISION_THROUGHPUT[precision]
        assumptions.append(f"precision {precision}: {PRECISION_THROUGHPUT[precision]:g} × the table's bf16 throughput")
    gpus = s.hardware.gpus_per_node * s.hardware.nodes
    effective = per_gpu * (1 + (gpus - 1) * operator.multi_gpu_efficiency)
    assumptions.append(
        f"throughput {per_gpu:,.1f} tokens/s per {gpu} for {method} at {params:g}B; {gpus} GPU(s) at "
        f"{operator.multi_gpu_efficiency:.0%} scaling = {effective:,.1f} tokens/s"
    )
    wall_hours = training_tokens / effective / 3600
    gpu_hours = wall_hours * gpus
    price = gpu_type.usd_per_hour * (operator.spot_discount if s.hardware.spot else 1.0)
    assumptions.append(
        f"price ${price:.2f}/GPU-hour ({gpu}{', spot' if s.hardware.spot else ''}) × {gpu_hours:,.1f} GPU-hours"
    )
    usd = gpu_hours * price
    if wall_hours > s.hardware.max_hours:
        warnings.append(
            f"estimated {wall_hours:,.1f} h exceeds hardware.maxHours {s.hardware.max_hours:g}: the Job would be stopped "
            "before it finishes; raise maxHours, add GPUs or reduce epochs"
        )
    needed = params * (operator.bytes_per_parameter[method]
                       + (FP32_EXTRA_BYTES_PER_PARAMETER[method] if precision == "fp32" else 0.0))
    available = gpu_type.memory_gib * s.hardware.gpus_per_node if method == "full" else gpu_type.memory_gib
    if gpu != "cpu" and needed > available:
        warnings.append(
            f"{method} on a {params:g}B model needs about {needed:,.0f} GiB of GPU memory but {gpu} gives {available:g} GiB"
            f"{' per node' if method == 'full' else ' per GPU'}: pick a larger GPU, more GPUs, or qlora"
        )
    return CostEstimate(usd, usd * LOW, usd * HIGH, gpu_hours, wall_hours, training_tokens, assumptions, warnings)
