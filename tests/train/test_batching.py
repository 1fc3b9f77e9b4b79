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
