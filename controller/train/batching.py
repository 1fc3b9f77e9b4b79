"""The batch plan: which examples make up each optimizer step, as a pure function of the seed.

Exact resume depends on this: the plan for step N is recomputed from (seed, data, sizes), so a
restarted run skips straight to the first step not yet trained, never retraining or skipping one.

Packing concatenates several examples into one row up to maxSeqLength. Position ids restart at
0 for every example, which transformers turns into a block-diagonal attention mask (and
flash-attention into varlen kernels), so no example attends to another; the first token of each
packed example is also never a target of the previous one's last token.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Plan:
    steps: list[list[list[list[int]]]]  # step -> micro-batch -> row -> example indices
    total_steps: int
    steps_per_epoch: list[int]

    def epoch_of(self, step: int) -> float:
        """Fractional epoch reached after `step` optimizer steps."""
        done, epoch = step, 0
        for n in self.steps_per_epoch:
            if done <= n:
                return epoch + (done / n if n else 0.0)
            done -= n
            epoch += 1
        return float(epoch)


def _rows(order: list[int], lengths: list[int], packing: bool, max_length: int) -> list[list[int]]:
    if not packing:
        return [[i] for i in order]
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if current and used + lengths[i] > max_length:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        rows.append(current)
    return rows


def build_plan(
    lengths: list[int], *, epochs: float, batch_size: int, gradient_accumulation: int, packing: bool,
    max_length: int, seed: int,
) -> Plan:
    """Every optimizer step of the run. Each epoch is a fresh seeded shuffle; a fractional final
    epoch trains the first ceil(fraction * steps) steps of that epoch."""
    n_epochs = math.ceil(epochs)
    steps: list = []
    per_epoch: list[int] = []
    total = 0
    for epoch in range(n_epochs):
        order = list(range(len(lengths)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        rows = _rows(order, lengths, packing, max_length)
        micro = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        epoch_steps = [micro[i : i + gradient_accumulation] for i in range(0, len(micro), gradient_accumulation)]
        per_epoch.append(len(epoch_steps))
        fraction = epochs - epoch
        take = len(epoch_steps) if fraction >= 1 else math.ceil(fraction * len(epoch_steps))
        steps.extend(epoch_steps[:take])
        total += take
    return Plan(steps=steps, total_steps=total, steps_per_epoch=per_epoch)


def collate(rows: list[list[int]], input_ids: list[list[int]], labels: list[list[int]], pad_id: int, packing: bool):
    """Tensors for one micro-batch: (input_ids, labels, attention_mask | None, position_ids | None).
    Labels are already aligned so that position t predicts labels[t] from tokens <= t-1 after the
    usual shift: the trainer compares logits[:, :-1] with labels[:, 1:]."""
    import torch

    seqs, labs, poss = [], [], []
    for row in rows:
        ids: list[int] = []
        lab: list[int] = []
        pos: list[int] = []
        for i in row:
            ids.extend(input_ids[i])
            example_labels = list(labels[i])
            example_labels[0] = IGNORE_INDEX  # never predicted from the previous packed example
            lab.extend(example_labels)
            pos.extend(range(len(input_ids[i])))
        seqs.append(ids)
        labs.append(lab)
        poss.append(pos)
    width = max(len(s) for s in seqs)
    ids_t = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    lab_t = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    if packing:
        pos_t = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, (s, lab, pos) in enumerate(zip(seqs, labs, poss)):
            ids_t[r, : len(s)] = torch.tensor(s)
            lab_t[r, : len(s)] = torch.tensor(lab)
            pos_t[r, : len(s)] = torch.tensor(pos)
            pos_t[r, len(s) :] = torch.arange(width - len(s))  # padding is its own segment
        return ids_t, lab_t, None, pos_t
    mask_t = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (s, lab) in enumerate(zip(seqs, labs)):
        ids_t[r, : len(s)] = torch.tensor(s)
        lab_t[r, : len(s)] = torch.tensor(lab)
        mask_t[r, : len(s)] = 1
    return ids_t, lab_t, mask_t, None


CALL_OVERHEAD_TOKENS = 256
"""The price of one more forward and backward pass, in padded tokens, that `split_by_length`
weighs against the padding a split saves. A chosen value, not a tuned one: a split must save more
than 256 padded tokens, so micro-batches of similar lengths stay whole and groups stay few.
bench/bench_train.py measures what the split gains."""


MAX_CUTS = 256
"""At most this many places where `split_by_length` may end a group (see there)."""


def split_by_length(rows: list[list[int]], input_ids: list[list[int]],
                    overhead: int = CALL_OVERHEAD_TOKENS) -> list[list[list[int]]]:
    """One micro-batch's rows as sub-batches of similar length, computed one after another.

    Why: a micro-batch is padded to its longest row, so a step that mixes a few long examples
    with many short ones (a RAFT prompt with retrieved articles among replayed two-line
    conversations) computes mostly padding. Computing the short rows apart gives the same
    gradient: the step's loss is a sum over target tokens divided by the step's target count
    (`Trainer._train_step`), whatever the grouping. The plan (which examples make up a step)
    is untouched, so resume and the batch plan stay exact.

    The split minimises padded tokens plus `overhead` per sub-batch, over groups of consecutive
    rows in order of length: an exact dynamic programme over the places a group may end, every
    row for a micro-batch of up to `MAX_CUTS` rows, every ceil(n / MAX_CUTS)-th row above (the
    spec allows 4,096 rows, and the programme is quadratic in its cut places). A sub-batch never
    has more rows or a longer row than the micro-batch, so peak memory does not grow."""
    if len(rows) < 2:
        return [rows]
    width = [sum(len(input_ids[i]) for i in row) for row in rows]
    order = sorted(range(len(rows)), key=lambda r: -width[r])
    n = len(order)
    every = -(-n // MAX_CUTS)
    cuts = [*range(0, n, every), n]  # where a group may start or end, in length order
    best = [0.0] + [float("inf")] * (len(cuts) - 1)
    back = [0] * len(cuts)
    for j in range(1, len(cuts)):
        for i in range(j):
            cost = best[i] + (cuts[j] - cuts[i]) * width[order[cuts[i]]] + overhead
            if cost < best[j]:
                best[j], back[j] = cost, i
    groups: list[list[list[int]]] = []
    j = len(cuts) - 1
    while j > 0:
        groups.append([rows[r] for r in order[cuts[back[j]]:cuts[j]]])
        j = back[j]
    return groups[::-1]


def real_tokens(rows: list[list[int]], input_ids: list[list[int]]) -> int:
    return sum(len(input_ids[i]) for row in rows for i in row)
