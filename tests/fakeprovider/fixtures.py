"""pytest fixtures: a fake provider on 127.0.0.1 per test, and the operator configuration that
points a `providers:` entry at it (with its API key in the variable the controller reads)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import yaml

from fakeprovider.provider import FakeProvider
from fakeprovider.server import Served

PROVIDER = "fakeai"
SECRET = {"name": "fakeai", "key": "api-key"}
KEY_ENV = "FTOPS_SECRET_FAKEAI_API_KEY"
PRICES = {"usdPerMillionTrainingTokens": 3.0, "usdPerMillionInputTokens": 0.30, "usdPerMillionOutputTokens": 1.20}


def operator_override(url: str) -> dict:
    """The operator config's `providers:` entry for a served fake."""
    return {"providers": {PROVIDER: {"baseUrl": url, "credentials": SECRET, **PRICES,
                                     "models": {"gpt-4o-mini-2024-07-18": PRICES}}}}


@pytest.fixture
def fake_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A fresh provider, its API key exported, FTOPS_OPERATOR_CONFIG naming it as `fakeai`."""
    served = Served(FakeProvider())
    config = tmp_path / "operator-fakeai.yaml"
    config.write_text(yaml.safe_dump(operator_override(served.url)))
    monkeypatch.setenv(KEY_ENV, served.provider.api_keys[0])
    monkeypatch.setenv("FTOPS_OPERATOR_CONFIG", str(config))
    served.operator_config = config  # type: ignore[attr-defined]
    try:
        yield served
    finally:
        served.close()


API_SPEC = """\
apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {{name: {name}, owner: support}}
spec:
  dataset: {{path: data/tickets.jsonl}}
  method:
    type: api
    provider: {provider}
    model: {model}
    hyperparameters: {{epochs: {epochs}}}
  evaluation:
    task: {{metric: json_field_match, fields: [label], min: 0.9}}
"""


def api_spec_text(name: str = "triage-api", provider: str = PROVIDER, model: str = "gpt-4o-mini-2024-07-18",
                  epochs: int | str = 2) -> str:
    return API_SPEC.format(name=name, provider=provider, model=model, epochs=epochs)


def write_splits(folder: Path, examples: int = 60, seed: int = 3, bad_line: str | None = None) -> tuple[Path, Path]:
    """A prepared split of the tiny task (85% train); `bad_line` is appended to the train split."""
    import json

    from controller.tiny.task import generate_examples

    data = generate_examples(examples, seed=seed)
    cut = int(len(data) * 0.85)
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    lines = [json.dumps(e) for e in data[:cut]] + ([bad_line] if bad_line else [])
    train.write_text("\n".join(lines) + "\n")
    test.write_text("\n".join(json.dumps(e) for e in data[cut:]) + "\n")
    return train, test


def api_run(folder: Path, text: str | None = None, bad_line: str | None = None, examples: int = 60):
    """A Run of an api spec over a prepared split written under `folder`."""
    import hashlib

    from controller.identity import run_id
    from controller.runconfig import RunBaseModel, RunConfig, RunData
    from controller.seams import Lineage, Run
    from controller.spec.load import load_spec_text

    import yaml

    text = text or api_spec_text()
    loaded = load_spec_text(text, f"specs/{yaml.safe_load(text)['metadata']['name']}.yaml")
    assert loaded.spec is not None, [i.format() for i in loaded.issues]
    ft = loaded.spec
    train, test = write_splits(folder, examples=examples, bad_line=bad_line)
    md5 = hashlib.md5(train.read_bytes() + test.read_bytes()).hexdigest()
    config = RunConfig(run_id=run_id(ft, md5, "t"), spec_name=ft.metadata.name,
                       base_model=RunBaseModel(uri=ft.spec.base_model.uri), method=ft.spec.method,
                       training=ft.spec.training, data=RunData(train=str(train), test=str(test), md5=md5),
                       output_dir=str(folder / "out"), checkpoint_dir=str(folder / "ckpt"))
    return Run(config, ft, Lineage(md5, "c" * 40))
