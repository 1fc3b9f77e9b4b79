"""Run identity: a content hash of everything that determines a training result (plus the spec's
name, so two specs never share a run's artifacts or history).

Same inputs -> same run id -> same Job name -> nothing new is created. That is what makes
the reconciler idempotent and what lets `ftops plan` tell "retrain" from "re-evaluate" from
"redeploy only" from "no change". Fields that do not change the trained weights (owner,
labels, budget, GPU type, spot, max hours, evaluation, serving) are deliberately left out, and so
is the corpus: a fine-tune learns how to read sources (RAFT, spec.training.retrieval), not what
they say, so a corpus edit re-evaluates the run instead of retraining it.
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


API_TRAINER_VERSION = "api-1"
"""Bump when what ftops uploads to a provider changes for the same inputs (the file's rendering,
the job's parameters), so every api spec trains again."""


def _trained_fields(spec: FineTune, fields: set[str] | None = None) -> set[str]:
    """The training fields in a run's identity: `fields` (all by default), and `replay` only where
    it is set, so specs that replay nothing keep the run ids they had before the field existed."""
    chosen = set(fields if fields is not None else type(spec.spec.training).model_fields)
    if spec.spec.training.replay is None:
        chosen.discard("replay")
    else:
        chosen.add("replay")
    return chosen


def _data(spec: FineTune, data_md5: str, replay_md5: str | None) -> dict[str, Any]:
    """The data a run learns from: the dataset version and split, and the version of the file it
    replays (spec.training.replay) when it replays one."""
    s = spec.spec
    data: dict[str, Any] = {"md5": data_md5, "testFraction": s.dataset.test_fraction,
                            "nearDuplicateThreshold": s.dataset.near_duplicate_threshold}
    if s.training.replay is not None:
        data["replay"] = {"md5": replay_md5}
    return data


def run_inputs(spec: FineTune, data_md5: str, template_version: str, replay_md5: str | None = None) -> dict[str, Any]:
    """The exact inputs hashed into the run id (shown by `ftops plan` when they change).
    `replay_md5`: the version of spec.training.replay.path at the commit (ignored without one)."""
    s = spec.spec
    if s.method.type == "api":
        return api_run_inputs(spec, data_md5, replay_md5)
    return {
        # Two specs with the same inputs are still two runs: each owns its artifacts and history.
        "spec": spec.metadata.name,
        "baseModel": {"uri": s.base_model.uri, "revision": s.base_model.revision},
        "method": s.method.model_dump(mode="json", by_alias=True),
        "training": s.training.model_dump(mode="json", by_alias=True, include=_trained_fields(spec)),
        # Data-parallel width changes the global batch, hence the result.
        "worldSize": s.hardware.gpus_per_node * s.hardware.nodes,
        "data": _data(spec, data_md5, replay_md5),
        "template": template_version,
        "trainer": TRAINER_VERSION,
    }


def api_run_inputs(spec: FineTune, data_md5: str, replay_md5: str | None = None) -> dict[str, Any]:
    """What determines a managed fine-tune's result: the provider, its base model, the
    hyper-parameters and seed, and the data it is given (the dataset version, the split, and the
    training fields that shape the uploaded file: RAFT prompts, the length check). Not the
    credentials (whose key pays changes nothing), the hardware (the provider's) or the Kubernetes
    templates (nothing is rendered)."""
    s = spec.spec
    method = s.method.model_dump(mode="json", by_alias=True, exclude={"credentials"})
    training = s.training.model_dump(mode="json", by_alias=True, include=_trained_fields(spec, {"retrieval", "max_seq_length"}))
    return {
        "spec": spec.metadata.name,
        "method": method,
        "training": training,
        "data": _data(spec, data_md5, replay_md5),
        "trainer": API_TRAINER_VERSION,
    }


def run_id(spec: FineTune, data_md5: str, template_version: str, replay_md5: str | None = None) -> str:
    return _digest(run_inputs(spec, data_md5, template_version, replay_md5))


PROMPT_VERSION = "sources-cite-1"
"""The prompt builder's version (controller.serve.prompt): how retrieved sources are put in front
of the model and how it is asked to cite them. Bump it with any change to what the model sees, so
every served spec is evaluated again on the new prompt before it serves with it (a test pins the
rendered prompt to this version)."""


def serving_config(spec: FineTune, corpus_version: str | None) -> dict[str, Any] | None:
    """What the served system is, besides the weights: the retrieval (corpus version, retriever,
    topK), the prompt builder and the generation parameters. The evaluation runs exactly this
    configuration, its report records `serving_config_sha256` of it, and promotion requires the
    configuration being deployed to have the same hash. Replicas and the rollout strategy are not
    part of it: they change how many copies serve, not what one answers. None: not served."""
    serving = spec.spec.serving
    if serving is None:
        return None
    return {
        "corpus": corpus_version if serving.corpus else None,
        "retriever": serving.retriever if serving.corpus else None,
        "topK": serving.top_k if serving.corpus else None,
        "prompt": PROMPT_VERSION,
        "generation": {"greedy": True, "maxTokens": serving.max_tokens},
    }


def serving_config_sha256(config: dict[str, Any] | None) -> str | None:
    """The full sha256 of a serving configuration (None for a spec that is not served)."""
    if config is None:
        return None
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def eval_id(run: str, spec: FineTune, corpus_version: str | None = None) -> str:
    """Identity of an evaluation: the run, every gate setting and the serving configuration it is
    evaluated on. A changed threshold re-gates the existing run without retraining; a changed
    corpus, retriever, topK, prompt or generation limit evaluates the existing run again on what
    will serve (no retraining) before it is redeployed."""
    return _digest({"run": run, "evaluation": spec.spec.evaluation.model_dump(mode="json", by_alias=True),
                    "serving": serving_config(spec, corpus_version)})


def serving_id(run: str, spec: FineTune, corpus_version: str | None) -> str:
    """Identity of what is served: the run plus the serving settings and the corpus version.
    A replica or rollout change redeploys alone; a corpus, retriever or limit change also changes
    the evaluation id (`serving_config`), so it is evaluated before it redeploys."""
    serving = spec.spec.serving.model_dump(mode="json", by_alias=True) if spec.spec.serving else None
    return _digest({"run": run, "serving": serving, "corpus": corpus_version})
