"""Evaluation throughput: examples/s of batched generation against one-by-one, same run, same
inputs, same token budget, measured in the same process (a ratio, not an absolute number, so it
means something on any machine).

The run is a real tiny-model LoRA run trained for a few steps by the real trainer; it has not
learned to stop yet, so every answer runs to the same max_new_tokens and both modes do exactly the
same work."""
from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

from bench.common import report

N_EXAMPLES = 64
MAX_NEW_TOKENS = 24


def _make_run(root: Path) -> tuple[Path, Path]:
    from controller.runconfig import RunConfig, write_run_config
    from controller.tiny import task
    from controller.tiny.model import init_tiny_model
    from controller.train.trainer import run

    base = init_tiny_model(root / "base")
    train, test = task.write_task(root / "data", n_train=48, n_test=N_EXAMPLES, seed=0)
    config = RunConfig.model_validate({
        "runId": "be0c0000e0a1", "specName": "bench", "baseModel": {"uri": str(base)}, "method": {"type": "lora"},
        "training": {"epochs": 1.0, "batchSize": 16, "learningRate": 1e-3, "maxSeqLength": 256, "checkpointEverySteps": 1000},
        "data": {"train": str(train), "test": str(test), "md5": "0" * 32},
        "outputDir": str(root / "store" / "bench" / "be0c0000e0a1"), "checkpointDir": str(root / "ckpt"), "device": "cpu",
    })
    write_run_config(config, root / "run.json")
    with contextlib.redirect_stdout(io.StringIO()):
        assert run(root / "run.json") == 0
    return Path(config.output_dir), test


def main() -> None:
    import torch

    from controller.evaluate.datasets import read_examples
    from controller.evaluate.generation import generate, load_run_model

    # One intra-op thread: on a shared 2-core machine torch's spinning workers made both modes
    # ~20x slower and the numbers noise (measured); the ratio is what this benchmark is for.
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, test = _make_run(Path(tmp))
        model = load_run_model(run_dir, "cpu")
        conversations = [e.messages for e in read_examples(test, "test")]
        generate(model, conversations[:4], batch_size=4, max_new_tokens=4, progress=False)  # warm-up
        rates = {}
        outputs = {}
        for batch in (1, 8, 32):
            started = time.perf_counter()
            outputs[batch] = generate(model, conversations, batch_size=batch, max_new_tokens=MAX_NEW_TOKENS, progress=False)
            rates[batch] = len(conversations) / (time.perf_counter() - started)
        same = sum(a == b for a, b in zip(outputs[1], outputs[32]))
        report(
            f"eval generation throughput ({len(conversations)} examples, {MAX_NEW_TOKENS} new tokens each, greedy, CPU)",
            [
                ("one-by-one (batch 1)", f"{rates[1]:.1f} examples/s"),
                ("batched (batch 8)", f"{rates[8]:.1f} examples/s"),
                ("batched (batch 32)", f"{rates[32]:.1f} examples/s"),
                ("ratio batch 32 / batch 1", f"{rates[32] / rates[1]:.1f}x"),
                ("identical answers batch 32 vs 1", f"{same}/{len(conversations)}"),
            ],
        )
