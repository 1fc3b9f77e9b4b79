"""LoRA on a 7B-shaped Llama with packing, on one GPU: ftops' trainer against TRL's SFTTrainer on
the same shapes, data, LoRA, precision and packing, in the same run. Prints steady-state tokens/s,
MFU and peak GPU memory for both, and the ratio (the decision in docs/training.md rests on it).

    python -m bench.gpu.train_lora_7b                 # one H100/H200-class GPU (sized for < 5 minutes)
    python -m bench.gpu.train_lora_7b --toy           # toy shapes on the CPU: proves the script runs
    python -m bench.gpu.train_lora_7b --out FILE      # also write the figures as JSON

Sizing (an estimate: not yet run on a GPU): building and writing the 13.5 GB random model, then
each side loading it and training 24 steps of ~7,400 tokens at roughly 1 s per step on an H100,
is 3-4 minutes; `--steps` trades precision of the figures for time.

Nothing is downloaded: the weights are random (throughput does not depend on their values), the
tokenizer is the tiny kit's (its ~400 ids index a 32,000-row embedding, so the output layer costs
what a real 7B's does), the data are the tiny task's tickets, about a third with a long pasted log.

Shapes (7B): hidden 4,096, MLP 11,008, 32 layers x 32 heads, vocabulary 32,000 (Llama-2-7B),
weights in bf16 (13.5 GB). Both sides: LoRA r=16 on q/k/v/o, bf16 autocast with float32
adapters, activation checkpointing, SDPA (flash-attention when installed), 8 packed rows of up to
1,024 tokens per step, AdamW, one pass over the same examples.

Tokens/s counts real (non-pad) tokens over the steps after the first WARMUP_STEPS (allocator and
kernel selection). MFU = tokens/s x model FLOPs per token / the GPU's peak dense bf16 FLOP/s,
with model FLOPs per token = 4 x (matmul parameters) [forward + input-gradient backward; frozen
weights get no weight gradient] + 6 x layers x hidden x mean example length [causal attention,
forward and backward]; recomputation is not counted (same formula both sides, so the MFU ratio
is the tokens/s ratio). Peak memory is torch.cuda.max_memory_allocated of each side.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False),
    "toy": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=512, max_position_embeddings=1024, tie_word_embeddings=False),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks (SXM parts); other GPUs report MFU as n/a."""
BATCH_ROWS, MAX_LEN, WARMUP_STEPS = 8, 1024, 3
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def _log(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)


def build_model(out: Path, shape: dict, device: str) -> Path:
    """A Llama of `shape` with random weights, saved as bf16 safetensors with the tiny tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from controller.tiny.model import build_tokenizer

    tok = build_tokenizer()
    tok.model_max_length = MAX_LEN
    config = LlamaConfig(**{**shape, "vocab_size": max(shape["vocab_size"], len(tok))}, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model
    return out


def make_data(root: Path, tokenizer, steps: int) -> tuple[Path, Path, float]:
    """Enough tickets for about `steps` packed steps; (train, test, token-weighted mean example length)."""
    from controller.tiny.task import generate_examples, write_jsonl
    from controller.train.data import encode

    rng = random.Random(0)
    examples, tokens, lengths = [], 0, []
    target = steps * BATCH_ROWS * MAX_LEN * 0.9  # packing fills rows to ~90%
    batch = 0
    while tokens < target:
        for example in generate_examples(256, seed=batch):
            if rng.random() < 0.35:  # a pasted log: 200-900 extra tokens, the long tail of real chat data
                log = " ".join(f"line {i}: request failed with status {rng.choice([500, 502, 503])}."
                               for i in range(rng.randint(6, 28)))
                example["messages"][1]["content"] += " Log: " + log
            n = len(encode(tokenizer, example["messages"], MAX_LEN)[0])
            examples.append(example)
            lengths.append(n)
            tokens += n
            if tokens >= target:
                break
        batch += 1
    mean_len = sum(n * n for n in lengths) / sum(lengths)
    return (write_jsonl(root / "train.jsonl", examples), write_jsonl(root / "test.jsonl", examples[:16]), mean_len)


def flops_per_token(model_dir: Path, mean_len: float) -> float:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, f, layers, vocab = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    kv = d * c.num_key_value_heads // c.num_attention_heads
    matmul = layers * (2 * d * d + 2 * d * kv + 3 * d * f) + d * vocab  # attention, MLP, output layer
    return 4 * matmul + 6 * layers * d * mean_len


def run_ftops(root: Path, model_dir: Path, train: Path, test: Path, device: str, precision: str) -> dict:
    import torch

    from controller.runconfig import RunConfig, write_run_config
    from controller.train.trainer import run

    cfg = RunConfig.model_validate({
        "runId": "be0c6700", "specName": "bench-gpu", "baseModel": {"uri": str(model_dir)},
        "method": {"type": "lora", **LORA},
        "training": {"epochs": 1, "learningRate": 2e-4, "batchSize": BATCH_ROWS, "maxSeqLength": MAX_LEN, "packing": True,
                     "gradientCheckpointing": True, "precision": precision, "checkpointEverySteps": 1_000_000,
                     "warmupRatio": 0.0, "seed": 1},
        "data": {"train": str(train), "test": str(test), "md5": "0" * 32},
        "outputDir": str(root / "out"), "checkpointDir": str(root / "ckpt"), "device": device,
    })
    write_run_config(cfg, root / "run.json")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with contextlib.redirect_stdout(io.StringIO()):
        assert run(root / "run.json") == 0
    metrics = [json.loads(line) for line in (root / "out" / "metrics.jsonl").read_text().splitlines()]
    steady = metrics[WARMUP_STEPS:] or metrics
    seconds = sum(m["tokens"] / m["tokensPerSecond"] for m in steady if m["tokensPerSecond"])
    summary = json.loads((root / "out" / "summary.json").read_text())
    return {"tokensPerSecond": sum(m["tokens"] for m in steady) / seconds, "steps": len(metrics),
            "peakMemoryBytes": summary.get("peakGpuMemoryBytes"), "attention": summary["attention"],
            "gradientCheckpointing": summary["gradientCheckpointing"], "precision": summary["precision"]["resolved"],
            "medianStepSeconds": statistics.median(m["tokens"] / m["tokensPerSecond"] for m in steady)}


def run_trl(root: Path, model_dir: Path, train: Path, device: str, precision: str, attention: str) -> dict:
    import logging
    import warnings

    import torch
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    bf16 = precision == "bf16"

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    rows = [{"messages": json.loads(line)["messages"]} for line in train.read_text().splitlines()]
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                 attn_implementation=attention).to(device)
    clock = StepClock()
    args = SFTConfig(
        output_dir=str(root / "trl"), per_device_train_batch_size=BATCH_ROWS, num_train_epochs=1, learning_rate=2e-4,
        max_length=MAX_LEN, packing=True, assistant_only_loss=True, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False}, bf16=bf16, fp16=False, use_cpu=device == "cpu",
        logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0, seed=1, warmup_steps=0,
        disable_tqdm=True, lr_scheduler_type="linear",
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), callbacks=[clock],
                             processing_class=AutoTokenizer.from_pretrained(model_dir),
                             peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                                    target_modules=LORA["targetModules"], task_type="CAUSAL_LM"))
        start = time.perf_counter()
        trainer.train()
    seen = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e and "loss" in e]
    per_step = [b - a for a, b in zip([0.0, *seen], seen)]
    times = [b - a for a, b in zip([start, *clock.ends], clock.ends)]
    steady = list(zip(per_step, times))[WARMUP_STEPS:] or list(zip(per_step, times))
    out = {"tokensPerSecond": sum(t for t, _ in steady) / sum(s for _, s in steady), "steps": len(times),
           "peakMemoryBytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
           "medianStepSeconds": statistics.median(s for _, s in steady)}
    del trainer, model
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="toy shapes on the CPU (checks that the script runs)")
    parser.add_argument("--steps", type=int, default=None, help="packed steps per side (default 24; toy 8)")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoTokenizer

    from controller.train.loading import resolve_attention

    started = time.monotonic()
    device = "cpu" if args.toy else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --toy on the CPU", file=sys.stderr)
        return 2
    shape = SHAPES["toy" if args.toy else "7b"]
    steps = args.steps or (8 if args.toy else 24)
    precision = "fp32" if device == "cpu" else "bf16"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None) if device == "cuda" else None
    with tempfile.TemporaryDirectory(prefix="ftops-bench-gpu-") as tmp:
        root = Path(tmp)
        model_dir = build_model(root / "model", shape, device)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        _log(f"built a random {'toy' if args.toy else '7B'}-shaped Llama on {gpu}", started)
        train, test, mean_len = make_data(root / "data", AutoTokenizer.from_pretrained(model_dir), steps)
        fpt = flops_per_token(model_dir, mean_len)
        attention = resolve_attention("auto", device)
        ours = run_ftops(root / "ftops", model_dir, train, test, device, precision)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        _log(f"ftops: {ours['tokensPerSecond']:,.0f} tokens/s over {ours['steps']} steps", started)
        theirs = run_trl(root, model_dir, train, device, precision, attention)
        _log(f"TRL: {theirs['tokensPerSecond']:,.0f} tokens/s over {theirs['steps']} steps", started)
    from importlib.metadata import version

    def mfu(tps: float) -> str:
        return f"{tps * fpt / peak:.1%}" if peak else "n/a"

    def gib(n: int | None) -> str:
        return f"{n / 2**30:.1f} GiB" if n else "n/a"

    result = {"gpu": gpu, "shape": "toy" if args.toy else "7b", "precision": precision, "attention": attention,
              "flopsPerToken": fpt, "meanExampleTokens": round(mean_len, 1), "ftops": ours, "trl": theirs,
              "trlVersion": version("trl"), "ratio": ours["tokensPerSecond"] / theirs["tokensPerSecond"],
              "mfu": {"ftops": mfu(ours["tokensPerSecond"]), "trl": mfu(theirs["tokensPerSecond"])}}
    print(f"LoRA r=16, {result['shape']}-shaped Llama, {precision}, {attention}, packing {BATCH_ROWS} x {MAX_LEN}, on {gpu}")
    print(f"  ftops       {ours['tokensPerSecond']:>10,.0f} tokens/s   MFU {mfu(ours['tokensPerSecond']):>6}   "
          f"peak {gib(ours['peakMemoryBytes'])}   median step {ours['medianStepSeconds']:.3f}s")
    print(f"  TRL {version('trl'):<7} {theirs['tokensPerSecond']:>10,.0f} tokens/s   MFU {mfu(theirs['tokensPerSecond']):>6}   "
          f"peak {gib(theirs['peakMemoryBytes'])}   median step {theirs['medianStepSeconds']:.3f}s")
    print(f"  ftops / TRL {result['ratio']:.2f}x  (aim >= 1.0x)   total {time.monotonic() - started:.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
