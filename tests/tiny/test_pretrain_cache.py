"""Pretraining is deterministic and cached, and the cache never trusts a half-built entry.

These tests pretrain for a few steps in a cache of their own (`isolated_cache`): what they check
is the build and the cache, not what the model learned (test_base_skills.py does that on the
real default)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.errors import PermanentError
from controller.tiny import cache as tiny_cache
from controller.tiny import model as tiny_model
from controller.tiny import pretrain as tiny_pretrain

STEPS = 4
MODEL_FILES = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja"}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _forbid_pretraining(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("pretrained although the cache holds this model")

    monkeypatch.setattr(tiny_pretrain, "pretrain", refuse)


def test_two_cold_builds_are_byte_identical_and_the_seed_matters(isolated_cache: Path, tmp_path: Path) -> None:
    a = tiny_model.init_tiny_model(tmp_path / "a", steps=STEPS, cache_dir=tmp_path / "cache-a")
    b = tiny_model.init_tiny_model(tmp_path / "b", steps=STEPS, cache_dir=tmp_path / "cache-b")
    assert set(_files(a)) == MODEL_FILES
    assert _files(a) == _files(b)
    other = tiny_model.init_tiny_model(tmp_path / "c", seed=1, steps=STEPS, cache_dir=tmp_path / "cache-a")
    assert _files(other)["model.safetensors"] != _files(a)["model.safetensors"]


def test_the_cli_builds_the_same_bytes_in_another_process(isolated_cache: Path, tmp_path: Path) -> None:
    here = tiny_model.init_tiny_model(tmp_path / "here", steps=STEPS, cache_dir=tmp_path / "in-process")
    out = tmp_path / "cli"
    env = {**os.environ, "FTOPS_TINY_CACHE": str(tmp_path / "cli-cache"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "model", "init-tiny", "--out", str(out), "--steps", str(STEPS)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and "pretrained the tiny model in" in proc.stderr
    assert _files(out) == _files(here)
    again = subprocess.run([sys.executable, "-m", "controller.cli", "model", "init-tiny", "--out", str(out), "--steps", str(STEPS)],
                           capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "from the cache" in again.stderr, again.stderr


def test_the_second_call_copies_the_cache_and_does_not_train(isolated_cache: Path, tmp_path: Path, monkeypatch) -> None:
    first = tiny_model.pretrained(steps=STEPS)
    assert first.built and first.path.parent == isolated_cache
    marker = first.path / tiny_cache.MARKER
    stamp = marker.stat().st_mtime_ns
    _forbid_pretraining(monkeypatch)
    second = tiny_model.pretrained(steps=STEPS)
    assert not second.built and second.path == first.path
    assert marker.stat().st_mtime_ns == stamp
    out = tiny_model.init_tiny_model(tmp_path / "copy", steps=STEPS)
    assert _files(out) == {k: v for k, v in _files(first.path).items() if k != tiny_cache.MARKER}
    # What a caller does to its copy never reaches the cache.
    (out / "model.safetensors").write_bytes(b"changed")
    assert tiny_cache.lookup(isolated_cache, first.path.name) is not None


def test_everything_that_decides_the_weights_is_in_the_key(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "refunds.md").write_text("Refunds take 5 to 7 business days.\n")
    settings = tiny_pretrain.PretrainSettings(steps=STEPS)
    empty = tiny_model.Corpus()
    base = tiny_model.build_key(0, empty, settings)
    assert base == tiny_model.build_key(0, empty, settings)
    with_corpus = tiny_model.build_key(0, tiny_model.read_corpus(corpus), settings)
    (corpus / "refunds.md").write_text("Refunds take 3 business days.\n")
    changed = tiny_model.build_key(0, tiny_model.read_corpus(corpus), settings)
    keys = {base, with_corpus, changed, tiny_model.build_key(1, empty, settings),
            tiny_model.build_key(0, empty, tiny_pretrain.PretrainSettings(steps=STEPS + 1)),
            tiny_model.build_key(0, empty, tiny_pretrain.PretrainSettings(steps=STEPS, learning_rate=1e-3))}
    assert len(keys) == 6


def test_a_crash_mid_build_leaves_nothing_a_later_call_trusts(isolated_cache: Path, monkeypatch) -> None:
    real_save = tiny_model._save

    def crash_after_the_weights(model, tokenizer, out):
        real_save(model, tokenizer, out)
        (out / "tokenizer.json").write_text("{")  # half written
        raise KeyboardInterrupt("killed mid-build")

    monkeypatch.setattr(tiny_model, "_save", crash_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        tiny_model.pretrained(steps=STEPS)
    key = tiny_model.build_key(0, tiny_model.Corpus(), tiny_pretrain.PretrainSettings(steps=STEPS))
    assert not (isolated_cache / key).exists()
    assert not list(isolated_cache.glob(".tmp-*"))
    monkeypatch.setattr(tiny_model, "_save", real_save)
    entry = tiny_model.pretrained(steps=STEPS)
    assert entry.built and entry.path.name == key


def test_a_killed_build_and_a_damaged_entry_are_rebuilt(isolated_cache: Path) -> None:
    entry = tiny_model.pretrained(steps=STEPS)
    good = _files(entry.path)
    # A process killed (SIGKILL: no cleanup) while building left its temporary folder.
    leftover = isolated_cache / f".tmp-{entry.path.name}-killed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    # And the published entry lost bytes (a full disk, a hand edit).
    weights = entry.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert tiny_cache.lookup(isolated_cache, entry.path.name) is None
    rebuilt = tiny_model.pretrained(steps=STEPS)
    assert rebuilt.built and _files(rebuilt.path) == good | {tiny_cache.MARKER: _files(rebuilt.path)[tiny_cache.MARKER]}
    assert not leftover.exists()


@pytest.mark.parametrize("layout, message", [
    ({}, "has no text documents (.md, .txt"),
    ({"faq.md": b"\xff\xfe not utf-8"}, "faq.md is not UTF-8 text"),
    (None, "is not a folder; point it at the corpus directory"),
])
def test_a_bad_corpus_is_a_clear_error_and_caches_nothing(isolated_cache: Path, tmp_path: Path, layout, message) -> None:
    corpus = tmp_path / "corpus"
    if layout is not None:
        corpus.mkdir()
        (corpus / ".hidden.md").write_text("skipped")
        for name, data in layout.items():
            (corpus / name).write_bytes(data)
    with pytest.raises(PermanentError, match=r"--corpus: .*" + message.replace("(", r"\(").replace(".", r"\.")):
        tiny_model.init_tiny_model(tmp_path / "out", corpus=corpus, steps=STEPS)
    assert not isolated_cache.exists() or not [p for p in isolated_cache.iterdir() if not p.name.endswith(".lock")]
    assert not (tmp_path / "out").exists()


def test_the_cli_names_a_bad_corpus(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "model", "init-tiny", "--out", str(tmp_path / "m"),
                           "--corpus", str(tmp_path / "missing")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FTOPS_TINY_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1, proc.stderr
    assert f"--corpus: '{tmp_path / 'missing'}' is not a folder" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_the_corpus_is_pretrained_on(isolated_cache: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "docs").mkdir(parents=True)
    (corpus / "docs" / "refunds.md").write_text("# Refund policy\n\nRefunds take 5 to 7 business days.\n")
    (corpus / "notes.bin").write_bytes(b"\x00\x01")  # not a document: ignored
    entry = tiny_model.pretrained(corpus=corpus, steps=STEPS)
    assert entry.info["corpus"] == ["docs/refunds.md"]
    plain = tiny_model.pretrained(steps=STEPS)
    assert plain.path != entry.path
    tokenizer = json.loads((entry.path / "tokenizer.json").read_text())
    assert tokenizer["model"]["vocab"] != json.loads((plain.path / "tokenizer.json").read_text())["model"]["vocab"]
