"""Training precision: which dtype the matmuls run in, where the master weights live, and
whether the loss is scaled.

`training.precision` is `auto | bf16 | fp16 | fp32`. What each one means in the loop:

- `bf16` / `fp16`: the forward pass runs under `torch.autocast` in that dtype (softmax, norms and
  the loss stay in float32, as autocast decides per op). Trained parameters and the AdamW moments
  stay float32 (the master weights); LoRA and QLoRA store the *frozen* base in the half dtype
  (that is the memory saving: a 7B base is 14 GB instead of 28), while peft keeps the adapters
  float32. A full fine-tune keeps every weight float32 and computes in the half dtype (under FSDP
  the all-gathered copies are in the half dtype; gradients are reduced in float32).
- `fp16` adds dynamic loss scaling (GradScaler), because float16 gradients underflow; its state
  is part of every checkpoint, so a resumed run scales exactly as an uninterrupted one.
- `fp32`: no autocast. On a GPU, float32 matmuls use TF32 tensor cores (enabled for every
  precision on CUDA), the usual trade: 10-bit mantissa products, float32 accumulation.
- `auto`: bf16 on a GPU that supports it, fp16 on one that does not (V100, T4), fp32 on the CPU.
  The CPU choice: bf16 autocast is only faster on CPUs with AMX, slower elsewhere, and the CPU
  path trains tiny models for tests and demos where memory is not the limit; fp32 keeps those
  results stable. `precision: bf16` on the CPU still works (and is tested). For QLoRA, `auto`
  follows `method.quantization.computeDtype`, and an explicit precision that disagrees with it
  is a config error: the 4-bit matmuls and the rest of the model compute in one dtype.

The requested precision is part of the run id (it is in the training block); the resolved one is
recorded in the summary and the manifest.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from controller.errors import PermanentError

Resolved = Literal["bf16", "fp16", "fp32"]
DTYPE_NAMES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""Resolved precision -> torch dtype name (also the names `method.quantization.computeDtype` uses)."""
_FROM_DTYPE = {v: k for k, v in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class Precision:
    """The resolved precision of one run."""

    requested: str
    name: Resolved

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.name]

    @property
    def autocast(self) -> bool:
        return self.name != "fp32"

    @property
    def loss_scaling(self) -> bool:
        return self.name == "fp16"

    def dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "resolved": self.name, "computeDtype": self.dtype_name,
                "masterWeights": "float32", "lossScaling": self.loss_scaling}


def resolve_precision(requested: str, device_type: str, *, bf16_supported: bool,
                      qlora_compute_dtype: str | None = None) -> Precision:
    """Pure: the precision a run trains in on this device. Raises PermanentError naming the
    field when the request cannot be honoured."""
    if requested not in ("auto", *DTYPE_NAMES):
        raise PermanentError(f"training.precision: '{requested}' is not one of auto, bf16, fp16, fp32")
    if requested == "auto":
        if qlora_compute_dtype is not None:
            name: Resolved = _FROM_DTYPE[qlora_compute_dtype]  # type: ignore[assignment]
        elif device_type == "cuda":
            name = "bf16" if bf16_supported else "fp16"
        else:
            name = "fp32"
    else:
        name = requested  # type: ignore[assignment]
        if qlora_compute_dtype is not None and DTYPE_NAMES[name] != qlora_compute_dtype:
            raise PermanentError(
                f"training.precision: {name} disagrees with method.quantization.computeDtype {qlora_compute_dtype}; "
                f"set computeDtype: {DTYPE_NAMES[name]} (or precision: {_FROM_DTYPE[qlora_compute_dtype]}, or auto)"
            )
    if name == "bf16" and device_type == "cuda" and not bf16_supported:
        raise PermanentError(
            "training.precision: bf16 is not supported by this GPU (it needs compute capability 8.0+, e.g. A100, "
            "L4, H100); use precision: fp16 or auto"
            + (" and method.quantization.computeDtype: float16" if qlora_compute_dtype else "")
        )
    return Precision(requested=requested, name=name)


def bf16_supported(device: str) -> bool:
    """Whether `device` computes bfloat16 natively (CPU autocast always accepts it)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return True


def enable_tf32(device: str) -> bool:
    """TF32 tensor-core matmuls for float32 on CUDA (no effect, and False, on the CPU)."""
    import torch

    if not device.startswith("cuda"):
        return False
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9 spelling
        matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:  # pragma: no cover - older torch
        matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return True


@contextlib.contextmanager
def autocast(precision: Precision, device: str) -> Iterator[None]:
    """The forward pass's context: autocast in the half dtype, or nothing for fp32."""
    if not precision.autocast:
        yield
        return
    import torch

    with torch.autocast(device_type=device.split(":")[0], dtype=precision.dtype()):
        yield


def grad_scaler(precision: Precision, device: str, sharded: bool):
    """A loss scaler for fp16 (None otherwise). Under FSDP the scaler must agree across ranks on
    whether a gradient overflowed, which ShardedGradScaler does with an all-reduce."""
    if not precision.loss_scaling:
        return None
    device_type = device.split(":")[0]
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device_type)
    import torch

    return torch.amp.GradScaler(device_type)
