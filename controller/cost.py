"""Cost estimates for what a merge runs (pure): a training run, an evaluation, a rollout.

Training: tokens x epochs / (throughput x GPUs) -> GPU-hours -> dollars, from the operator's
tables (controller/defaults/operator.yaml, calibrated to the seed's cost table). Evaluation:
the tokens the evaluator generates over (test split, regression suite, comparison samples) at
forward-only throughput on one GPU. A rollout runs neither. `change_cost` prices what one
decision of controller.desired runs: a new run costs its training and its evaluation, a changed
gate or served configuration only the evaluation, a replica change nothing but the rollout.
Every number that went in is returned as an assumption, so a reviewer can see why the estimate
is what it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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


Phase = Literal["training", "evaluation", "rollout"]


@dataclass(frozen=True)
class CostEstimate:
    """What one phase (training, evaluation, rollout) is estimated to cost, and why."""

    usd: float
    usd_low: float
    usd_high: float
    gpu_hours: float
    wall_hours: float
    training_tokens: float
    assumptions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    phase: Phase = "training"

    def to_dict(self) -> dict:
        return {
            "phase": self.phase,
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
    spec: FineTune, operator: OperatorConfig, data_bytes: int | None, data_tokens: int | None = None,
    tokens_counted_by: str = "counted", examples: int | None = None,
) -> CostEstimate | None:
    """Estimate one training run's cost, or None when the dataset's size is unknown.
    `tokens_counted_by` says where a given `data_tokens` came from (shown as an assumption);
    `examples` (the dataset's count) sizes a provider's `auto` epochs for method api."""
    s = spec.spec
    if s.method.type == "api":
        return api_training_estimate(spec, operator, data_bytes, data_tokens, tokens_counted_by, examples)
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
        assumptions.append(f"dataset = {data_tokens:,} tokens ({tokens_counted_by})")
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
    warnings.extend(max_hours_warnings(wall_hours, s.hardware.max_hours))
    needed = params * (operator.bytes_per_parameter[method]
                       + (FP32_EXTRA_BYTES_PER_PARAMETER[method] if precision == "fp32" else 0.0))
    available = gpu_type.memory_gib * s.hardware.gpus_per_node if method == "full" else gpu_type.memory_gib
    if gpu != "cpu" and needed > available:
        warnings.append(
            f"{method} on a {params:g}B model needs about {needed:,.0f} GiB of GPU memory but {gpu} gives {available:g} GiB"
            f"{' per node' if method == 'full' else ' per GPU'}: pick a larger GPU, more GPUs, or qlora"
        )
    return CostEstimate(usd, usd * LOW, usd * HIGH, gpu_hours, wall_hours, training_tokens, assumptions, warnings)


def max_hours_warnings(wall_hours: float, max_hours: float) -> list[str]:
    """hardware.maxHours is the Job's deadline (activeDeadlineSeconds), so it is compared with
    the training run's wall time: the point estimate, and the top of the range (LOW-HIGH)."""
    if wall_hours > max_hours:
        return [f"estimated {wall_hours:,.1f} h of training exceeds hardware.maxHours {max_hours:g}: the Job would be stopped "
                "before it finishes; raise maxHours, add GPUs or reduce epochs"]
    if wall_hours * HIGH > max_hours:
        return [f"estimated {wall_hours:,.1f} h of training fits hardware.maxHours {max_hours:g}, but the top of the range "
                f"({wall_hours * HIGH:,.1f} h) does not: a slow run would be stopped before it finishes"]
    return []


# ----------------------------------------------------------------------------- method api

API_LOW, API_HIGH = 0.8, 1.25
"""A provider bills what its own tokenizer counts; ours (the base model's, or bytes) is close but
not the same, and nothing else is uncertain: the price is the provider's list price."""
API_TARGET_EPOCHS, API_MIN_EXAMPLES, API_MAX_EXAMPLES = 3, 100, 25_000
"""OpenAI's published rule for `auto` epochs: 3, raised for small datasets and lowered for large
ones so that examples x epochs stays within 100-25,000 (1-25 epochs)."""
API_ANSWER_TOKENS = 256
"""Tokens an answer may take when the spec is not served (no serving.maxTokens)."""


def api_epochs(epochs: int | str, train_examples: int | None) -> tuple[int, str]:
    """The epochs a provider runs, and how that was known (the spec, or its `auto` rule)."""
    if epochs != "auto":
        return int(epochs), f"{epochs} epochs (spec.method.hyperparameters.epochs)"
    if not train_examples:
        return API_TARGET_EPOCHS, f"epochs auto: {API_TARGET_EPOCHS} assumed (the example count is unknown)"
    n = API_TARGET_EPOCHS
    if train_examples * n < API_MIN_EXAMPLES:
        n = min(25, API_MIN_EXAMPLES // train_examples)
    elif train_examples * n > API_MAX_EXAMPLES:
        n = max(1, API_MAX_EXAMPLES // train_examples)
    return n, f"epochs auto: {n} for {train_examples:,} training examples (the provider keeps examples × epochs in " \
              f"{API_MIN_EXAMPLES:,}-{API_MAX_EXAMPLES:,})"


def _api_tokens(operator: OperatorConfig, data_bytes: int | None, data_tokens: int | None, counted_by: str,
                assumptions: list[str]) -> int | None:
    if data_tokens is not None:
        assumptions.append(f"dataset = {data_tokens:,} tokens ({counted_by}; the provider counts with its own tokenizer)")
        return data_tokens
    if data_bytes is None:
        return None
    tokens = int(data_bytes / operator.bytes_per_token)
    assumptions.append(f"dataset ≈ {tokens:,} tokens ({data_bytes:,} bytes at {operator.bytes_per_token:g} bytes/token)")
    return tokens


def api_training_estimate(spec: FineTune, operator: OperatorConfig, data_bytes: int | None, data_tokens: int | None,
                          tokens_counted_by: str = "counted", examples: int | None = None) -> CostEstimate | None:
    """A managed fine-tune: the operator's price per million training tokens x the tokens of the
    train split x the epochs (the provider's `auto` rule when the spec says auto). No GPU-hours:
    the provider's hardware is not ours to count."""
    from controller.spec.method import ApiMethod

    method = spec.spec.method
    assert isinstance(method, ApiMethod)
    assumptions: list[str] = []
    tokens = _api_tokens(operator, data_bytes, data_tokens, tokens_counted_by, assumptions)
    if tokens is None:
        return None
    share = 1 - spec.spec.dataset.test_fraction
    train_examples = round(examples * share) if examples else None
    epochs, how = api_epochs(method.hyperparameters.epochs, train_examples)
    assumptions.append(how)
    training_tokens = tokens * share * epochs
    assumptions.append(f"training tokens = {tokens:,} × {share:.2f} (train split) × {epochs} epochs = {training_tokens:,.0f}")
    provider = operator.providers.get(method.provider)
    if provider is None:
        return CostEstimate(0, 0, 0, 0, 0, training_tokens, assumptions,
                            [f"provider {method.provider} is not in the operator config's providers: cost not estimated"])
    price = provider.prices(method.model).usd_per_million_training_tokens
    usd = training_tokens / 1e6 * price
    assumptions.append(f"price ${price:.2f} per million training tokens ({method.provider}, {method.model}) × "
                       f"{training_tokens / 1e6:,.3f}M tokens")
    return CostEstimate(usd, usd * API_LOW, usd * API_HIGH, 0, 0, training_tokens, assumptions, [])


def api_evaluation_estimate(spec: FineTune, operator: OperatorConfig, data_bytes: int | None, data_tokens: int | None,
                            examples: int | None, tokens_counted_by: str = "counted") -> CostEstimate | None:
    """An evaluation of a managed fine-tune: every prompt and answer is the provider's inference,
    billed per token (the fine-tuned model's prices; the base model's are taken to be the same)."""
    from controller.spec.method import ApiMethod

    s = spec.spec
    method = s.method
    assert isinstance(method, ApiMethod)
    assumptions: list[str] = []
    tokens = _api_tokens(operator, data_bytes, data_tokens, tokens_counted_by, assumptions)
    if tokens is None:
        return None
    per_example = tokens / examples if examples else TOKENS_PER_EXAMPLE_UNKNOWN
    test_examples = round(examples * s.dataset.test_fraction) if examples else 0
    compare = s.evaluation.compare
    calls = (test_examples + 2 * REGRESSION_SUITE_EXAMPLES + 2 * compare.samples) if examples else 0
    prompt_tokens = tokens * s.dataset.test_fraction + (2 * REGRESSION_SUITE_EXAMPLES + 2 * compare.samples) * per_example
    answer = s.serving.max_tokens if s.serving is not None else API_ANSWER_TOKENS
    answer_tokens = calls * answer
    assumptions.append(f"prompts ≈ {prompt_tokens:,.0f} tokens (the test split, the regression suite and {compare.samples} "
                       f"comparison samples, fine-tuned and base); answers at most {answer} tokens × {calls:,} requests")
    provider = operator.providers.get(method.provider)
    if provider is None:
        return CostEstimate(0, 0, 0, 0, 0, prompt_tokens, assumptions,
                            [f"provider {method.provider} is not in the operator config's providers: cost not estimated"],
                            "evaluation")
    prices = provider.prices(method.model)
    usd = prompt_tokens / 1e6 * prices.usd_per_million_input_tokens + answer_tokens / 1e6 * prices.usd_per_million_output_tokens
    assumptions.append(f"price ${prices.usd_per_million_input_tokens:.2f} / ${prices.usd_per_million_output_tokens:.2f} per "
                       f"million input / output tokens ({method.provider}, {method.model})")
    return CostEstimate(usd, usd * LOW, usd, 0, 0, prompt_tokens, assumptions, [], "evaluation")


# ----------------------------------------------------------------------------- evaluation

FORWARD_SPEEDUP = 3.0
"""Generation runs forward passes only; a training step is a forward and a backward pass (about
twice the forward's compute), so tokens flow about three times faster than the training table's."""
EVAL_OVERHEAD_HOURS = 0.1
"""Loading the fine-tuned and the base model and warming up, per evaluation (6 minutes)."""
REGRESSION_SUITE_EXAMPLES = 30
"""controller/defaults/regression.jsonl (the shipped suite); a repo suite is assumed the same size."""
TOKENS_PER_EXAMPLE_UNKNOWN = 1000
"""Mean tokens per example when the example count is unknown (the seed's reference workload)."""


def evaluation_estimate(spec: FineTune, operator: OperatorConfig, data_bytes: int | None, data_tokens: int | None = None,
                        examples: int | None = None, tokens_counted_by: str = "counted") -> CostEstimate | None:
    """One evaluation of an existing run on its test split, the regression suite and the A/B
    comparison, on one GPU of the spec's type. None when the dataset's size is unknown."""
    s = spec.spec
    if s.method.type == "api":
        return api_evaluation_estimate(spec, operator, data_bytes, data_tokens, examples, tokens_counted_by)
    gpu = s.hardware.gpu_type
    assumptions: list[str] = []
    if data_tokens is None:
        if data_bytes is None:
            return None
        data_tokens = int(data_bytes / operator.bytes_per_token)
        assumptions.append(f"dataset ≈ {data_tokens:,} tokens ({data_bytes:,} bytes at {operator.bytes_per_token:g} bytes/token)")
    else:
        assumptions.append(f"dataset = {data_tokens:,} tokens ({tokens_counted_by})")
    per_example = data_tokens / examples if examples else TOKENS_PER_EXAMPLE_UNKNOWN
    if not examples:
        assumptions.append(f"example count unknown: {TOKENS_PER_EXAMPLE_UNKNOWN:,} tokens per example assumed")
    test_tokens = data_tokens * s.dataset.test_fraction
    compare = s.evaluation.compare
    local_refs = [m.name for m in compare.models if m.path is not None]
    remote_refs = [m.name for m in compare.models if m.endpoint is not None]
    # fine-tuned: test split + regression suite + comparison samples; base: regression + comparison;
    # each local reference model: the comparison samples.
    regression = REGRESSION_SUITE_EXAMPLES * per_example
    samples = compare.samples * per_example
    tokens = test_tokens + 2 * regression + (2 + len(local_refs)) * samples
    assumptions.append(
        f"generated over ≈ {tokens:,.0f} tokens: the test split ({s.dataset.test_fraction:.2f} × {data_tokens:,}), the "
        f"regression suite ({REGRESSION_SUITE_EXAMPLES} examples, fine-tuned and base) and {compare.samples} comparison samples "
        f"(fine-tuned, base{''.join(', ' + n for n in local_refs)}) at {per_example:,.0f} tokens per example"
    )
    if remote_refs:
        assumptions.append(f"reference endpoints ({', '.join(remote_refs)}) are billed by their provider, not priced here")
    if s.evaluation.bias is not None:
        assumptions.append(f"bias set ({s.evaluation.bias.path}) not counted: its size is read when the evaluation runs")
    params = s.base_model.parameters_billions or DEFAULT_PARAMETERS_B
    row = "qlora" if s.method.type == "qlora" else "lora"
    per_gpu_7b = operator.throughput7b.get(row, {}).get(gpu)
    gpu_type = operator.gpus.get(gpu)
    if per_gpu_7b is None or gpu_type is None:
        return CostEstimate(0, 0, 0, 0, 0, tokens, assumptions,
                            [f"no throughput for {row} on {gpu} in the operator's table: evaluation cost not estimated"], "evaluation")
    per_gpu = per_gpu_7b * DEFAULT_PARAMETERS_B / params * FORWARD_SPEEDUP
    wall_hours = tokens / per_gpu / 3600 + EVAL_OVERHEAD_HOURS
    assumptions.append(
        f"forward-only throughput {per_gpu:,.1f} tokens/s on one {gpu} ({FORWARD_SPEEDUP:g} × the {row} training rate at "
        f"{params:g}B), plus {EVAL_OVERHEAD_HOURS:g} h to load the models"
    )
    assumptions.append(f"price ${gpu_type.usd_per_hour:.2f}/GPU-hour ({gpu}, on demand) × {wall_hours:,.2f} GPU-hours")
    usd = wall_hours * gpu_type.usd_per_hour
    return CostEstimate(usd, usd * LOW, usd * HIGH, wall_hours, wall_hours, tokens, assumptions, [], "evaluation")


def rollout_estimate(spec: FineTune) -> CostEstimate:
    """A rollout (new serving settings or corpus, same run and evaluation) trains and evaluates
    nothing: its one-off cost is nil. What serving costs per hour is the operator's, not the plan's."""
    serving = spec.spec.serving
    replicas = serving.replicas if serving is not None else 0
    return CostEstimate(0, 0, 0, 0, 0, 0, [
        f"a rollout starts {replicas} replica(s) of the existing run beside the serving ones until they are ready; "
        "no training or evaluation runs"], [], "rollout")


# ----------------------------------------------------------------------------- a decision's cost


@dataclass(frozen=True)
class ChangeCost:
    """What a decision of controller.desired runs, phase by phase."""

    phases: tuple[CostEstimate, ...]
    what: str
    """Which phases run and why, in a few words ("new run: training + evaluation")."""

    @property
    def usd(self) -> float:
        return sum(p.usd for p in self.phases)

    @property
    def usd_low(self) -> float:
        return sum(p.usd_low for p in self.phases)

    @property
    def usd_high(self) -> float:
        return sum(p.usd_high for p in self.phases)

    @property
    def training(self) -> CostEstimate | None:
        return next((p for p in self.phases if p.phase == "training"), None)

    @property
    def warnings(self) -> list[str]:
        return [w for p in self.phases for w in p.warnings]

    def to_dict(self) -> dict:
        return {"what": self.what, "usd": round(self.usd, 2), "usdLow": round(self.usd_low, 2),
                "usdHigh": round(self.usd_high, 2), "phases": [p.to_dict() for p in self.phases]}


def change_cost(action: str, spec: FineTune, operator: OperatorConfig, data_bytes: int | None,
                data_tokens: int | None = None, examples: int | None = None,
                tokens_counted_by: str = "counted") -> ChangeCost | None:
    """The cost of `action` (a controller.desired.Action value: Train, Evaluate, Deploy, Update,
    None, Prune) for `spec`. None when a phase that runs cannot be sized (dataset size unknown)."""
    if action == "Train":
        train = estimate(spec, operator, data_bytes, data_tokens, tokens_counted_by, examples)
        evaluation = evaluation_estimate(spec, operator, data_bytes, data_tokens, examples, tokens_counted_by)
        if train is None or evaluation is None:
            return None
        return ChangeCost((train, evaluation), "new run: training, then its evaluation")
    if action == "Evaluate":
        evaluation = evaluation_estimate(spec, operator, data_bytes, data_tokens, examples, tokens_counted_by)
        if evaluation is None:
            return None
        return ChangeCost((evaluation,), "same run: evaluation only, no training")
    if action == "Deploy":
        return ChangeCost((rollout_estimate(spec),), "same run and evaluation: rollout only")
    return ChangeCost((), "nothing runs")
