"""Loading a finished run for serving: base model + adapter (or the full model), with exactly the
chat template and special tokens recorded in the run's manifest (train/serve parity).

Why the manifest and not the tokenizer files alone: the manifest is what the trainer trained
with, written last and atomically; files beside it can be edited or half-copied. So:

* no manifest.json -> the run is not finished -> refuse;
* every file under model/ must match its sha256 in the manifest -> a tampered or truncated
  adapter is refused before it is loaded (this is also what makes a broken rollout fail
  readiness instead of serving garbage);
* the tokenizer's chat template is set to the manifest's `chatTemplate`, and its special tokens
  must have the manifest's ids, or loading fails with the difference named.

Weights load through the trainer's loader rules: safetensors only, trust_remote_code off
(controller.train.loading). The engine (controller.serve.engine) keeps the base unmerged and
serves each run's LoRA adapter over it, several at once, loaded and unloaded at runtime.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.errors import PermanentError
from controller.fsutil import sha256_file


def read_manifest(run_dir: Path) -> dict:
    """The run's manifest (controller.artifacts.read_run_manifest); a run without one is not
    finished and is not served."""
    from controller.artifacts import read_run_manifest

    return read_run_manifest(run_dir, "serve a finished run")


def verify_model_files(run_dir: Path, manifest: dict) -> None:
    """Every model/ file listed in the manifest exists with the recorded sha256."""
    files = {k: v for k, v in (manifest.get("files") or {}).items() if k.startswith("model/")}
    if not files:
        raise PermanentError(f"{run_dir}/manifest.json lists no model/ files; the run has no model to serve")
    for rel, meta in sorted(files.items()):
        path = run_dir / rel
        if not path.is_file():
            raise PermanentError(f"{run_dir}: {rel} is listed in the manifest but missing")
        got = sha256_file(path)
        if got != meta.get("sha256"):
            raise PermanentError(f"{run_dir}: {rel} has sha256 {got[:12]}…, the manifest records "
                                 f"{str(meta.get('sha256'))[:12]}…; the artifact changed after training, refusing to serve it")


def check_special_tokens(tokenizer, recorded: dict) -> None:
    problems = []
    for name, want in (recorded or {}).items():
        if name == "additional":
            have = [str(t) for t in (getattr(tokenizer, "additional_special_tokens", None) or [])]
            if list(want) != have:
                problems.append(f"additional special tokens {have} != {list(want)}")
            continue
        tok = getattr(tokenizer, name, None)
        tid = tokenizer.convert_tokens_to_ids(str(tok)) if tok is not None else None
        if tok is None or str(tok) != want.get("token") or tid != want.get("id"):
            problems.append(f"{name} is {tok!r} (id {tid}), manifest records {want.get('token')!r} (id {want.get('id')})")
    if problems:
        raise PermanentError("tokenizer does not match the run's manifest: " + "; ".join(problems))


# ---------------------------------------------------------------------- the engine's loading
# The embedded engine (controller.serve.engine) keeps the base model unmerged and serves several
# LoRA adapters over it (peft multi-adapter), loaded and unloaded at runtime, so it loads the two
# halves separately: `load_engine_base` once per process, `open_run` per adapter.

@dataclass(frozen=True)
class RunFiles:
    """A finished run on disk, its model/ files verified against its manifest."""

    run_dir: Path
    manifest: dict

    @property
    def run_id(self) -> str:
        return str(self.manifest["runId"])

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    @property
    def is_adapter(self) -> bool:
        return (self.model_dir / "adapter_config.json").is_file()

    @property
    def provenance(self) -> dict:
        return self.manifest.get("provenance") or {}

    @property
    def chat_template(self) -> str:
        template = self.provenance.get("chatTemplate")
        if not template:
            raise PermanentError(f"{self.run_dir}/manifest.json records no chatTemplate; cannot guarantee train/serve parity")
        return str(template)

    def base_dir(self, base_uri: str | None = None, base_revision: str | None = None) -> Path:
        """The base model's directory on this machine: `base_uri` when given (the serving config's),
        else the one the manifest records."""
        from controller.train.loading import resolve_model_dir

        base = self.provenance.get("baseModel") or {}
        return resolve_model_dir(base_uri or base.get("uri", ""), base_revision if base_uri else base.get("revision"))


def open_run(path: str | Path) -> RunFiles:
    """The run at `path` (the run directory, or its model/ folder as vLLM's lora_path names it),
    refused unless it finished (manifest) and its model files are the ones trained."""
    path = Path(path)
    run_dir = path.parent if path.name == "model" and not (path / "manifest.json").is_file() else path
    manifest = read_manifest(run_dir)
    verify_model_files(run_dir, manifest)
    from controller.train.loading import check_safetensors_only

    check_safetensors_only(run_dir / "model")
    return RunFiles(run_dir, manifest)


@dataclass
class EngineBase:
    """The base model as the engine serves it: unmerged, in `dtype`, with the run's chat template."""

    model: Any
    tokenizer: Any
    eos_ids: list[int]
    pad_id: int
    device: str
    dtype: str
    max_positions: int
    model_dir: Path


def engine_dtype(requested: str, device: str) -> str:
    """bf16 where the device computes it natively (a CUDA GPU with bf16), fp32 elsewhere unless
    asked: on a CPU bf16 matmuls are emulated for most kernels and slower than fp32."""
    import torch

    if requested in ("bfloat16", "bf16"):
        return "bfloat16"
    if requested in ("float16", "fp16"):
        return "float16"
    if requested in ("float32", "fp32"):
        return "float32"
    if requested != "auto":
        raise PermanentError(f"dtype '{requested}' must be auto, bf16, fp16 or fp32")
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def eos_ids(tokenizer: Any, provenance: dict, gen_dir: Path) -> list[int]:
    """End-of-turn ids: the manifest's eos token and the model's generation_config ones."""
    eos: set[int] = set()
    recorded = (provenance.get("specialTokens") or {}).get("eos_token") or {}
    if isinstance(recorded.get("id"), int):
        eos.add(recorded["id"])
    try:
        gen_eos = json.loads((gen_dir / "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, json.JSONDecodeError):
        gen_eos = None
    if isinstance(gen_eos, int):
        eos.add(gen_eos)
    elif isinstance(gen_eos, list):
        eos.update(int(i) for i in gen_eos)
    if not eos and tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    if not eos:
        raise PermanentError(f"{gen_dir}: no end-of-turn token recorded; generation would never stop")
    return sorted(eos)


def load_engine_base(model_dir: Path, run: RunFiles | None, device: str = "cpu", dtype: str = "auto") -> EngineBase:
    """Load the model the engine serves from `model_dir` (a base for adapters, or a full run's
    model/), with `run`'s recorded chat template and special tokens (train/serve parity)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from controller.train.loading import check_safetensors_only, load_tokenizer, resolve_device

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    device = resolve_device(device)
    dtype = engine_dtype(dtype, device)
    check_safetensors_only(model_dir)
    tokenizer = load_tokenizer(run.model_dir if run is not None else model_dir)
    provenance = run.provenance if run is not None else {}
    if run is not None:
        tokenizer.chat_template = run.chat_template
        check_special_tokens(tokenizer, provenance.get("specialTokens") or {})
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False, use_safetensors=True,
                                                     dtype=getattr(torch, dtype))
    except Exception as exc:
        raise PermanentError(f"{model_dir}: cannot load the model: {type(exc).__name__}: {exc}") from None
    model.to(device).eval()
    model.config.use_cache = True
    eos = eos_ids(tokenizer, provenance, model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    max_pos = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    return EngineBase(model, tokenizer, eos, int(pad), device, dtype, max_pos, model_dir)
