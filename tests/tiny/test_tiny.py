"""The tiny-model kit: task generator and tiny model are deterministic and fit the trainer's needs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from controller.tiny import task
from controller.tiny.model import END_OF_TURN, TINY_CONFIG, VOCAB_SIZE


def test_examples_are_deterministic_balanced_and_labelled() -> None:
    a = task.generate_examples(60, seed=3)
    assert a == task.generate_examples(60, seed=3)
    assert a != task.generate_examples(60, seed=4)
    labels = [task.expected_label(e) for e in a]
    assert {lab: labels.count(lab) for lab in task.LABELS} == {"billing": 20, "bug": 20, "account": 20}
    for example in a:
        roles = [m["role"] for m in example["messages"]]
        assert roles == ["system", "user", "assistant"]


def test_parse_label_is_strict() -> None:
    assert task.parse_label('{"label": "bug"}') == "bug"
    assert task.parse_label(' {"label": "account"} ') == "account"
    assert task.parse_label('{"label": "other"}') is None
    assert task.parse_label('{"label": "bug", "x": 1}') is None
    assert task.parse_label("bug") is None


def test_write_task_round_trips(tmp_path: Path) -> None:
    train, test = task.write_task(tmp_path, n_train=9, n_test=6, seed=1)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert rows == task.generate_examples(9, 1)
    assert len(test.read_text().splitlines()) == 6


def test_init_tiny_cli_writes_the_cached_base_as_safetensors_with_a_maskable_template(tiny_base: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "model", "init-tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    # The session's base came from the same cache entry: the same bytes.
    assert {n: (out / n).read_bytes() for n in names} == {n: (tiny_base / n).read_bytes() for n in names}
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == TINY_CONFIG["hidden_size"] and config["num_hidden_layers"] == TINY_CONFIG["num_hidden_layers"]
    assert config["vocab_size"] == VOCAB_SIZE

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == END_OF_TURN
    example = task.generate_examples(1, seed=0)[0]
    enc = tok.apply_chat_template(
        example["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    # Only the answer and its end-of-turn token are trained; the ticket is not.
    assert tok.decode(trained) == example["messages"][-1]["content"] + END_OF_TURN
    # Byte-level: any text round-trips.
    text = "Ünïcode ✓ tab\tnewline\n"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
