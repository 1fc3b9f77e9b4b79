"""Bad input fails before any training starts, with a message that names the file or field and
says what to do: a bad run.json, missing or invalid data, a pickle-only model, a hub model that is
not available offline, a template that would never teach the model to stop, an attention kernel or
precision this device or method cannot do. Each exits 78 (controller.exitcodes.CONFIG_ERROR)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_helpers import LORA, make_config

from controller.exitcodes import CONFIG_ERROR
from controller.train.__main__ import main


def _fails(config: Path, capsys) -> str:
    rc = main(["--config", str(config)])
    err = capsys.readouterr().err
    assert rc == CONFIG_ERROR, err
    root = config.parent
    # nothing was trained: no metrics, no checkpoint, no manifest
    assert not (root / "ckpt" / "metrics.jsonl").exists()
    assert not list((root / "ckpt").glob("checkpoint-*"))
    assert not (root / "out" / "manifest.json").exists()
    return err


def _edit(config: Path, **changes) -> Path:
    raw = json.loads(config.read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    config.write_text(json.dumps(raw))
    return config


@pytest.fixture
def config(tmp_path, tiny_model, task_data) -> Path:
    return make_config(tmp_path, tiny_model, task_data, {"type": "lora", **LORA})


def test_run_json_not_json(tmp_path, capsys) -> None:
    path = tmp_path / "run.json"
    path.write_text('{"runId": "0123abcd",\n  oops}')
    err = _fails(path, capsys)
    assert f"{path}:2" in err and "not valid JSON" in err


def test_run_json_missing_field(config, capsys) -> None:
    err = _fails(_edit(config, data=None), capsys)
    assert str(config) in err and "data:" in err


def test_run_json_bad_method(config, capsys) -> None:
    err = _fails(_edit(config, **{"method.type": "adapter"}), capsys)
    assert str(config) in err and "method" in err


def test_missing_train_data(config, tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere" / "train.jsonl"
    err = _fails(_edit(config, **{"data.train": str(missing)}), capsys)
    assert "data.train" in err and str(missing) in err and "ftops data prepare" in err


def test_invalid_data_line_names_line_and_field(config, tmp_path, task_data, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = task_data[0].read_text().splitlines()[:3]
    broken = json.loads(lines[2])
    broken["messages"][1]["role"] = "customer"
    bad.write_text("\n".join([lines[0], lines[1], json.dumps(broken)]) + "\n")
    err = _fails(_edit(config, **{"data.train": str(bad)}), capsys)
    assert f"{bad}:3" in err and "messages[1].role" in err


def test_changed_data_sha256(config, capsys) -> None:
    err = _fails(_edit(config, **{"data.trainSha256": "0" * 64}), capsys)
    assert "data.train" in err and "0" * 64 in err and "ftops data prepare" in err


def test_pickle_only_model_is_refused(config, tmp_path, tiny_model, capsys) -> None:
    pickled = tmp_path / "pickled-model"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model / name, pickled / name)
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle; must never be opened")
    err = _fails(_edit(config, **{"baseModel.uri": str(pickled)}), capsys)
    assert "baseModel.uri" in err and "pytorch_model.bin" in err and "safetensors" in err


def test_hub_model_offline_is_a_clear_error(config, capsys) -> None:
    err = _fails(_edit(config, baseModel={"uri": "hf://ftops-test/not-cached-anywhere", "revision": "a" * 40}), capsys)
    assert "hf://ftops-test/not-cached-anywhere" in err and "offline" in err


def test_template_that_never_trains_end_of_turn(config, tmp_path, tiny_model, capsys) -> None:
    model = tmp_path / "model-bad-template"
    shutil.copytree(tiny_model, model)
    template = (model / "chat_template.jinja").read_text()
    # move the end-of-turn token out of the trained (generation) span
    fixed = template.replace("message['content'] + '<|im_end|>' }}{%- endgeneration %}", "message['content'] }}{%- endgeneration %}{{- '<|im_end|>' }}")
    assert fixed != template
    (model / "chat_template.jinja").write_text(fixed)
    err = _fails(_edit(config, **{"baseModel.uri": str(model)}), capsys)
    assert "end-of-turn" in err and "<|im_end|>" in err


def test_unknown_lora_target_module(config, capsys) -> None:
    err = _fails(_edit(config, **{"method.targetModules": ["q_proj", "query_key_value"]}), capsys)
    assert "method.targetModules" in err and "query_key_value" in err


def test_qlora_probe_fails_clearly_where_4bit_does_not_work() -> None:
    from controller.errors import PermanentError
    from controller.spec.method import Quantization
    from controller.train.loading import probe_qlora

    with pytest.raises(PermanentError, match=r"method.type qlora: .* device 'meta'.*method.type: lora"):
        probe_qlora(Quantization(), "meta")


def test_attention_kernel_that_cannot_run_here(config, capsys) -> None:
    err = _fails(_edit(config, **{"training.attention": "flash_attention_2"}), capsys)
    assert "training.attention: flash_attention_2 needs a CUDA GPU and the flash-attn package" in err


def test_precision_that_disagrees_with_the_qlora_compute_dtype(config, capsys) -> None:
    err = _fails(_edit(config, method={"type": "qlora", **LORA, "quantization": {"computeDtype": "float32"}},
                       **{"training.precision": "bf16"}), capsys)
    assert "training.precision: bf16 disagrees with method.quantization.computeDtype float32" in err


def test_unknown_precision_names_the_field(config, capsys) -> None:
    err = _fails(_edit(config, **{"training.precision": "int8"}), capsys)
    assert str(config) in err and "training.precision" in err

