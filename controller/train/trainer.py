"""The training loop: one function of run.json, resumable at any optimizer step.

A hand-written loop rather than transformers.Trainer, because preemption is the normal case on
spot GPUs and the loop must own exactly three things: the batch plan as a pure function of the
seed (controller.train.batching), checkpoints that hold everything needed to continue bit-for-bit
(trainable weights, AdamW moments, RNG state; controller.train.checkpoint), and the SIGTERM path
(finish the current step, checkpoint it, exit EXIT_PREEMPTED). The step counter is the index into
the plan, so it never goes back and no step is trained twice.

Order of work, so that bad input fails before any training: run.json -> output already done? ->
base model (safetensors only) -> tokenizer + chat template -> data (exists, sha256, valid, renders,
end-of-turn trained) -> model (QLoRA probe first) -> resume -> train -> final checkpoint ->
outputs -> manifest (last, atomic).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controller.errors import PermanentError
from controller.runconfig import RunConfig, load_run_config
from controller.train import EXIT_OK, EXIT_PREEMPTED
from controller.fsutil import sha256_file
from controller.train import checkpoint as ckpt
from controller.train.batching import IGNORE_INDEX, build_plan, collate, real_tokens
from controller.train.data import (
    check_template, end_of_turn_ids, read_chat_jsonl, sha256_text, special_tokens,
    tokenize_split, tokenizer_hash,
)
from controller.train.loading import load_model, load_tokenizer, resolve_device, resolve_model_dir
from controller.train.progress import Progress

MAX_GRAD_NORM = 1.0
CACHE_ENV = "FTOPS_TOKENIZED_CACHE"
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "tokenizers", "safetensors", "accelerate")


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
    """Train the run described by run.json; returns an exit code (see controller.train)."""
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
            return EXIT_OK
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

        # 2. Device, processes, model.
        device = resolve_device(cfg.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
            if device == "cuda":
                device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.local_rank)
        torch.manual_seed(t.seed)
        model = load_model(model_dir, cfg.method, device, t.gradient_checkpointing)
        model.train()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in trainable]
        n_trainable = sum(p.numel() for p in params)
        n_total = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
        plan = build_plan([len(x) for x in train.input_ids], epochs=t.epochs, batch_size=t.batch_size,
                          gradient_accumulation=t.gradient_accumulation, packing=t.packing,
                          max_length=t.max_seq_length, seed=t.seed)

        # 3. Resume from the newest complete checkpoint, if any.
        progress = None
        state = self._resume(model, optimizer, plan.total_steps, progress_stub)
        step = state["step"]
        metrics_path = self.checkpoint_dir / "metrics.jsonl"
        if self.is_main:
            _truncate_lines(metrics_path, state["metricsLines"])
        ddp_model = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ddp_model = DistributedDataParallel(model, device_ids=[self.local_rank] if device.startswith("cuda") else None)

        progress = Progress(total=plan.total_steps, initial=step, enabled=self.is_main)
        progress.event("start", runId=cfg.run_id, method=cfg.method.type, device=device, world=self.world,
                       totalSteps=plan.total_steps, resumeStep=step, trainExamples=len(train.input_ids),
                       tokenizedCache="hit" if train.cache_hit else "miss", trainableParameters=n_trainable)
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
                        self._save(step, trainable, optimizer, state, metrics_path)
                    progress.event("preempted", step=step, totalSteps=plan.total_steps, exitCode=EXIT_PREEMPTED)
                    return EXIT_PREEMPTED
                lr = lr_at(step, plan.total_steps, t.learning_rate, t.warmup_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.monotonic()
                loss, n_tokens, grad_norm = self._train_step(ddp_model, plan.steps[step], train, pad_id, device,
                                                             optimizer, params, t.packing)
                step += 1
                last_loss = loss
                tokens_trained += n_tokens
                elapsed = time.monotonic() - t0
                step_seconds += elapsed
                metrics = {"step": step, "epoch": round(plan.epoch_of(step), 4), "loss": loss, "learningRate": lr,
                           "tokensPerSecond": round(n_tokens / elapsed, 1) if elapsed > 0 else None,
                           "gradNorm": grad_norm}
                if self.is_main:
                    with metrics_path.open("a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
                    state["metricsLines"] += 1
                progress.step(step, metrics)
                if step % t.checkpoint_every_steps == 0 and step < plan.total_steps:
                    self._save(step, trainable, optimizer, state, metrics_path)
                    state["step"] = step
                    progress.event("checkpoint", step=step)
            loop_seconds = time.monotonic() - loop_started
            loop_cpu_seconds = time.process_time() - loop_cpu_started  # stable under CPU contention (benchmarks)
            # The finished weights are checkpointed before outputs are written: a crash while
            # writing outputs resumes here and only rewrites them.
            if step > state["step"] or ckpt.latest_complete(self.checkpoint_dir) is None:
                self._save(step, trainable, optimizer, state, metrics_path)
                state["step"] = step
        finally:
            if progress is not None:
                progress.close()

        # 4. Outputs, then the manifest, last.
        test_loss = self._eval_loss(model, test, pad_id, device)
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
                "maxGradNorm": MAX_GRAD_NORM,
            }
            self._write_outputs(model, tokenizer, model_dir, metrics_path, summary, train.cache_key)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        progress.event("done", runId=cfg.run_id, step=step, testLoss=test_loss, outputDir=str(self.output_dir))
        return EXIT_OK

    # ---------------------------------------------------------------- steps
    def _train_step(self, ddp_model, micro_batches, data, pad_id, device, optimizer, params, packing):
        import contextlib

        import torch
        import torch.nn.functional as F

        my_batches = [rows[self.rank :: self.world] if self.world > 1 else rows for rows in micro_batches]
        if data.target_counts is None:  # once per split, not per step
            data.target_counts = [sum(1 for lab in labs[1:] if lab != IGNORE_INDEX) for labs in data.labels]
        counts = [sum(data.target_counts[i] for row in rows for i in row) for rows in my_batches]
        total = torch.tensor([float(sum(counts))], device=device)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        denom = max(total.item(), 1.0)
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
            ctx = contextlib.nullcontext() if sync else ddp_model.no_sync()
            with ctx:
                out = ddp_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
                # shift the labels, not the logits: slicing the logits would copy the largest tensor
                target = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
                logits = out.logits.float()
                ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum")
                (ce * scale * self.world / denom).backward()
            loss_sum += float(ce.detach()) * scale
            n_tokens += real_tokens(rows, data.input_ids) if scale else 0
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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

    def _eval_loss(self, model, data, pad_id, device, batch_size: int = 16) -> float:
        """Mean loss per assistant token on the held-out split (never trained on)."""
        import torch
        import torch.nn.functional as F

        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(data.input_ids), batch_size):
                rows = [[i] for i in range(start, min(start + batch_size, len(data.input_ids)))]
                ids, labels, mask, _ = collate(rows, data.input_ids, data.labels, pad_id, packing=False)
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                logits = out.logits[:, :-1].float()
                target = labels[:, 1:].to(device)
                total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                               ignore_index=IGNORE_INDEX, reduction="sum"))
                count += int((target != IGNORE_INDEX).sum())
        if was_training:
            model.train()
        return total / max(count, 1)

    # ---------------------------------------------------------------- checkpoints
    def _resume(self, model, optimizer, total_steps: int, log: Progress) -> dict:
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
        missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in trainable]
        if missing:
            raise PermanentError(f"checkpointDir: {latest} lacks trained parameters ({', '.join(missing[:3])}...)")
        model.load_state_dict(trainable, strict=False)
        optimizer.load_state_dict(opt_state)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        step = int(state["step"])
        log.event("resume", fromCheckpoint=str(latest), step=step, totalSteps=total_steps)
        return {"step": step, "metricsLines": int(state["metricsLines"]), "resumes": [*state.get("resumes", []), step],
                "runId": self.cfg.run_id, "totalSteps": total_steps}

    def _save(self, step: int, trainable, optimizer, state: dict, metrics_path: Path) -> None:
        import torch

        if self.is_main:
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state()
            meta = {k: v for k, v in state.items() if k != "step"}
            ckpt.save_checkpoint(self.checkpoint_dir, step, trainable={n: p for n, p in trainable},
                                 optimizer_state=optimizer.state_dict(), rng=rng, state=meta)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # ---------------------------------------------------------------- outputs
    def _write_outputs(self, model, tokenizer, base_dir: Path, metrics_path: Path, summary: dict, cache_key: str) -> None:
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
        if method.type == "full":
            model.config.use_cache = True
            model.save_pretrained(model_dir, safe_serialization=True)
        else:
            model.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        if method.type != "full" and getattr(method, "merge", False):
            self._write_merged(base_dir, model_dir, tokenizer, out / "merged")
        shutil.copyfile(metrics_path, out / "metrics.jsonl")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        write_manifest(out, self._provenance(tokenizer, cache_key))

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

    def _provenance(self, tokenizer, cache_key: str) -> dict:
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
            "world": {"nodes": cfg.distributed.nodes, "gpusPerNode": cfg.distributed.gpus_per_node},
        }


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
