"""run.json: everything one training run needs, written by the controller and read by
`python -m controller.train --config run.json` on either backend.

It is the seam between the controller and the trainer: the trainer reads nothing else
(no spec, no git), so the same file drives a local subprocess and a Kubernetes Job.
Paths are absolute on the machine (or in the container) that runs the trainer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from controller.spec.base import SpecModel
from controller.spec.method import Method
from controller.spec.training import TrainingSpec

RUN_CONFIG_KIND = "RunConfig"


class RunBaseModel(SpecModel):
    """The base model as the trainer sees it: a local directory, or a pinned hub id."""

    uri: str = Field(description="Absolute local directory of a safetensors model, or hf://org/name.")
    revision: str | None = Field(default=None, description="40-hex commit for hf:// models.")


class RunData(SpecModel):
    """The prepared, split data for this run (outputs of `ftops data prepare`)."""

    train: str = Field(description="Absolute path of the prepared train split (chat JSONL).")
    test: str = Field(description="Absolute path of the prepared held-out test split (chat JSONL). Never trained on.")
    md5: str = Field(description="md5 of the source dataset version (as pinned by its .dvc file).")
    train_sha256: str | None = Field(default=None, description="sha256 of the train split file, checked before training.")
    test_sha256: str | None = Field(default=None, description="sha256 of the test split file.")


class Distributed(SpecModel):
    """World layout and how the processes share the work. More than one process launches
    through torchrun (controller.train.launch); one process ignores `strategy`."""

    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=1, ge=1)
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        default="auto",
        description="ddp: every rank holds the whole model, gradients are averaged (small models, LoRA). "
        "fsdp: FSDP2 (torch fully_shard) shards parameters, gradients and optimizer states over the ranks "
        "(full fine-tunes, LoRA on a base that does not fit one GPU). auto: fsdp for method full, and for "
        "lora when the base's weights take more than half of one GPU's memory; ddp otherwise.",
    )


class RunConfig(SpecModel):
    """One training run. `run_id` is the content hash of everything that determines the result."""

    api_version: Literal["ftops.dev/v1alpha1"] = "ftops.dev/v1alpha1"
    kind: Literal["RunConfig"] = RUN_CONFIG_KIND
    run_id: str = Field(pattern=r"^[0-9a-f]{8,64}$", description="Content hash identifying the run.")
    spec_name: str = Field(description="metadata.name of the FineTune.")
    base_model: RunBaseModel
    method: Method
    training: TrainingSpec
    data: RunData
    output_dir: str = Field(description="Where the finished artifacts go: <store>/<spec>/<run-id>/.")
    checkpoint_dir: str = Field(description="Where resumable checkpoints go (a PVC on Kubernetes).")
    distributed: Distributed = Field(default_factory=Distributed)
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where to train.")


class RunConfigError(ValueError):
    """run.json is missing, not JSON, or not a valid RunConfig. The message names the file and field."""


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunConfigError(f"{path}: run config not found; the controller writes it before starting the trainer") from None
    except json.JSONDecodeError as exc:
        raise RunConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        raise RunConfigError(f"{path}: invalid run config: {problems}") from None


def write_run_config(config: RunConfig, path: str | Path) -> None:
    """Write atomically, so a trainer never reads a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(config.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
