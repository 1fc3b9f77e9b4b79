"""eval.json: everything one evaluation needs, written by the controller and read by
`python -m controller.evaluate --config eval.json` on either backend (a local subprocess, a
Kubernetes Job), as run.json is for the trainer. The evaluation process reads nothing else.

The evaluation id is the content hash of the run and every setting the evaluation depends on,
so an unchanged evaluation is never run twice and a changed gate re-evaluates without retraining.
`serving` says which served configuration (corpus, retriever, topK, prompt, generation limits)
the evaluation runs: the one the deploy step will serve, so the gate judges what serves.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from controller.errors import PermanentError
from controller.spec.base import SpecModel
from controller.spec.finetune import FineTune


class EvalData(SpecModel):
    """The run's own prepared splits (their sha256 must match what the run recorded)."""

    test: str = Field(description="Absolute path of the held-out test split (chat JSONL).")
    train: str | None = Field(default=None, description="The train split, for the contamination check.")


class EvalServing(SpecModel):
    """The served configuration the evaluation runs: the corpus as the deploy step materialises it
    at the commit, and the hash the report must record (controller.identity.serving_config: corpus
    version, retriever, topK, prompt version, generation limits, all from the spec's serving block
    plus `corpusVersion`)."""

    corpus: str | None = Field(default=None, description="Absolute path of the corpus folder at the commit (None: no retrieval).")
    corpus_version: str | None = Field(default=None, description="The corpus version at the commit (its .dvc md5 or git tree hash).")
    config_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the serving configuration evaluated.")
    index_cache: str | None = Field(default=None, description="Where the evaluator keeps corpus indexes (default: beside the corpus).")


class EvalConfig(SpecModel):
    api_version: Literal["ftops.dev/v1alpha1"] = "ftops.dev/v1alpha1"
    kind: Literal["EvalConfig"] = "EvalConfig"
    eval_id: str = Field(pattern=r"^[0-9a-f]{8,64}$", description="Content hash identifying the evaluation.")
    run_id: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    spec_name: str
    run_uri: str = Field(description="The run's place in the artifact store (directory or object-store URI).")
    finetune: FineTune = Field(description="The spec: its evaluation block (gates) and serving block.")
    data: EvalData
    repo_root: str = Field(description="The repository's files at the commit (bias sets, schemas, suites, corpus).")
    serving: EvalServing | None = Field(
        default=None, description="The served configuration to evaluate through (None: the spec is not served; the model "
        "is evaluated on the prompts as written).")
    device: Literal["auto", "cpu", "cuda"] = "auto"


def write_eval_config(config: EvalConfig, path: str | Path) -> Path:
    from controller.fsutil import write_bytes_atomic

    path = Path(path)
    text = json.dumps(config.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))
    return path


def load_eval_config(path: str | Path) -> EvalConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except FileNotFoundError:
        raise PermanentError(f"{path}: eval config not found; the controller writes it before starting the evaluation") from None
    except json.JSONDecodeError as exc:
        raise PermanentError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    try:
        # JSON mode: the spec's lists become its models' tuples, as the spec loader does.
        return EvalConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                             for e in exc.errors(include_input=False))
        raise PermanentError(f"{path}: invalid eval config: {problems}") from None
