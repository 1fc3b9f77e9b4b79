"""Plain helpers for the trainer tests (tests/train/conftest.py puts this folder on sys.path)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from controller.runconfig import RunConfig, write_run_config
from controller.tiny.task import expected_label, parse_label

os.environ.setdefault("OMP_NUM_THREADS", "1")
N_TRAIN, N_TEST = 480, 60
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
QUANT = {"quantization": {"computeDtype": "float32"}}


def make_config(root: Path, model: Path, data: tuple[Path, Path], method: dict, run_id: str = "0123abcd", **training) -> Path:
    """run.json for a run under `root` (outputs in root/out, checkpoints in root/ckpt)."""
    train = {"epochs": 3, "learningRate": 1e-2, "batchSize": 16, "maxSeqLength": 256, "warmupRatio": 0.05,
             "checkpointEverySteps": 1000, "seed": 1}
    train.update(training)
    config = RunConfig.model_validate({
        "runId": run_id, "specName": "tiny-tickets", "baseModel": {"uri": str(model)}, "method": method,
        "training": train, "data": {"train": str(data[0]), "test": str(data[1]), "md5": "0" * 32},
        "outputDir": str(root / "out"), "checkpointDir": str(root / "ckpt"), "device": "cpu",
    })
    path = root / "run.json"
    write_run_config(config, path)
    return path


def train_cli(config: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m controller.train --config run.json` as the backends run it."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "controller.train", "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def train_in_process(config: Path) -> int:
    import torch

    from controller.train.trainer import run

    torch.set_num_threads(1)
    return run(config)


def events(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def greedy_accuracy(model_dir: Path, base: Path, test: Path) -> float:
    """Held-out accuracy: greedy-decode each test prompt and parse the JSON label strictly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    tok.padding_side = "left"
    examples = [json.loads(line) for line in test.read_text().splitlines()]
    prompts = [tok.apply_chat_template(e["messages"][:-1], add_generation_prompt=True, tokenize=False) for e in examples]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(parse_label(t) == expected_label(e) for t, e in zip(texts, examples)) / len(examples)


# The three methods, trained once per session. LoRA also exercises gradient checkpointing and a
# merged output; full exercises packing.
METHOD_RUNS = {
    "lora": ({"type": "lora", **LORA, "merge": True}, {"gradientCheckpointing": True}),
    "qlora": ({"type": "qlora", **LORA, **QUANT}, {}),
    "full": ({"type": "full"}, {"learningRate": 3e-3, "packing": True}),
}


