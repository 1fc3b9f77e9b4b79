"""`init_tiny_model`: a tiny Llama pretrained on general skills, with a byte-level BPE tokenizer
trained locally, a chat template and safetensors weights. Cached: built once per content key.

Why pretrain instead of a random init: a regression gate means something only if the base can do
something a fine-tune may break. This one copies spans, reads values out of its prompt, picks the
first or last word of a list and answers in JSON when asked (`controller.tiny.skills`); the
default regression suite (controller/defaults/regression.jsonl) measures exactly those skills on
prompts it never trained on. It has also read the texts of its domain (support tickets without
their labels, and the corpus it will be served with, `corpus=`), as a pretrained model has.

Why build instead of download: no hub is reachable here, and a model of this size pretrains in
well under a minute on a CPU and fine-tunes on the synthetic task (`controller.tiny.task`) in
seconds, so tests exercise the real trainer, evaluator and server.

The chat template is ChatML-like with a real end-of-turn token (`<|im_end|>`, also the EOS, so
greedy generation stops on it) and `{% generation %}` markers around the assistant content and
its end-of-turn token, so `apply_chat_template(..., return_assistant_tokens_mask=True)` tells the
trainer exactly which tokens to train on, end-of-turn included.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from controller.errors import PermanentError
from controller.tiny import cache as tiny_cache
from controller.tiny.pretrain import PretrainSettings

BOS_TOKEN = "<|bos|>"
END_OF_TURN = "<|im_end|>"
START_OF_TURN = "<|im_start|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, START_OF_TURN, END_OF_TURN)

CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '" + START_OF_TURN + "' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '" + END_OF_TURN + "' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '" + END_OF_TURN + "\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '" + START_OF_TURN + "assistant\\n' }}{%- endif %}"
)

TINY_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    initializer_range=0.05,
)
VOCAB_SIZE = 512
SETTINGS = PretrainSettings()
CORPUS_SUFFIXES = (".md", ".txt", ".rst", ".markdown", ".text")
"""What counts as a document in `corpus=`: the suffixes the server's corpus loader reads."""
TICKET_TEXTS = 2000
"""Support-ticket texts (without labels) in the plain-text pool."""
TEXT_WINDOW = 128
_CODE = ("model.py", "skills.py", "pretrain.py", "cache.py")
"""Modules whose source decides the weights: their bytes are part of the cache key. The ticket
task (controller.tiny.task) enters by the texts it gives (`domain_texts`), so an edit elsewhere
in it (the RAG task) does not force every machine to pretrain again."""


@dataclass(frozen=True)
class Corpus:
    """Documents to pretrain on, as (relative path, text), in a stable order."""

    documents: tuple[tuple[str, str], ...] = ()

    def digest(self) -> str | None:
        if not self.documents:
            return None
        h = hashlib.sha256()
        for rel, text in self.documents:
            h.update(rel.encode() + b"\0" + hashlib.sha256(text.encode()).digest())
        return h.hexdigest()


def read_corpus(path: str | Path | None) -> Corpus:
    """The text documents under `path` (hidden files skipped), or an empty corpus for None."""
    if path is None:
        return Corpus()
    root = Path(path)
    if not root.is_dir():
        raise PermanentError(f"--corpus: '{root}' is not a folder; point it at the corpus directory the model will be served with")
    documents = []
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not file.is_file() or file.suffix.lower() not in CORPUS_SUFFIXES:
            continue
        try:
            documents.append((rel.as_posix(), file.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            raise PermanentError(f"--corpus: {file} is not UTF-8 text ({exc}); convert it or remove it") from None
    if not documents:
        raise PermanentError(f"--corpus: '{root}' has no text documents ({', '.join(CORPUS_SUFFIXES)})")
    return Corpus(tuple(documents))


def build_key(seed: int, corpus: Corpus, settings: PretrainSettings) -> str:
    """sha256 over everything that decides the weights: architecture, vocabulary, template,
    pretraining settings, seed, corpus, the source of the modules that build it and the versions
    of the libraries that compute it."""
    here = Path(__file__).resolve().parent
    payload = {
        "architecture": TINY_CONFIG, "vocabSize": VOCAB_SIZE, "specialTokens": SPECIAL_TOKENS, "chatTemplate": CHAT_TEMPLATE,
        "settings": settings.key(), "seed": seed, "corpus": corpus.digest(),
        "domainTexts": hashlib.sha256(json.dumps(domain_texts(seed)).encode()).hexdigest(), "textWindow": TEXT_WINDOW,
        "code": {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _CODE},
        "libraries": {lib: metadata.version(lib) for lib in ("torch", "transformers", "tokenizers", "safetensors")},
        "python": sys.version_info[:2],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]


def domain_texts(seed: int) -> dict[str, list[str]]:
    """What the support-ticket task gives the build: the texts its tokenizer learns (tickets,
    prompts and answers) and the ticket texts, without labels, the model reads as plain text."""
    from controller.tiny.task import LABELS, corpus_texts, make_ticket

    rng = random.Random(seed + 17)
    return {"tokenizer": corpus_texts(seed), "tickets": [make_ticket(rng.choice(LABELS), rng) for _ in range(TICKET_TEXTS)]}


def build_tokenizer(seed: int = 0, vocab_size: int = VOCAB_SIZE, corpus: Corpus = Corpus()):
    """Train a byte-level BPE on the synthetic task's texts, the skills' texts and the corpus, and
    wrap it as a transformers fast tokenizer with the chat template. Deterministic for a seed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from controller.tiny.skills import pretraining_items

    texts = list(domain_texts(seed)["tokenizer"])
    for item in pretraining_items(600, seed):
        texts.extend(content for _, content in item.messages)
        texts.append(item.answer)
    texts.extend(text for _, text in corpus.documents)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=END_OF_TURN,
        pad_token=PAD_TOKEN,
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def init_tiny_model(out_dir: str | Path, seed: int = 0, *, corpus: str | Path | None = None,
                    steps: int | None = None, cache_dir: str | Path | None = None) -> Path:
    """The pretrained tiny model in `out_dir` (created; its files replaced): `model.safetensors`,
    `config.json`, `generation_config.json` and the tokenizer files with the chat template.
    Same arguments (and code, and library versions) -> byte-identical files. Pretrains at most
    once per key; later calls copy the cached entry (see controller.tiny.cache)."""
    entry = pretrained(seed, corpus=corpus, steps=steps, cache_dir=cache_dir)
    return tiny_cache.copy_out(entry, Path(out_dir))


def pretrained(seed: int = 0, *, corpus: str | Path | None = None, steps: int | None = None,
               cache_dir: str | Path | None = None) -> tiny_cache.Entry:
    """The verified cache entry for these arguments, pretraining it first if it is missing."""
    documents = read_corpus(corpus)
    settings = SETTINGS if steps is None else PretrainSettings(**{**SETTINGS.key(), "steps": steps})
    if settings.steps < 1:
        raise PermanentError(f"--steps: must be at least 1, not {settings.steps}")
    key = build_key(seed, documents, settings)
    return tiny_cache.get_or_build(tiny_cache.cache_root(cache_dir), key,
                                   lambda folder: _build(folder, seed, documents, settings))


def _build(out: Path, seed: int, corpus: Corpus, settings: PretrainSettings) -> dict:
    """Pretrain into `out`; returns what the cache records about the build."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from controller.tiny import pretrain as P
    from controller.tiny.skills import pretraining_items

    started = time.monotonic()
    tokenizer = build_tokenizer(seed, corpus=corpus)
    pieces = P.TemplatePieces.of(tokenizer, START_OF_TURN, END_OF_TURN)
    items = pretraining_items(P.conversations_needed(settings), seed)
    P.check_encoding(tokenizer, _one_per_shape(items), pieces)
    sequences = [P.encode_conversation(tokenizer, item, pieces) for item in items]
    texts = domain_texts(seed)["tickets"] + [text for _, text in corpus.documents]
    windows = [w for text in texts for w in P.encode_text(tokenizer, text, TEXT_WINDOW)]

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        losses = P.pretrain(model, sequences, windows, settings, seed, tokenizer.pad_token_id)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    _save(model, tokenizer, out)
    return {
        "seed": seed, "settings": settings.key(), "corpus": [rel for rel, _ in corpus.documents],
        "finalLoss": round(sum(losses[-20:]) / len(losses[-20:]), 4), "seconds": round(time.monotonic() - started, 1),
    }


def _save(model, tokenizer, out: Path) -> None:
    """Weights (safetensors only) and tokenizer files into `out`."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard tiny model needs no "Writing shards" bar
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out)


def _one_per_shape(items):
    """One item per (skill, number of messages): every way the encoder assembles a prompt."""
    seen: dict[tuple[str, int], object] = {}
    for item in items:
        seen.setdefault((item.skill, len(item.messages)), item)
    return list(seen.values())
