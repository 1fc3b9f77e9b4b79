"""Loading a run's model and generating answers: batched, left-padded, greedy, seeded.

Why these choices:
- Greedy with a fixed seed, so the same run on the same inputs gives the same report (a gate
  decision must be reproducible by an auditor).
- Left padding, so every prompt in a batch ends where generation starts; sorting prompts by
  length before batching keeps padding small, and the original order is restored afterwards.
- The prompt is rendered with the chat template and special tokens recorded in the run's
  manifest, not whatever the tokenizer files say today: the model is judged the way it was
  trained and the way it will be served.
- Weights load through the trainer's rules (`controller.train.loading`): safetensors only,
  `trust_remote_code` never on.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from controller.errors import PermanentError

DEFAULT_SEED = 0


@dataclass
class LoadedModel:
    """A model ready to generate, with the tokenizer that renders its prompts."""

    name: str
    model: Any
    tokenizer: Any
    device: str
    eos_ids: list[int] = field(default_factory=list)


def read_manifest(run_dir: Path) -> dict:
    """The run's manifest (controller.artifacts.read_run_manifest); a run without one is not
    finished and must not be evaluated."""
    from controller.artifacts import read_run_manifest

    return read_run_manifest(run_dir, "wait for training to finish, or point at the run's artifact directory "
                                      "<store>/<spec>/<run-id>/")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _eos_ids(tokenizer, model_dir: Path | None) -> list[int]:
    from controller.train.data import end_of_turn_ids

    gen_eos = None
    if model_dir is not None:
        try:
            gen_eos = json.loads((Path(model_dir) / "generation_config.json").read_text()).get("eos_token_id")
        except (OSError, json.JSONDecodeError):
            gen_eos = None
    return sorted(end_of_turn_ids(tokenizer, gen_eos))


def _apply_recorded_tokens(tokenizer, provenance: dict, run_dir: Path) -> None:
    """Use the chat template and special tokens the run was trained with (from the manifest)."""
    template = provenance.get("chatTemplate")
    if not template:
        raise PermanentError(f"{run_dir}/manifest.json: provenance.chatTemplate is missing; cannot render prompts as trained")
    tokenizer.chat_template = template
    for name, entry in (provenance.get("specialTokens") or {}).items():
        if name == "additional" or not isinstance(entry, dict):
            continue
        token, token_id = entry.get("token"), entry.get("id")
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != token_id:
            raise PermanentError(
                f"{run_dir}/manifest.json: special token {name} {token!r} has id {token_id} in the manifest but {actual} "
                "in the saved tokenizer; the run's tokenizer files do not match what it was trained with"
            )
        setattr(tokenizer, name, token)


def load_run_tokenizer(run_dir: str | Path):
    """The run's tokenizer with the chat template and special tokens it was trained with: what
    renders the served prompts (and measures them against the model's context)."""
    from controller.train.loading import load_tokenizer

    run_dir = Path(run_dir)
    prov = read_manifest(run_dir)["provenance"]
    model_dir = run_dir / "model"
    if not model_dir.is_dir():
        raise PermanentError(f"{run_dir}: no model/ directory although manifest.json exists; the run's artifacts are incomplete")
    _quiet_transformers()
    tokenizer = load_tokenizer(model_dir)
    _apply_recorded_tokens(tokenizer, prov, run_dir)
    return tokenizer


def context_length(run_dir: str | Path) -> int:
    """The model's context window in tokens (max_position_embeddings of the model or its base)."""
    from controller.train.loading import resolve_model_dir

    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    config = model_dir / "config.json"
    if not config.is_file():
        base = read_manifest(run_dir)["provenance"].get("baseModel") or {}
        config = resolve_model_dir(base.get("uri", ""), base.get("revision")) / "config.json"
    try:
        return int(json.loads(config.read_text()).get("max_position_embeddings") or 2048)
    except (OSError, ValueError, TypeError):
        return 2048


def load_run_model(run_dir: str | Path, device: str = "auto") -> LoadedModel:
    """The fine-tuned model of a finished run: base + adapter (LoRA/QLoRA) or the full model.

    The base loads as every server loads it (controller.serve.model for the embedded engine, the
    vLLM pool's rendered flags): unquantized, a QLoRA run's included. QLoRA quantizes the base to
    fit training in memory; its adapter is then served over the full-precision base, and the gate
    must judge the weights users get, not the 4-bit model of the training run."""
    from controller.train.loading import check_safetensors_only, resolve_device, resolve_model_dir

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    prov = manifest["provenance"]
    model_dir = run_dir / "model"
    tokenizer = load_run_tokenizer(run_dir)
    check_safetensors_only(model_dir)
    device = resolve_device(device)
    if (model_dir / "adapter_config.json").is_file():
        base = prov.get("baseModel") or {}
        base_dir = resolve_model_dir(base.get("uri", ""), base.get("revision"))
        model = _load_causal_lm(base_dir, device)
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, model_dir, is_trainable=False)
        except Exception as exc:
            raise PermanentError(f"{model_dir}: cannot load the adapter onto {base_dir}: {type(exc).__name__}: {exc}") from None
        eos_dir = base_dir
    else:
        model = _load_causal_lm(model_dir, device)
        eos_dir = model_dir
    model.eval()
    return LoadedModel("fine-tuned", model, tokenizer, device, _eos_ids(tokenizer, eos_dir))


def load_base_model(run_dir: str | Path, device: str = "auto") -> LoadedModel:
    """The run's base model (from its manifest), with the run's recorded chat template, so base
    and fine-tuned see byte-identical prompts."""
    from controller.train.loading import load_tokenizer, resolve_device, resolve_model_dir

    run_dir = Path(run_dir)
    prov = read_manifest(run_dir)["provenance"]
    base = prov.get("baseModel") or {}
    base_dir = resolve_model_dir(base.get("uri", ""), base.get("revision"))
    _quiet_transformers()
    device = resolve_device(device)
    tokenizer = load_tokenizer(base_dir)
    _apply_recorded_tokens(tokenizer, prov, run_dir)
    model = _load_causal_lm(base_dir, device)
    model.eval()
    return LoadedModel("base", model, tokenizer, device, _eos_ids(tokenizer, base_dir))


def load_local_model(path: str | Path, name: str, device: str = "auto") -> LoadedModel:
    """A reference model from a local directory (its own tokenizer and chat template)."""
    from controller.train.loading import load_tokenizer, resolve_device, resolve_model_dir

    model_dir = resolve_model_dir(str(Path(path).resolve()), None)
    _quiet_transformers()
    device = resolve_device(device)
    tokenizer = load_tokenizer(model_dir)
    model = _load_causal_lm(model_dir, device)
    model.eval()
    return LoadedModel(name, model, tokenizer, device, _eos_ids(tokenizer, model_dir))


def _load_causal_lm(model_dir: Path, device: str):
    """In the dtype the embedded engine serves in on this device (controller.serve.model.engine_dtype:
    bf16 on a CUDA GPU that computes it, as the vLLM pool serves; fp32 elsewhere)."""
    import torch
    from transformers import AutoModelForCausalLM

    from controller.serve.model import engine_dtype

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False, use_safetensors=True,
                                                     dtype=getattr(torch, engine_dtype("auto", device)))
    except Exception as exc:
        raise PermanentError(f"cannot load the model in {model_dir}: {type(exc).__name__}: {exc}") from None
    model.to(device)
    model.config.use_cache = True
    return model


def prompt_messages(messages: Sequence[dict]) -> list[dict]:
    """The conversation up to (not including) its final assistant answer: what the model sees."""
    messages = list(messages)
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    return messages


def render_prompts(tokenizer, conversations: Sequence[Sequence[dict]]) -> list[str]:
    return [
        tokenizer.apply_chat_template(prompt_messages(c), tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]


def generate(
    loaded: LoadedModel,
    conversations: Sequence[Sequence[dict]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    seed: int = DEFAULT_SEED,
    progress: bool | None = None,
    desc: str | None = None,
) -> list[str]:
    """Greedy answers, one per conversation, in input order. `progress=None` shows a bar only on
    an interactive terminal (logs stay clean in a Job)."""
    import torch

    if not conversations:
        return []
    tok = loaded.tokenizer
    prompts = render_prompts(tok, conversations)
    # Templates carry their own BOS; tokenizing without special tokens avoids a double BOS.
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    outputs: list[str | None] = [None] * len(encoded)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (loaded.eos_ids[0] if loaded.eos_ids else 0)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(encoded), desc=desc or loaded.name, unit="ex", file=sys.stderr, dynamic_ncols=True)
    torch.manual_seed(seed)
    try:
        with torch.inference_mode():
            for start in range(0, len(order), max(1, batch_size)):
                idx = order[start : start + max(1, batch_size)]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    seq = encoded[i]
                    ids[r, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                    mask[r, width - len(seq) :] = 1
                out = loaded.model.generate(
                    input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                    do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                    eos_token_id=loaded.eos_ids or None, pad_token_id=pad_id,
                    temperature=None, top_p=None, top_k=None,
                )
                new = out[:, width:].tolist()
                for r, i in enumerate(idx):
                    outputs[i] = tok.decode(new[r], skip_special_tokens=True)
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return [o if o is not None else "" for o in outputs]


def answer_token_budget(tokenizer, answers: Sequence[str], floor: int = 16, cap: int = 512) -> int:
    """max_new_tokens from the reference answers: the longest one plus slack, so a model that
    never stops cannot make evaluation slow, and a right answer is never cut off."""
    longest = max((len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers), default=0)
    return max(floor, min(cap, longest + longest // 2 + 8))
