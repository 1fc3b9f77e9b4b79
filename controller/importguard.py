"""Keep bitsandbytes out of the processes that never quantize.

Why: peft and transformers import bitsandbytes whenever it is installed, and importing it wraps
its kernels in `torch.compile`, which loads torch._dynamo and torch._inductor. Measured on a CPU:
1.3 s of CPU in every process, a quarter of what importing torch, transformers and peft costs
(5.7 s, 4.4 s without it). Only a QLoRA trainer uses it; a LoRA or full trainer, every evaluator
and every serving engine (both load a base unquantized, a QLoRA run's included) start that much
faster: each run's trainer and evaluator, and each serving pod.

How: `sys.modules["bitsandbytes"] = None` is Python's documented way to make a module
unimportable. `import bitsandbytes` then raises ImportError, and `importlib.util.find_spec`
returns None, which is how peft and transformers ask whether it is installed, so they take
their path for "not installed". Call it at a process's entry point, before anything imports
peft or transformers; a process that has imported bitsandbytes already keeps it."""
from __future__ import annotations

import sys

BITSANDBYTES = "bitsandbytes"


def without_bitsandbytes() -> None:
    """This process will not quantize: make bitsandbytes unimportable (see the module)."""
    if BITSANDBYTES not in sys.modules:
        sys.modules[BITSANDBYTES] = None  # type: ignore[assignment]


def without_bitsandbytes_unless_qlora(method_type: str | None) -> None:
    """For a process that trains a run of `method.type`: only QLoRA training loads its base in
    4-bit, so any other method keeps bitsandbytes out."""
    if method_type != "qlora":
        without_bitsandbytes()
