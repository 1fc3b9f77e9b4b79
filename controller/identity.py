"""Run identity: a content hash of everything that determines a training result (plus the spec's
name, so two specs never share a run's artifacts or history).

Same inputs -> same run id -> same Job name -> nothing new is created. That is what makes
the reconciler idempotent and what lets `ftops plan` tell "retrain" from "re-evaluate" from
"redeploy only" from "no change". Fields that do not change the trained weights (owner,
labels, budget, GPU type, spot, max hours, evaluation, serving) are deliberately left out.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from controller.spec.finetune import FineTune

TRAINER_VERSION = "1"
"""Bump when a trainer change alters results for the same inputs, so every spec retrains."""
RUN_ID_LENGTH = 12
"""48 bits: collisions are irrelevant at the scale of one repo, and names stay short."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:RUN_ID_LENGTH]


def run_inputs(spec: FineTune, data_md5: str, template_version: str) -> dict[str, Any]:
    """The exact inputs hashed into the run id (shown by `ftops plan` when they change)."""
    s = spec.spec
    return {
        # Two specs with the same inputs are still two runs: each owns its artifacts and history.
        "spec": spec.metadata.name,
        "baseModel": {"uri": s.base_model.uri, "revision": s.base_model.revision},
        "method": s.method.model_dump(mode="json", by_alias=True),
        "training": s.training.model_dump(mode="json", by_alias=True),
        # Data-parallel width changes the global batch, hence the result.
        "worldSize": s.hardware.gpus_per_node * s.hardware.nodes,
        "data": {"md5": data_md5, "testFraction": s.dataset.test_fraction,
                 "nearDuplicateThreshold": s.dataset.near_duplicate_threshold},
        "template": template_version,
        "trainer": TRAINER_VERSION,
    }


def run_id(spec: FineTune, data_md5: str, template_version: str) -> str:
    return _digest(run_inputs(spec, data_md5, template_version))


def eval_id(run: str, spec: FineTune) -> str:
    """Identity of an evaluation: the run plus every gate setting. A changed threshold re-gates
    the existing run without retraining."""
    return _digest({"run": run, "evaluation": spec.spec.evaluation.model_dump(mode="json", by_alias=True)})


def serving_id(run: str, spec: FineTune, corpus_version: str | None) -> str:
    """Identity of what is served: the run plus the serving settings and the corpus version.
    A corpus or replica change redeploys without retraining."""
    serving = spec.spec.serving.model_dump(mode="json", by_alias=True) if spec.spec.serving else None
    return _digest({"run": run, "serving": serving, "corpus": corpus_version})
