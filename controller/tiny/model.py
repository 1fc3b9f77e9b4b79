"""`init_tiny_model`: a tiny Llama (hidden 64, 2 layers) with a byte-level BPE tokenizer trained
locally, a chat template and safetensors weights, built in about a second.

Why build instead of download: no hub is reachable here, and a model of this size trains to
100% on the synthetic task (`controller.tiny.task`) in seconds on a CPU, so tests exercise the
real trainer, evaluator and server. The tokenizer is byte-level, so any text round-trips.

The chat template is ChatML-like with a real end-of-turn token (`<|im_end|>`, also the EOS, so
greedy generation stops on it) and `{% generation %}` markers around the assistant content and
its end-of-turn token, so `apply_chat_template(..., return_assistant_tokens_mask=True)` tells the
trainer exactly which tokens to train on, end-of-turn included.
"""
from __future__ import annotations

from pathlib import Path

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
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    # Measured: with transformers' default std 0.02 a 64-wide model keeps near-uniform attention and
    # the label token stays at chance for 500+ steps; std 0.1 learns the task in about 2 epochs.
    initializer_range=0.1,
)
VOCAB_SIZE = 400
EMBEDDING_STD = 0.5


def build_tokenizer(seed: int = 0, vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE on the synthetic task's texts and wrap it as a transformers fast
    tokenizer with the chat template. Deterministic for a seed (same corpus, same merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from controller.tiny.task import corpus_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=END_OF_TURN,
        pad_token=PAD_TOKEN,
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def init_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny model into `out_dir` (created) and return it. Writes `model.safetensors`,
    `config.json`, `generation_config.json` and the tokenizer files with the chat template.
    Same seed -> same weights and tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed)
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
        # Tied embeddings double as the output layer. At std 0.1 their rows are so short that
        # even a perfectly aligned hidden state gives logits too small for a confident token, and
        # LoRA (which cannot touch them) plateaus at ~1 nat per token (measured). Longer rows
        # give the frozen output layer the range a real pretrained model has.
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=EMBEDDING_STD)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard tiny model needs no "Writing shards" bar
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out)
    return out
