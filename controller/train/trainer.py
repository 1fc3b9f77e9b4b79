"""The training loop: one function of run.json, resumable at any optimizer step.

A hand-written loop rather than transformers.Trainer, because preemption is the normal case on
spot GPUs and the loop must own exactly three things: the batch plan as a pure function of the
seed (controller.train.batching), checkpoints that hold everything needed to continue bit-for-bit
(trainable weights, AdamW moments, RNG state; controller.train.checkpoint), and the SIGTERM path
(finish the current step, checkpoint it, exit PREEMPTED). The step counter is the index into
the plan, so it never goes back and no step is trained twice. docs/training.md says why the loop
is ours rather than transformers' Trainer or TRL's SFTTrainer, with the measurements.

How the arithmetic is done is decided once, up front, from run.json and the device: precision
(controller.train.precision), attention kernel and activation checkpointing
(controller.train.loading), DDP or FSDP2 (controller.train.distributed). What was decided, and
what the loaded model really is (attention implementation, parameter dtypes, 4-bit layers), is
recorded in summary.json and the manifest.

Order of work, so that bad input fails before any training: run.json -> output already done? ->
base model (safetensors only) -> tokenizer + chat template -> data (exists, sha256, valid, renders,
end-of-turn trained) -> precision/attention/strategy -> model (QLoRA probe first, then its
4-bit layers read back) -> shard -> resume -> train -> final checkpoint -> outputs -> manifest
(last, atomic).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controller import exitcodes
from controller.errors import PermanentError
from controller.fsutil import sha256_file
from controller.runconfig import RunConfig, load_run_config
from controller.train import checkpoint as ckpt
from controller.train import distributed
from controller.train.batching import IGNORE_INDEX, build_plan, collate, real_tokens, split_by_length
from controller.train.data import (
    check_template, end_of_turn_ids, read_chat_jsonl, sha256_text, special_tokens,
    tokenize_split, tokenizer_hash,
)
from controller.train.loading import (
    attention_implementation, base_parameter_count, check_quantization, checkpointing_enabled,
    enable_fused_cross_entropy, load_model, load_tokenizer, quantization_readback, resolve_attention, resolve_device,
    resolve_model_dir, wants_checkpointing,
)
from controller.train.precision import Precision, autocast, bf16_supported, enable_tf32, grad_scaler, resolve_precision
from controller.train.progress import Progress

MAX_GRAD_NORM = 1.0
CACHE_ENV = "FTOPS_TOKENIZED_CACHE"
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "tokenizers", "safetensors", "accelerate",
             "flash_attn", "liger_kernel")


def lr_at(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then linear decay to 0."""
    warmup = math.ceil(total * warmup_ratio)
    if step < warmup:
        return peak * (step + 1) / warmup
    remaining = max(1, total - warmup)
    return peak * max(0.0, (total - step) / remaining)


class _Preemption:
    """Remembers a SIGTERM; the loop checks it between optimizer steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def run(config_path: str | Path) -> int:
    """Train the run described by run.json; returns an exit code (controller.exitcodes)."""
    config = load_run_config(config_path)
    return Trainer(config, Path(config_path)).run()


class Trainer:
    def __init__(self, config: RunConfig, config_path: Path | None = None) -> None:
        self.cfg = config
        self.config_path = config_path
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = Path(config.checkpoint_dir)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0

    # ---------------------------------------------------------------- entry
    def run(self) -> int:
        preemption = _Preemption()
        try:
            return self._run(preemption)
        finally:
            preemption.restore()
            if self.world > 1:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()

    def _already_done(self) -> bool:
        manifest = self.output_dir / "manifest.json"
        try:
            return json.loads(manifest.read_text()).get("runId") == self.cfg.run_id
        except (OSError, json.JSONDecodeError):
            return False

    def _run(self, preemption: _Preemption) -> int:
        cfg, t = self.cfg, self.cfg.training
        progress_stub = Progress(total=1, initial=0, interactive=False, enabled=self.is_main)
        if self._already_done():
            progress_stub.event("done", runId=cfg.run_id, alreadyFinished=True, outputDir=str(self.output_dir))
            return exitcodes.OK
        for p, field in ((Path(cfg.output_dir), "outputDir"), (Path(cfg.checkpoint_dir), "checkpointDir"),
                         (Path(cfg.data.train), "data.train"), (Path(cfg.data.test), "data.test")):
            if not p.is_absolute():
                raise PermanentError(f"{field}: '{p}' is not an absolute path; run.json paths are absolute on the trainer's machine")

        # 1. Everything that can be wrong with the input, before any weights are loaded.
        # Cheapest checks first (no heavy import yet): data files, then the model directory.
        train_path, test_path = Path(cfg.data.train), Path(cfg.data.test)
        first = read_chat_jsonl(train_path, "data.train")
        read_chat_jsonl(test_path, "data.test")
        model_dir = resolve_model_dir(cfg.base_model.uri, cfg.base_model.revision)
        tokenizer = load_tokenizer(model_dir)
        gen_eos = _generation_eos(model_dir)
        eot = end_of_turn_ids(tokenizer, gen_eos)
        check_template(tokenizer, first[0], f"{train_path}:1", eot)
        del first
        import datasets
        import torch
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        cache_dir = Path(os.environ.get(CACHE_ENV) or self.checkpoint_dir / "tokenized")
        train = tokenize_split(train_path, "data.train", tokenizer, data_md5=cfg.data.md5, max_length=t.max_seq_length,
                               cache_dir=cache_dir, expected_sha256=cfg.data.train_sha256)
        test = tokenize_split(test_path, "data.test", tokenizer, data_md5=cfg.data.md5, max_length=t.max_seq_length,
                              cache_dir=cache_dir, expected_sha256=cfg.data.test_sha256)

        # 2. Device, processes, how the arithmetic is done, model.
        device = resolve_device(cfg.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
            if device == "cuda":
                device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.local_rank)
        method = cfg.method
        precision = resolve_precision(
            t.precision, device.split(":")[0], bf16_supported=bf16_supported(device),
            qlora_compute_dtype=method.quantization.compute_dtype if method.type == "qlora" else None,
        )
        tf32 = enable_tf32(device)
        attention = resolve_attention(t.attention, device)
        base_parameters, _ = base_parameter_count(model_dir)
        checkpointing = wants_checkpointing(t.gradient_checkpointing, base_parameters)
        strategy = distributed.resolve_strategy(
            cfg.distributed.strategy, world=self.world, method=method.type,
            base_weight_bytes=base_parameters * precision.dtype().itemsize,
            gpu_memory_bytes=torch.cuda.get_device_properties(device).total_memory if device.startswith("cuda") else None,
        )
        torch.manual_seed(t.seed)
        model = load_model(model_dir, method, device, dtype=precision.dtype(), gradient_checkpointing=checkpointing,
                           attention=attention)
        quantization = quantization_readback(model) if method.type == "qlora" else None
        if method.type == "qlora":
            check_quantization(quantization, method.quantization)
        if t.fused_cross_entropy:
            enable_fused_cross_entropy(model, device)
        model.train()
        trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in model.parameters())
        runtime = {
            "precision": precision.to_dict(), "tf32": tf32, "attention": attention_implementation(model),
            "gradientCheckpointing": checkpointing_enabled(model), "strategy": strategy,
            "fusedCrossEntropy": t.fused_cross_entropy, "baseParameters": base_parameters,
            "parameterDtypes": _parameter_dtypes(model), "quantization": quantization,
        }
        target_logits = computes_target_logits_only(model)
        wrapped = distributed.wrap(model, strategy, device, precision.dtype())
        params = [p for p in model.parameters() if p.requires_grad]  # after sharding: the local shards
        optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
        scaler = grad_scaler(precision, device, sharded=strategy == "fsdp")
        plan = build_plan([len(x) for x in train.input_ids], epochs=t.epochs, batch_size=t.batch_size,
                          gradient_accumulation=t.gradient_accumulation, packing=t.packing,
                          max_length=t.max_seq_length, seed=t.seed)
        saver = _Saver(self, model, optimizer, scaler, strategy, device, trainable_names)

        # 3. Resume from the newest complete checkpoint, if any.
        progress = None
        state = self._resume(saver, plan.total_steps, progress_stub)
        step = state["step"]
        metrics_path = self.checkpoint_dir / "metrics.jsonl"
        if self.is_main:
            _truncate_lines(metrics_path, state["metricsLines"])

        progress = Progress(total=plan.total_steps, initial=step, enabled=self.is_main)
        progress.event("start", runId=cfg.run_id, method=cfg.method.type, device=device, world=self.world,
                       totalSteps=plan.total_steps, resumeStep=step, trainExamples=len(train.input_ids),
                       tokenizedCache="hit" if train.cache_hit else "miss", trainableParameters=n_trainable,
                       precision=precision.name, attention=runtime["attention"], strategy=strategy,
                       gradientCheckpointing=runtime["gradientCheckpointing"])
        pad_id = tokenizer.pad_token_id
        started = time.monotonic()
        tokens_trained = 0
        step_seconds = 0.0
        last_loss = float("nan")
        loop_started, loop_cpu_started = time.monotonic(), time.process_time()
        try:
            while step < plan.total_steps:
                if self._stop_requested(preemption, device):
                    if step > state["step"]:  # else the newest checkpoint already is this step (or none was trained)
                        saver.save(step, state)
                    progress.event("preempted", step=step, totalSteps=plan.total_steps, exitCode=exitcodes.PREEMPTED)
                    return exitcodes.PREEMPTED
                lr = lr_at(step, plan.total_steps, t.learning_rate, t.warmup_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.monotonic()
                loss, n_tokens, grad_norm = self._train_step(
                    _Step(wrapped, strategy, precision, scaler, optimizer, params, t.fused_cross_entropy, target_logits),
                    plan.steps[step], train, pad_id, device, t.packing)
                step += 1
                last_loss = loss
                tokens_trained += n_tokens
                elapsed = time.monotonic() - t0
                step_seconds += elapsed
                metrics = {"step": step, "epoch": round(plan.epoch_of(step), 4), "loss": loss, "learningRate": lr,
                           "tokens": n_tokens,
                           "tokensPerSecond": round(n_tokens / elapsed, 1) if elapsed > 0 else None,
                           "gradNorm": grad_norm}
                if self.is_main:
                    with metrics_path.open("a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
                    state["metricsLines"] += 1
                progress.step(step, metrics)
                if step % t.checkpoint_every_steps == 0 and step < plan.total_steps:
                    saver.save(step, state)
                    state["step"] = step
                    progress.event("checkpoint", step=step)
            loop_seconds = time.monotonic() - loop_started
            loop_cpu_seconds = time.process_time() - loop_cpu_started  # stable under CPU contention (benchmarks)
            # The finished weights are checkpointed before outputs are written: a crash while
            # writing outputs resumes here and only rewrites them.
            if step > state["step"] or ckpt.latest_complete(self.checkpoint_dir) is None:
                saver.save(step, state)
                state["step"] = step
        finally:
            if progress is not None:
                progress.close()

        # 4. Outputs, then the manifest, last.
        test_loss = self._eval_loss(model, test, pad_id, device, precision, target_logits)
        weights = (distributed.trainable_state(model, strategy, trainable_names) if method.type != "full"
                   else distributed.full_model_state(model, strategy)) if strategy == "fsdp" else None
        if self.is_main:
            summary = {
                "runId": cfg.run_id, "specName": cfg.spec_name, "method": cfg.method.type, "totalSteps": plan.total_steps,
                "epochs": t.epochs, "finalLoss": _last_loss(metrics_path, last_loss), "testLoss": test_loss,
                "trainExamples": len(train.input_ids), "testExamples": len(test.input_ids),
                "droppedExamples": {"train": train.dropped, "test": test.dropped},
                "trainableParameters": n_trainable, "totalParameters": n_total, "packing": t.packing,
                "tokensTrainedThisProcess": tokens_trained, "wallSecondsThisProcess": round(time.monotonic() - started, 3),
                "stepSecondsThisProcess": round(step_seconds, 4), "loopSecondsThisProcess": round(loop_seconds, 4),
                "loopCpuSecondsThisProcess": round(loop_cpu_seconds, 4),
                "resumedFromSteps": state["resumes"], "device": device, "world": self.world,
                "maxGradNorm": MAX_GRAD_NORM, **runtime,
                "peakGpuMemoryBytes": torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else None,
            }
            self._write_outputs(model, weights, tokenizer, model_dir, metrics_path, summary, train.cache_key, runtime)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        progress.event("done", runId=cfg.run_id, step=step, testLoss=test_loss, outputDir=str(self.output_dir))
        return exitcodes.OK

    # ---------------------------------------------------------------- steps
    def _train_step(self, how: "_Step", micro_batches, data, pad_id, device, packing):
        import torch

        my_batches = [rows[self.rank :: self.world] if self.world > 1 else rows for rows in micro_batches]
        if data.target_counts is None:  # once per split, not per step
            data.target_counts = [sum(1 for lab in labs[1:] if lab != IGNORE_INDEX) for labs in data.labels]
        counts = [sum(data.target_counts[i] for row in rows for i in row) for rows in my_batches]
        total = torch.tensor([float(sum(counts))], device=device)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        denom = max(total.item(), 1.0)
        if self.world == 1 and not packing:
            # short rows apart from long ones, the same gradient with less padding; one process
            # only: ranks run their forwards in lockstep, so they must split alike
            my_batches = [sub for rows in my_batches for sub in split_by_length(rows, data.input_ids)]
        loss_sum = 0.0
        n_tokens = 0
        for k, rows in enumerate(my_batches):
            scale = 1.0
            if not rows:  # this rank got no rows of a short final micro-batch: take part with zero weight
                rows, scale = micro_batches[k][:1], 0.0
            ids, labels, mask, pos = collate(rows, data.input_ids, data.labels, pad_id, packing)
            ids, labels = ids.to(device), labels.to(device)
            mask = mask.to(device) if mask is not None else None
            pos = pos.to(device) if pos is not None else None
            sync = k == len(my_batches) - 1 or self.world == 1
            with distributed.gradient_sync(how.wrapped, how.strategy, sync):
                with autocast(how.precision, device):
                    if how.fused_loss:  # liger: logits never materialized; sum over targets (num_items_in_batch=1)
                        out = how.wrapped(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels,
                                          num_items_in_batch=1, use_cache=False)
                    else:
                        target, keep, extra = loss_targets(labels, how.target_logits)
                        out = how.wrapped(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **extra)
                if how.fused_loss:
                    ce = out.loss.float()
                else:
                    ce = _target_cross_entropy(out.logits, target, keep)
                loss = ce * scale * self.world / denom
                (how.scaler.scale(loss) if how.scaler is not None else loss).backward()
            loss_sum += float(ce.detach()) * scale
            n_tokens += real_tokens(rows, data.input_ids) if scale else 0
        if how.scaler is not None:
            how.scaler.unscale_(how.optimizer)
        grad_norm = distributed.grad_norm_value(torch.nn.utils.clip_grad_norm_(how.params, MAX_GRAD_NORM))
        if how.scaler is not None:
            how.scaler.step(how.optimizer)  # skipped when the scaled gradients overflowed
            how.scaler.update()
        else:
            how.optimizer.step()
        how.optimizer.zero_grad(set_to_none=True)
        if self.world > 1:
            import torch.distributed as dist

            agg = torch.tensor([loss_sum, float(n_tokens)], device=device)
            dist.all_reduce(agg)
            loss_sum, n_tokens = agg[0].item(), int(agg[1].item())
        return loss_sum / denom, n_tokens, grad_norm

    def _stop_requested(self, preemption: _Preemption, device: str) -> bool:
        if self.world == 1:
            return preemption.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if preemption.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _eval_loss(self, model, data, pad_id, device, precision: Precision, target_logits: bool,
                   batch_size: int = 16) -> float:
        """Mean loss per assistant token on the held-out split (never trained on), in the training
        precision. Every rank runs it (FSDP needs every rank in each forward)."""
        import torch

        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(data.input_ids), batch_size):
                rows = [[i] for i in range(start, min(start + batch_size, len(data.input_ids)))]
                ids, labels, mask, _ = collate(rows, data.input_ids, data.labels, pad_id, packing=False)
                target, keep, extra = loss_targets(labels.to(device), target_logits)
                with autocast(precision, device):
                    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **extra)
                total += float(_target_cross_entropy(out.logits, target, keep))
                count += int((target != IGNORE_INDEX).sum())
        if was_training:
            model.train()
        return total / max(count, 1)

    # ---------------------------------------------------------------- checkpoints
    def _resume(self, saver: "_Saver", total_steps: int, log: Progress) -> dict:
        import torch

        fresh = {"step": 0, "metricsLines": 0, "resumes": [], "runId": self.cfg.run_id, "totalSteps": total_steps}
        if self.is_main:
            removed = ckpt.remove_incomplete(self.checkpoint_dir)
            if removed:
                log.event("ignored-partial-checkpoints", removed=removed)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        latest = ckpt.latest_complete(self.checkpoint_dir)
        if latest is None:
            return fresh
        trainable, opt_state, rng, state = ckpt.load_checkpoint(latest)
        if state.get("runId") != self.cfg.run_id:
            raise PermanentError(
                f"checkpointDir: {self.checkpoint_dir} holds checkpoints of run {state.get('runId')}, not {self.cfg.run_id}; "
                "each run needs its own checkpoint directory"
            )
        if state.get("totalSteps") != total_steps:
            raise PermanentError(
                f"checkpointDir: {latest} planned {state.get('totalSteps')} steps but this run plans {total_steps}; "
                "the data or batch settings changed under the same run id"
            )
        missing = [n for n in saver.names if n not in trainable]
        if missing:
            raise PermanentError(f"checkpointDir: {latest} lacks trained parameters ({', '.join(missing[:3])}...)")
        distributed.load_state(saver.model, saver.optimizer, saver.strategy, trainable, opt_state)
        if saver.scaler is not None and state.get("scaler"):
            saver.scaler.load_state_dict(state["scaler"])
        # each rank continues its own random stream (dropout); a changed world size falls back to rank 0's
        torch.set_rng_state(rng.get(f"torch.r{self.rank}", rng["torch.r0"]))
        cuda = rng.get(f"cuda.r{self.rank}", rng.get("cuda.r0"))
        if cuda is not None and saver.device.startswith("cuda"):
            torch.cuda.set_rng_state(cuda)
        step = int(state["step"])
        log.event("resume", fromCheckpoint=str(latest), step=step, totalSteps=total_steps)
        return {"step": step, "metricsLines": int(state["metricsLines"]), "resumes": [*state.get("resumes", []), step],
                "runId": self.cfg.run_id, "totalSteps": total_steps}

    # ---------------------------------------------------------------- outputs
    def _write_outputs(self, model, weights: dict | None, tokenizer, base_dir: Path, metrics_path: Path, summary: dict,
                       cache_key: str, runtime: dict) -> None:
        """`weights`: the gathered state dict of a sharded model (None: the model saves itself)."""
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("manifest.json", "model", "merged", "metrics.jsonl", "summary.json"):
            path = out / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        model_dir = out / "model"
        method = self.cfg.method
        extra = {} if weights is None else {"state_dict": weights}
        if method.type == "full":
            model.config.use_cache = True
        model.save_pretrained(model_dir, safe_serialization=True, **extra)
        tokenizer.save_pretrained(model_dir)
        if method.type != "full" and getattr(method, "merge", False):
            self._write_merged(base_dir, model_dir, tokenizer, out / "merged")
        shutil.copyfile(metrics_path, out / "metrics.jsonl")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        write_manifest(out, self._provenance(tokenizer, cache_key, runtime))

    def _write_merged(self, base_dir: Path, adapter_dir: Path, tokenizer, target: Path) -> None:
        """Adapter merged into full-precision base weights (QLoRA too: merging into 4-bit weights
        would round the adapter away)."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True, trust_remote_code=False)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)

    def _provenance(self, tokenizer, cache_key: str, runtime: dict) -> dict:
        from importlib import metadata

        cfg = self.cfg
        libraries = {}
        for lib in LIBRARIES:
            try:
                libraries[lib] = metadata.version(lib)
            except metadata.PackageNotFoundError:
                libraries[lib] = None
        try:
            ftops_version = metadata.version("ftops")
        except metadata.PackageNotFoundError:
            ftops_version = None
        template = tokenizer.chat_template
        return {
            "runId": cfg.run_id,
            "specName": cfg.spec_name,
            "dataMd5": cfg.data.md5,
            "trainSha256": sha256_file(Path(cfg.data.train)),
            "testSha256": sha256_file(Path(cfg.data.test)),
            "baseModel": {"uri": cfg.base_model.uri, "revision": cfg.base_model.revision},
            "method": cfg.method.model_dump(mode="json", by_alias=True),
            "training": cfg.training.model_dump(mode="json", by_alias=True),
            "runConfigSha256": sha256_file(self.config_path) if self.config_path and self.config_path.is_file() else None,
            "codeVersion": {"ftops": ftops_version, "gitCommit": os.environ.get("FTOPS_GIT_COMMIT") or _git_commit()},
            "libraries": libraries,
            "chatTemplate": template,
            "chatTemplateSha256": sha256_text(template),
            "specialTokens": special_tokens(tokenizer),
            "tokenizerSha256": tokenizer_hash(tokenizer),
            "tokenizedCacheKey": cache_key,
            "world": {"nodes": cfg.distributed.nodes, "gpusPerNode": cfg.distributed.gpus_per_node,
                      "strategy": runtime["strategy"]},
            # what the trained model really was, read back from it (not copied from the config)
            "precision": runtime["precision"], "attention": runtime["attention"],
            "gradientCheckpointing": runtime["gradientCheckpointing"], "parameterDtypes": runtime["parameterDtypes"],
            "quantization": runtime["quantization"],
        }


@dataclass(frozen=True)
class _Step:
    """What one optimizer step needs besides the batch: the module to call, how it is sharded,
    the precision and loss scaler, the optimizer and the (local) trained parameters."""

    wrapped: Any
    strategy: str
    precision: Precision
    scaler: Any
    optimizer: Any
    params: list
    fused_loss: bool
    target_logits: bool
    """The model projects only the positions that have a target onto the vocabulary
    (`computes_target_logits_only`)."""


@dataclass(frozen=True)
class _Saver:
    """Writes a checkpoint of the run as it is now, under any strategy: every rank takes part in
    gathering (FSDP shards, RNG states), rank 0 writes (controller.train.checkpoint)."""

    trainer: "Trainer"
    model: Any
    optimizer: Any
    scaler: Any
    strategy: str
    device: str
    names: list

    def save(self, step: int, state: dict) -> None:
        world, is_main = self.trainer.world, self.trainer.is_main
        trainable = distributed.trainable_state(self.model, self.strategy, self.names)
        optim = distributed.optimizer_state(self.model, self.optimizer, self.strategy)
        rng = {f"torch.r{r}": t for r, t in enumerate(distributed.gather_rng(world, self.device))}
        if self.device.startswith("cuda"):
            rng.update({f"cuda.r{r}": t for r, t in enumerate(distributed.gather_rng(world, self.device, cuda=True))})
        if is_main:
            meta = {k: v for k, v in state.items() if k != "step"}
            meta["scaler"] = self.scaler.state_dict() if self.scaler is not None else None
            ckpt.save_checkpoint(self.trainer.checkpoint_dir, step, trainable=trainable, optimizer_state=optim, rng=rng,
                                 state=meta)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()


def _parameter_dtypes(model) -> dict[str, list[str]]:
    """Dtypes of the trained and the frozen parameters, as loaded (e.g. float32 adapters on a
    bfloat16 base; uint8 is bitsandbytes' packed 4-bit storage)."""
    out: dict[str, set[str]] = {"trainable": set(), "frozen": set()}
    for p in model.parameters():
        out["trainable" if p.requires_grad else "frozen"].add(str(p.dtype).removeprefix("torch."))
    return {k: sorted(v) for k, v in out.items()}


def write_manifest(out: Path, provenance: dict) -> Path:
    """sha256 of every file under `out` (except the manifest) + provenance, written atomically.
    Its presence is what "this run is finished" means."""
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if rel in ("manifest.json", "manifest.json.tmp"):
            continue
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = {
        "apiVersion": "ftops.dev/v1alpha1", "kind": "RunManifest", "runId": provenance["runId"],
        "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files, "provenance": provenance,
    }
    tmp = out / "manifest.json.tmp"
    with tmp.open("w") as fh:
        fh.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(out / "manifest.json")
    return out / "manifest.json"


def _generation_eos(model_dir: Path) -> Any:
    try:
        return json.loads((model_dir / "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, json.JSONDecodeError):
        return None


def _truncate_lines(path: Path, keep: int) -> None:
    """Drop metrics of steps after the resumed checkpoint (they are retrained, and logged once)."""
    if not path.exists():
        if keep:
            raise PermanentError(f"checkpointDir: {path} is missing but the checkpoint records {keep} metric lines")
        return
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]))


def _last_loss(metrics_path: Path, fallback: float) -> float:
    try:
        return json.loads(metrics_path.read_text().splitlines()[-1])["loss"]
    except (OSError, IndexError, json.JSONDecodeError, KeyError):
        return fallback


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def computes_target_logits_only(model) -> bool:
    """Whether the model can project onto the vocabulary only the positions that have a target
    (transformers' `logits_to_keep` with a boolean mask), which every causal LM in transformers 5
    can. Why: the loss is on the assistant's tokens only, a small share of a prompt that carries
    retrieved articles (about 24 of 340 tokens in the demo), and the vocabulary projection with
    its float copy and softmax over every other position is work thrown away. Measured on the
    tiny Llama (vocabulary 512): 10% less CPU in one RAFT-shaped micro-batch's forward and
    backward, a few percent in a whole loop on the demo's prompts (docs/training.md); at a 128k-token
    vocabulary the logits of the other positions are also gigabytes of memory. The loss is the
    same to 1e-7."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def loss_targets(labels, target_logits: bool):
    """(target, keep, forward kwargs) for a micro-batch's labels: the token each position
    predicts (-100 where none: the labels shifted, not the logits, whose slice would copy the
    largest tensor), the mask of the positions to project onto the vocabulary (None: all of them)
    and the `logits_to_keep` that asks the model for just those."""
    import torch.nn.functional as F

    target = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if not target_logits:
        return target, None, {}
    keep = target != IGNORE_INDEX
    return target, keep, {"logits_to_keep": keep}


def _target_cross_entropy(logits, target, keep):
    """The summed cross-entropy of the predicted positions: `logits` are (targets, vocabulary)
    when `keep` selected them, else (batch, sequence, vocabulary) with -100 where no target is."""
    import torch.nn.functional as F

    logits = logits.float()
    if keep is not None:
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target[keep], reduction="sum")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")
