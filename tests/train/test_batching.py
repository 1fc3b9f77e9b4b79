"""The batch plan (a pure function of the seed, the basis of exact resume) and packing without
contamination between packed examples."""
from __future__ import annotations

import pytest

from controller.train.batching import IGNORE_INDEX, build_plan, collate


def _plan(**kw):
    args = dict(epochs=2, batch_size=4, gradient_accumulation=2, packing=False, max_length=64, seed=7)
    args.update(kw)
    return build_plan([10 + (i * 7) % 30 for i in range(50)], **args)


def test_plan_is_deterministic_and_covers_each_example_once_per_epoch() -> None:
    plan = _plan()
    assert plan == _plan() and plan.steps != _plan(seed=8).steps
    assert plan.steps_per_epoch == [7, 7] and plan.total_steps == 14  # 50 rows / 4 -> 13 micro / 2 -> 7
    for epoch in range(2):
        seen = [i for step in plan.steps[epoch * 7:(epoch + 1) * 7] for micro in step for row in micro for i in row]
        assert sorted(seen) == list(range(50))


def test_fractional_epochs_round_steps_up() -> None:
    plan = _plan(epochs=1.5)
    assert plan.total_steps == 7 + 4 and plan.epoch_of(11) == pytest.approx(1 + 4 / 7)


def test_packing_fills_rows_up_to_max_length() -> None:
    lengths = [10 + (i * 7) % 30 for i in range(50)]
    plan = build_plan(lengths, epochs=1, batch_size=4, gradient_accumulation=1, packing=True, max_length=64, seed=7)
    rows = [row for step in plan.steps for micro in step for row in micro]
    assert sorted(i for row in rows for i in row) == list(range(50))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) < 50


def test_collate_packed_resets_positions_and_never_targets_across_examples() -> None:
    ids = [[5, 6, 7], [8, 9]]
    labels = [[IGNORE_INDEX, 6, 7], [8, 9]]
    x, y, mask, pos = collate([[0, 1], [1]], ids, labels, pad_id=0, packing=True)
    assert mask is None
    assert x.tolist() == [[5, 6, 7, 8, 9], [8, 9, 0, 0, 0]]
    assert pos.tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    # the first token of each packed example is never predicted from the previous example
    assert y.tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9], [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]


def test_packed_examples_do_not_attend_to_each_other(tiny_model) -> None:
    """Logits of each example inside a packed row equal its logits alone: no cross-contamination."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).train()  # training mode, as in the loop
    torch.manual_seed(0)
    a, b = torch.randint(4, 390, (9,)).tolist(), torch.randint(4, 390, (6,)).tolist()
    x, _, _, pos = collate([[0, 1]], [a, b], [a, b], pad_id=0, packing=True)
    with torch.no_grad():
        packed = model(input_ids=x, position_ids=pos, use_cache=False).logits[0]
        alone_a = model(input_ids=torch.tensor([a]), use_cache=False).logits[0]
        alone_b = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
    torch.testing.assert_close(packed[:9], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[9:], alone_b, atol=1e-5, rtol=1e-5)


def test_split_by_length_computes_short_rows_apart_and_keeps_every_row_once() -> None:
    from controller.train.batching import split_by_length

    ids = [[1] * n for n in (300, 40, 35, 310, 30, 45, 280, 38)]
    rows = [[i] for i in range(len(ids))]
    groups = split_by_length(rows, ids, overhead=256)
    assert sorted(r for g in groups for r in g) == sorted(rows)
    widths = [sorted(len(ids[i]) for row in g for i in row) for g in groups]
    assert widths == [[280, 300, 310], [30, 35, 38, 40, 45]]  # the long three, then the short five
    padded = sum(len(g) * max(len(ids[i]) for row in g for i in row) for g in groups)
    assert padded + 256 * len(groups) < len(rows) * 310 + 256  # cheaper than one padded pass


def test_split_by_length_keeps_rows_of_similar_length_together() -> None:
    from controller.train.batching import split_by_length

    ids = [[1] * n for n in (100, 96, 98, 101)]
    rows = [[i] for i in range(4)]
    assert split_by_length(rows, ids, overhead=256) == [[[3], [0], [2], [1]]]  # one pass, longest first
    assert split_by_length([[0]], ids) == [[[0]]]


def test_split_by_length_of_a_micro_batch_larger_than_its_cut_places_keeps_every_row_once() -> None:
    from controller.train.batching import MAX_CUTS, split_by_length

    ids = [[1] * (400 if i % 10 == 0 else 20 + i % 7) for i in range(4 * MAX_CUTS + 3)]
    rows = [[i] for i in range(len(ids))]
    groups = split_by_length(rows, ids)
    assert sorted(r for g in groups for r in g) == rows
    assert len(groups) >= 2 and max(len(ids[g[0][0]]) for g in groups[1:]) < 400  # the long rows apart


def test_a_split_step_has_the_gradient_of_one_padded_pass(tiny_model) -> None:
    """The trainer's loss is summed over target tokens and divided by the step's target count, so
    computing a micro-batch's short rows apart from its long ones changes nothing but padding."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from controller.train.batching import split_by_length

    model = AutoModelForCausalLM.from_pretrained(tiny_model).train()  # training mode, as in the loop
    lengths = (60, 9, 11, 57, 8)
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 100, (n,), generator=gen).tolist() for n in lengths]
    labels = [[IGNORE_INDEX] * 3 + x[3:] for x in ids]
    rows = [[i] for i in range(len(ids))]
    count = sum(1 for lab in labels for t in lab[1:] if t != IGNORE_INDEX)  # the step's targets, as the trainer counts

    def gradient(groups) -> list:
        model.zero_grad()
        for group in groups:
            x, y, mask, _ = collate(group, ids, labels, pad_id=0, packing=False)
            logits = model(input_ids=x, attention_mask=mask).logits.float()
            target = F.pad(y[:, 1:], (0, 1), value=IGNORE_INDEX)
            (F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX,
                             reduction="sum") / count).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    split = split_by_length(rows, ids, overhead=16)
    assert len(split) == 2
    for a, b in zip(gradient([rows]), gradient(split)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_loss_over_the_target_positions_alone_is_the_loss_over_every_position(tiny_model) -> None:
    """The trainer projects only the positions that have a target onto the vocabulary
    (`logits_to_keep`): the loss and the gradient of a padded, partly masked micro-batch are the
    ones the full logits give. A mask shifted by one token, or positions of one row applied to
    another, would change both."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from controller.train.trainer import _target_cross_entropy, computes_target_logits_only, loss_targets

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).train()
    assert computes_target_logits_only(model)
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 100, (n,), generator=gen).tolist() for n in (30, 21, 26)]
    labels = [[IGNORE_INDEX] * (len(x) - k) + x[-k:] for x, k in zip(ids, (5, 9, 1))]  # answers at the end
    x, y, mask, _ = collate([[0], [1], [2]], ids, labels, pad_id=0, packing=False)

    def loss_and_gradient(target_logits: bool) -> tuple[float, list]:
        model.zero_grad()
        target, keep, extra = loss_targets(y, target_logits)  # as the trainer's step builds them
        out = model(input_ids=x, attention_mask=mask, use_cache=False, **extra)
        loss = _target_cross_entropy(out.logits, target, keep)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    # every position's logits, against the hand-shifted labels (not the trainer's helper)
    model.zero_grad()
    logits = model(input_ids=x, attention_mask=mask, use_cache=False).logits.float()
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), y[:, 1:].reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="sum")
    full_loss, full_grad = loss_and_gradient(False)
    assert full_loss == pytest.approx(float(reference.detach()), rel=1e-5)
    kept_loss, kept_grad = loss_and_gradient(True)
    assert kept_loss == pytest.approx(full_loss, rel=1e-5)
    assert len(kept_grad) == len(full_grad) > 0
    for a, b in zip(full_grad, kept_grad):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
