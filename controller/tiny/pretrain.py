"""Pretraining the tiny model: a few hundred AdamW steps over skill conversations and plain text.

Why a loop of its own rather than `controller.train`: that trainer fine-tunes a base model from a
run.json (checkpoints, manifests, LoRA) and sits above this package; pretraining is one
deterministic function of (model, data, settings) that runs in a single process, one thread.

What it trains on, mixed in one shuffled stream:
- skill conversations (`controller.tiny.skills`) rendered with the model's chat template, the
  loss on the assistant tokens and their end-of-turn only (as the trainer's assistant-only loss);
- plain text (support-ticket texts without their labels, and the corpus it will be served with),
  the loss on every token: a base model has read the words of its domain, so a fine-tune starts
  from representations of them rather than from untrained rows.

Determinism: the weights are a function of the inputs. Initialisation and batches are seeded,
torch runs on one intra-op thread while pretraining (a different split of a matrix product over
threads changes the last bits of a sum), and nothing depends on wall time.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from controller.tiny.skills import SkillItem

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PretrainSettings:
    """Everything about the optimisation that decides the weights (part of the cache key)."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    text_share: float = 0.125
    """Share of the steps that train on plain text rather than skill conversations."""

    def key(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TemplatePieces:
    """The token ids the chat template puts around messages (see controller.tiny.model)."""

    bos: int
    start: int
    end: int
    newline: tuple[int, ...]
    assistant: tuple[int, ...]
    """`assistant\n` after the start-of-turn token: where the answer begins."""

    @classmethod
    def of(cls, tokenizer: Any, start: str, end: str) -> "TemplatePieces":
        return cls(tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids(start), tokenizer.convert_tokens_to_ids(end),
                   tuple(tokenizer("\n", add_special_tokens=False)["input_ids"]),
                   tuple(tokenizer("assistant\n", add_special_tokens=False)["input_ids"]))


def encode_conversation(tokenizer: Any, item: SkillItem, pieces: TemplatePieces) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation, assembled from the template's pieces (fast: one
    tokenizer call per message instead of one template render per example). `check_encoding`
    holds this to `apply_chat_template` so the two cannot drift apart."""
    ids = [pieces.bos]
    for role, content in item.messages:
        ids += [pieces.start, *tokenizer(f"{role}\n{content}", add_special_tokens=False)["input_ids"], pieces.end, *pieces.newline]
    ids += [pieces.start, *pieces.assistant]
    answer = [*tokenizer(item.answer, add_special_tokens=False)["input_ids"], pieces.end]
    labels = [IGNORE_INDEX] * len(ids) + answer + [IGNORE_INDEX] * len(pieces.newline)
    return ids + answer + list(pieces.newline), labels


def check_encoding(tokenizer: Any, items: Sequence[SkillItem], pieces: TemplatePieces) -> None:
    """The assembled ids and labels equal the chat template's, with its assistant mask."""
    for item in items:
        chat = [*item.chat, {"role": "assistant", "content": item.answer}]
        enc = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        expected_labels = [t if m else IGNORE_INDEX for t, m in zip(enc["input_ids"], enc["assistant_masks"])]
        ids, labels = encode_conversation(tokenizer, item, pieces)
        if ids != list(enc["input_ids"]) or labels != expected_labels:
            raise AssertionError(f"pretraining encodes {item.skill} items differently from the chat template")


def encode_text(tokenizer: Any, text: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """A plain text as BOS-led windows of at most `max_length` tokens, every token a target."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = []
    for start in range(0, max(1, len(ids)), max_length - 1):
        window = [tokenizer.bos_token_id, *ids[start : start + max_length - 1]]
        if len(window) > 1:
            out.append((window, [IGNORE_INDEX, *window[1:]]))
    return out


def conversations_needed(settings: PretrainSettings) -> int:
    """How many skill conversations `settings.steps` steps draw (each is seen once)."""
    return (settings.steps - round(settings.steps * settings.text_share)) * settings.batch_size


def make_batches(n_conversations: int, n_texts: int, settings: PretrainSettings, seed: int) -> list[tuple[str, list[int]]]:
    """The step plan: (kind, row indices) per step. Conversations are seen once each in a seeded
    order, text windows drawn with replacement, and a step holds one kind: texts are longer
    (up to 128 tokens against 20-60), and a padded token costs as much as a real one (measured:
    mixed batches spent ~30% of the compute on padding). Conversations are not sorted by length:
    batches of similar lengths are batches of one skill, and learned half as well (measured)."""
    rng = random.Random(seed)
    n_text_steps = round(settings.steps * settings.text_share) if n_texts else 0
    needed = (settings.steps - n_text_steps) * settings.batch_size
    if needed > n_conversations:
        raise ValueError(f"{n_conversations} conversations are fewer than the {needed} the steps need")
    order = list(range(n_conversations))[:needed]
    rng.shuffle(order)
    conv_batches = [("conversations", order[j : j + settings.batch_size]) for j in range(0, needed, settings.batch_size)]
    text_batches = [("texts", [rng.randrange(n_texts) for _ in range(settings.batch_size)]) for _ in range(n_text_steps)]
    plan = conv_batches + text_batches
    rng.shuffle(plan)
    return plan


def pretrain(model: Any, sequences: Sequence[tuple[list[int], list[int]]], texts: Sequence[tuple[list[int], list[int]]],
             settings: PretrainSettings, seed: int, pad_id: int,
             on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `model` in place for `settings.steps` steps; returns the loss of every step.
    Batches draw conversations in a seeded order and, for `text_share` of each batch, text
    windows; warmup then cosine decay to zero."""
    import torch

    batches = make_batches(len(sequences), len(texts), settings, seed)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decay: list[Any] = []
        no_decay: list[Any] = []
        for name, param in model.named_parameters():
            (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=settings.learning_rate, betas=(0.9, 0.98), eps=1e-8,
        )

        def lr_factor(step: int) -> float:
            warm = min(1.0, (step + 1) / max(1, settings.warmup_steps))
            return warm * 0.5 * (1.0 + math.cos(math.pi * step / settings.steps))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        model.train()
        losses: list[float] = []
        for step, (kind, rows) in enumerate(batches):
            batch = [(sequences if kind == "conversations" else texts)[i] for i in rows]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, labs) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                labels[row, : len(labs)] = torch.tensor(labs)
                mask[row, : len(ids)] = 1
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step + 1, losses[-1])
        model.eval()
        return losses
    finally:
        torch.set_num_threads(threads)
