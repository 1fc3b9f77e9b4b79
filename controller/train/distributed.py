"""How the ranks of a multi-process run share the work: DDP or FSDP2, chosen per run.

- DDP: every rank holds the whole model and averages gradients. Cheapest for small models and
  LoRA on a base that fits one GPU.
- FSDP2 (`torch.distributed.fsdp.fully_shard`, one unit per decoder layer plus the root):
  parameters, gradients and AdamW moments are sharded over the ranks; each layer is all-gathered
  just before it runs (in the compute dtype) and freed after, gradients are reduce-scattered in
  float32. That is what lets a full fine-tune of a 7B model train on 4 x 80 GB.

Checkpoints stay one format for every strategy: the full (unsharded) trainable state and the
AdamW state keyed by parameter name, gathered to rank 0 (on CPU) and written as safetensors.
Torch's distributed checkpoint (DCP) would write faster, in parallel, but its `.metadata` file
is a pickle, and ftops loads no pickle (a checkpoint dir on a shared PVC is an attack surface).
The full format also resumes at any world size and under either strategy, so a run preempted on
8 GPUs can resume on 4, or after `auto` picked differently. Its cost is rank 0's host memory and
the time to gather (for LoRA only the adapter is gathered: frozen weights are never saved).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal

from controller.errors import PermanentError

Strategy = Literal["single", "ddp", "fsdp"]
FSDP_LORA_MEMORY_SHARE = 0.5
"""auto picks FSDP for LoRA when the base's weights alone take more than this share of one GPU."""


def resolve_strategy(requested: str, *, world: int, method: str, base_weight_bytes: int,
                     gpu_memory_bytes: int | None) -> Strategy:
    """Pure: the strategy for this run (see Distributed.strategy in controller.runconfig)."""
    if world == 1:
        return "single"
    if requested == "fsdp" and method == "qlora":
        raise PermanentError(
            "distributed.strategy: fsdp does not shard 4-bit (bitsandbytes) weights in ftops; use method lora with "
            "fsdp, or qlora with strategy ddp (each GPU holds the whole 4-bit base)"
        )
    if requested in ("ddp", "fsdp"):
        return requested  # type: ignore[return-value]
    if method == "full":
        return "fsdp"
    if method == "lora" and gpu_memory_bytes and base_weight_bytes > FSDP_LORA_MEMORY_SHARE * gpu_memory_bytes:
        return "fsdp"
    return "ddp"


def decoder_layers(model) -> list:
    """The repeated blocks (FSDP units): modules whose class the model declares unsplittable."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise PermanentError(f"distributed.strategy fsdp: {type(base).__name__} declares no decoder layer class to shard")
    return layers


def wrap(model, strategy: Strategy, device: str, compute_dtype) -> Any:
    """The module the loop calls: the model itself, a DDP wrapper, or the model sharded in place."""
    if strategy == "single":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        import torch

        return DistributedDataParallel(model, device_ids=[torch.device(device)] if device.startswith("cuda") else None)
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


@contextlib.contextmanager
def gradient_sync(wrapped, strategy: Strategy, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP) on all but the last
    micro-batch of a step: gradient accumulation pays for one communication per step."""
    if strategy == "ddp" and not sync:
        with wrapped.no_sync():
            yield
        return
    if strategy == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    yield


def _options(strategy: Strategy, **kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if strategy == "fsdp":
        return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)
    return StateDictOptions(**kw)


def trainable_state(model, strategy: Strategy, names: list[str]) -> dict:
    """Full tensors of the trained parameters (collective under FSDP; complete on rank 0)."""
    if strategy != "fsdp":
        params = dict(model.named_parameters())
        return {n: params[n] for n in names}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(strategy, ignore_frozen_params=True))
    return {n: state[n] for n in names if n in state}


def full_model_state(model, strategy: Strategy) -> dict | None:
    """Every weight, unsharded, for writing the final model (collective under FSDP; None where
    the model can save itself)."""
    if strategy != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(strategy))
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:  # a tied weight (lm_head = embed_tokens) is written once, as the model does itself
            state.pop(name, None)
        seen.add(id(param))
    return state


def optimizer_state(model, optimizer, strategy: Strategy) -> dict:
    """AdamW state keyed by parameter name (collective under FSDP; complete on rank 0)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(strategy))


def load_state(model, optimizer, strategy: Strategy, trainable: dict, optim: dict) -> None:
    """Restore a checkpoint written by `trainable_state` / `optimizer_state` under any strategy
    (every rank reads the same full tensors and keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=strategy == "fsdp", strict=False)
    set_model_state_dict(model, trainable, options=options)
    set_optimizer_state_dict(model, optimizer, optim, options=StateDictOptions(full_state_dict=strategy == "fsdp"))


def grad_norm_value(norm) -> float:
    """clip_grad_norm_ returns a DTensor for sharded parameters."""
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def gather_rng(world: int, device: str, cuda: bool = False) -> list:
    """Every rank's RNG state (each rank draws its own dropout masks), gathered as tensors:
    all_gather_object would pickle. `cuda`: the CUDA generator's instead of the CPU one's."""
    import torch

    state = torch.cuda.get_rng_state() if cuda else torch.get_rng_state()
    if world == 1:
        return [state]
    import torch.distributed as dist

    local = state.to(device if device.startswith("cuda") else "cpu")  # NCCL moves CUDA tensors only
    out = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]
