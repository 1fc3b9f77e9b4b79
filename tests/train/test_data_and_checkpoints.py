"""Assistant-only labels, the tokenized-data cache key, checkpoint round trips and the progress output."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from controller.tiny.model import END_OF_TURN
from controller.train import checkpoint as ckpt
from controller.train.data import IGNORE_INDEX, encode, tokenize_split


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_labels_cover_only_assistant_turns_including_end_of_turn(tokenizer) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "one"}, {"role": "user", "content": "second"},
                {"role": "assistant", "content": "two"}]
    ids, labels = encode(tokenizer, messages, max_length=512)
    trained = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert trained == f"one{END_OF_TURN}two{END_OF_TURN}"


def test_template_free_fallback_finds_the_same_spans(tokenizer) -> None:
    """A template without {% generation %} markers (most hub models) gets the same labels."""
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    marked = encode(tokenizer, messages, 512)
    plain = tokenizer.chat_template.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = plain
        assert encode(tokenizer, messages, 512) == marked
    finally:
        tokenizer.chat_template = original


def test_tokenized_cache_hits_and_a_changed_template_misses(tokenizer, task_data, tmp_path) -> None:
    kw = dict(data_md5="0" * 32, max_length=256, cache_dir=tmp_path / "cache")
    first = tokenize_split(task_data[1], "data.test", tokenizer, **kw)
    second = tokenize_split(task_data[1], "data.test", tokenizer, **kw)
    assert not first.cache_hit and second.cache_hit and second.input_ids == first.input_ids
    assert tokenize_split(task_data[1], "data.test", tokenizer, **{**kw, "max_length": 120}).cache_key != first.cache_key
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = original.replace("\\n", "\\n\\n", 1)
        changed = tokenize_split(task_data[1], "data.test", tokenizer, **kw)
    finally:
        tokenizer.chat_template = original
    assert not changed.cache_hit and changed.cache_key != first.cache_key
    assert changed.input_ids != first.input_ids


def test_checkpoint_round_trip_and_partial_ones_are_ignored(tmp_path: Path) -> None:
    import torch

    param = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([param], lr=0.1)
    param.sum().backward()
    opt.step()
    rng = {"torch": torch.get_rng_state()}
    ckpt.save_checkpoint(tmp_path, 5, trainable={"w": param}, optimizer_state=opt.state_dict(), rng=rng,
                         state={"runId": "r", "metricsLines": 5})
    # a later checkpoint whose marker never got written, and one whose file was cut short
    ckpt.save_checkpoint(tmp_path, 10, trainable={"w": param}, optimizer_state=opt.state_dict(), rng=rng, state={})
    (tmp_path / "checkpoint-00000010" / ckpt.MARKER).unlink()
    ckpt.save_checkpoint(tmp_path, 15, trainable={"w": param}, optimizer_state=opt.state_dict(), rng=rng, state={})
    with (tmp_path / "checkpoint-00000015" / "optimizer.safetensors").open("r+b") as fh:
        fh.truncate(10)
    assert ckpt.latest_complete(tmp_path) == tmp_path / "checkpoint-00000005"

    trainable, opt_state, rng_back, state = ckpt.load_checkpoint(tmp_path / "checkpoint-00000005")
    assert torch.equal(trainable["w"], param.detach()) and state["step"] == 5 and state["metricsLines"] == 5
    assert torch.equal(rng_back["torch"], rng["torch"])
    fresh = torch.optim.AdamW([torch.nn.Parameter(param.detach().clone())], lr=0.1)
    fresh.load_state_dict(opt_state)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(fresh.state_dict()["state"][0][key], opt.state_dict()["state"][0][key])
    assert sorted(ckpt.remove_incomplete(tmp_path)) == ["checkpoint-00000010", "checkpoint-00000015"]


def test_progress_is_json_lines_when_not_interactive(capsys) -> None:
    from controller.train.progress import Progress

    progress = Progress(total=4, initial=0, interactive=False, every=2)
    for step in range(1, 5):
        progress.step(step, {"step": step, "loss": 1.0, "learningRate": 0.1})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert lines[0]["event"] == "step" and lines[0]["totalSteps"] == 4 and "etaSeconds" in lines[0]


def test_progress_is_a_bar_with_eta_on_a_terminal() -> None:
    from controller.train.progress import Progress

    stream = io.StringIO()
    progress = Progress(total=4, initial=1, stream=stream, interactive=True)
    for step in range(2, 5):
        progress.step(step, {"step": step, "loss": 1.0, "learningRate": 0.1})
    progress.close()
    text = stream.getvalue()
    assert "4/4" in text and "<" in text and "loss=1.0000" in text  # tqdm's "elapsed<remaining"
