"""Loading the base model and tokenizer safely, for each method.

- Local directory or `hf://org/name` at a pinned revision. Offline (HF_HUB_OFFLINE=1, the
  default everywhere in ftops) a model missing from the local cache is a clear error at once,
  never a hang on a network timeout.
- Safetensors only: a directory whose weights are only `.bin`/`.pt`/`.pkl`/`.pth` is refused
  before anything is unpickled (pickle runs code), and loading passes `use_safetensors=True`.
- `trust_remote_code` is never on: only architectures shipped with transformers load.
- QLoRA first quantizes one layer and runs it forward and backward (a probe), so an unsupported
  device fails in a second with a clear message instead of deep inside the first step, and never
  silently falls back to unquantized training. After loading, the quantization is read back
  from the model's own layers (`quantization_readback`), checked against the spec, and recorded
  in the manifest: a QLoRA run that did not really train on a 4-bit base cannot finish.
- Precision (controller.train.precision): LoRA and QLoRA load the frozen base in the compute
  dtype, peft keeps the adapters float32; a full fine-tune loads float32 master weights.
- Attention: `sdpa` unless flash-attention is installed on a CUDA device (`resolve_attention`);
  the implementation actually loaded is read back from the model.
- Activation checkpointing: on by default from CHECKPOINTING_MIN_PARAMETERS up, counted from
  the safetensors headers (no weights read).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from controller.errors import PermanentError, TemporaryError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CHECKPOINTING_MIN_PARAMETERS = 1_000_000_000
"""`gradientCheckpointing` unset turns it on from 1B parameters: below that, activations of a
batch of 8 x 2,048 tokens fit beside the model on a 24 GB GPU; above, they dominate memory."""
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}
_HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "*.txt", "*.model", "tokenizer*"]


def resolve_model_dir(uri: str, revision: str | None) -> Path:
    """The local directory holding the base model. Raises PermanentError/TemporaryError with a
    message naming `baseModel.uri` and what to do."""
    if uri.startswith("hf://"):
        return _from_hub(uri, revision)
    path = Path(uri)
    if not path.is_absolute():
        raise PermanentError(f"baseModel.uri: '{uri}' is not an absolute path; run.json paths are absolute on the trainer's machine")
    if not path.is_dir():
        raise PermanentError(f"baseModel.uri: model directory '{uri}' not found; build one with `ftops model init-tiny --out {uri}` or fix the path")
    check_safetensors_only(path)
    return path


def check_safetensors_only(path: Path) -> None:
    """Refuse a model whose weights are not in safetensors (before any file is opened)."""
    names = sorted(p.name for p in path.iterdir() if p.is_file())
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise PermanentError(
            f"baseModel.uri: {path} has weights only as pickle ({', '.join(pickles)}); ftops loads safetensors only, "
            "because unpickling runs arbitrary code. Convert them once in a trusted environment "
            "(load, then `save_pretrained(dir, safe_serialization=True)`) and point baseModel at the result."
        )
    raise PermanentError(f"baseModel.uri: {path} has no *.safetensors weights (files: {', '.join(names) or 'none'})")


def _from_hub(uri: str, revision: str | None) -> Path:
    repo = uri.removeprefix("hf://")
    if not revision:
        raise PermanentError(f"baseModel.revision: {uri} needs a pinned 40-hex commit sha")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        path = Path(
            snapshot_download(repo, revision=revision, allow_patterns=_HUB_PATTERNS, local_files_only=offline)
        )
    except LocalEntryNotFoundError:
        if offline:
            raise PermanentError(
                f"baseModel.uri: {uri}@{revision} is not in the local Hugging Face cache and this machine is offline "
                "(HF_HUB_OFFLINE=1). Pre-fetch it into the cache (or a PVC) where the hub is reachable, "
                "or use a local model directory."
            ) from None
        raise TemporaryError(f"baseModel.uri: could not reach the hub for {uri}@{revision}; will retry") from None
    except Exception as exc:  # network errors, 404s, gated repos
        name = type(exc).__name__
        if "NotFound" in name or "Gated" in name or "Revision" in name:
            raise PermanentError(f"baseModel: {uri}@{revision}: {exc}") from None
        raise TemporaryError(f"baseModel.uri: fetching {uri}@{revision} failed ({name}: {exc}); will retry") from None
    check_safetensors_only(path)
    return path


def load_tokenizer(model_dir: Path):
    """The base model's tokenizer, with its chat template (required: it defines what is trained)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except Exception as exc:
        raise PermanentError(f"baseModel: cannot load the tokenizer from {model_dir}: {exc}") from None
    if not getattr(tok, "chat_template", None):
        raise PermanentError(
            f"baseModel: {model_dir} has no chat template (chat_template.jinja or tokenizer_config.json); "
            "ftops trains chat data and needs the model's own template. Use an instruct/chat model."
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PermanentError("device: 'cuda' was asked for but no CUDA device is visible; set device: auto or cpu")
    return device


def _dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def probe_qlora(quantization: Any, device: str) -> None:
    """Quantize one Linear layer to 4 bit on `device` and run it forward and backward. Any failure
    becomes a PermanentError naming the device and what to use instead."""
    import torch

    try:
        import bitsandbytes as bnb
    except Exception as exc:  # not installed or no native library for this platform
        raise PermanentError(f"method.type qlora: bitsandbytes is not usable here ({exc}); use method.type: lora") from None
    compute = _dtype(quantization.compute_dtype)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            dense = torch.nn.Linear(64, 64, bias=False)
            x = torch.randn(4, 64)
        layer = bnb.nn.Linear4bit(
            64, 64, bias=False, compute_dtype=compute, compress_statistics=quantization.double_quant,
            quant_type=quantization.quant_type,
        )
        layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type=quantization.quant_type)
        layer = layer.to(device)
        inp = x.to(device=device, dtype=compute).requires_grad_(True)
        out = layer(inp)
        out.float().sum().backward()
        expected = dense(x).to(device)
        err = (out.float() - expected).abs().mean() / expected.abs().mean()
        if not torch.isfinite(out).all() or inp.grad is None or err > 0.25:
            raise RuntimeError(f"4-bit layer output is wrong (relative error {float(err):.2f})")
    except PermanentError:
        raise
    except Exception as exc:
        raise PermanentError(
            f"method.type qlora: 4-bit {quantization.quant_type} quantization with compute dtype "
            f"{quantization.compute_dtype} does not work on device '{device}' ({type(exc).__name__}: {exc}). "
            "Use method.type: lora, another method.quantization.computeDtype (float32 on CPU), or a CUDA GPU."
        ) from None


def base_parameter_count(model_dir: Path) -> tuple[int, int]:
    """(parameters, bytes) of the base model's weights, from the safetensors headers alone."""
    import json
    import struct

    count = size = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for dim in entry["shape"]:
                n *= dim
            count += n
            size += n * _DTYPE_BYTES.get(entry["dtype"], 4)
    return count, size


def wants_checkpointing(setting: bool | None, parameters: int) -> bool:
    """Pure: explicit true/false wins; unset means on from CHECKPOINTING_MIN_PARAMETERS."""
    return setting if setting is not None else parameters >= CHECKPOINTING_MIN_PARAMETERS


def flash_attention_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("flash_attn") is not None


def resolve_attention(requested: str, device: str) -> str:
    """The attention implementation to load. flash_attention_2 runs packed rows as varlen
    sequences (cu_seqlens from the restarting position ids), so no example attends to another
    and no padding is computed; sdpa gets the same isolation from a block-diagonal mask."""
    on_cuda = device.startswith("cuda")
    if requested == "auto":
        return "flash_attention_2" if on_cuda and flash_attention_installed() else "sdpa"
    if requested == "flash_attention_2" and not (on_cuda and flash_attention_installed()):
        raise PermanentError(
            "training.attention: flash_attention_2 needs a CUDA GPU and the flash-attn package in the trainer image "
            f"(device here: {device}, flash-attn installed: {flash_attention_installed()}); use attention: auto or sdpa"
        )
    return requested


def load_model(model_dir: Path, method: Any, device: str, *, dtype: Any, gradient_checkpointing: bool,
               attention: str = "sdpa"):
    """The model ready to train: full (all parameters, float32 master weights), LoRA (base in
    `dtype`, adapters float32), or QLoRA (4-bit base computing in `dtype` + LoRA)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(trust_remote_code=False, use_safetensors=True, attn_implementation=attention)
    if method.type == "qlora":
        from transformers import BitsAndBytesConfig

        probe_qlora(method.quantization, device)
        q = method.quantization
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=_dtype(q.compute_dtype),
        )
        kwargs["device_map"] = {"": device}
        kwargs["dtype"] = _dtype(q.compute_dtype)
    else:
        kwargs["dtype"] = torch.float32 if method.type == "full" else dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except PermanentError:
        raise
    except Exception as exc:
        raise PermanentError(f"baseModel: cannot load {model_dir} for method {method.type}: {type(exc).__name__}: {exc}") from None
    if method.type != "qlora":
        model.to(device)
    model.config.use_cache = False
    if method.type == "full":
        if gradient_checkpointing:
            _enable_checkpointing(model)
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        _enable_checkpointing(model)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in method.target_modules if m not in present]
    if missing:
        raise PermanentError(
            f"method.targetModules: {', '.join(missing)} not found in {model_dir}; "
            f"linear layers there include {', '.join(sorted(n for n in present if n.endswith('_proj'))) or 'none'}"
        )
    config = LoraConfig(
        r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout,
        target_modules=list(method.target_modules), task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype: adapters on a half-precision base are float32 (the master weights)
    return get_peft_model(model, config, autocast_adapter_dtype=True)


def attention_implementation(model) -> str:
    """The attention implementation the loaded model really uses (read from its config)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(base.config, "_attn_implementation", None) or "unknown")


def checkpointing_enabled(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    flag = getattr(type(base), "is_activation_checkpointing", None)  # transformers >= 5 name
    return bool(base.is_activation_checkpointing if flag is not None else getattr(base, "is_gradient_checkpointing", False))


def quantization_readback(model) -> dict[str, Any] | None:
    """What the loaded model's layers really are: how many base linear layers are bitsandbytes
    Linear4bit with Params4bit weights, their quant type, compute dtype, double quantization and
    block size, and how many stayed dense. None when nothing is quantized."""
    try:
        import bitsandbytes as bnb
    except Exception:  # not installed: nothing can be 4-bit
        return None
    import torch

    quantized, dense = [], 0
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            state = getattr(weight, "quant_state", None)
            quantized.append({
                "params4bit": isinstance(weight, bnb.nn.Params4bit),
                "quantType": getattr(weight, "quant_type", None),
                "computeDtype": str(module.compute_dtype).removeprefix("torch.") if module.compute_dtype else None,
                "doubleQuant": bool(getattr(state, "nested", False)),
                "blocksize": getattr(state, "blocksize", None),
                "storage": str(weight.dtype).removeprefix("torch."),
            })
        elif isinstance(module, torch.nn.Linear) and ".lora_" not in name and not name.endswith("lm_head"):
            dense += 1
    if not quantized:
        return None

    def one(key: str) -> Any:
        values = sorted({str(q[key]) for q in quantized})
        return values[0] if len(values) == 1 else values

    return {
        "linear4bit": len(quantized), "denseLinear": dense, "params4bit": all(q["params4bit"] for q in quantized),
        "quantType": one("quantType"), "computeDtype": one("computeDtype"), "doubleQuant": one("doubleQuant"),
        "blocksize": one("blocksize"), "storage": one("storage"),
    }


def check_quantization(readback: dict[str, Any] | None, quantization: Any) -> None:
    """A QLoRA model whose base is not what the spec asked for never trains."""
    expected = {"quantType": quantization.quant_type, "computeDtype": quantization.compute_dtype,
                "doubleQuant": str(quantization.double_quant), "params4bit": True}
    if readback is None or readback["linear4bit"] == 0:
        raise PermanentError("method.type qlora: the loaded base has no 4-bit layers; refusing to train it unquantized")
    wrong = {k: (readback.get(k), v) for k, v in expected.items() if readback.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: got {got}, want {want}" for k, (got, want) in wrong.items())
        raise PermanentError(f"method.quantization: the loaded base is not quantized as configured ({detail})")


def enable_fused_cross_entropy(model, device: str) -> None:
    """Patch the model with liger-kernel's fused linear + cross-entropy (CUDA, Triton)."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except Exception as exc:
        raise PermanentError(
            f"training.fusedCrossEntropy: liger-kernel is not usable here ({type(exc).__name__}: {exc}); "
            "install liger-kernel in the trainer image or set fusedCrossEntropy: false"
        ) from None
    if not device.startswith("cuda"):
        raise PermanentError("training.fusedCrossEntropy: liger-kernel runs on CUDA GPUs only; set fusedCrossEntropy: false")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(model=base, fused_linear_cross_entropy=True, cross_entropy=False, rope=False,
                                    rms_norm=False, swiglu=False)


def _enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing (works with frozen inputs, i.e. LoRA, without hooks)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
