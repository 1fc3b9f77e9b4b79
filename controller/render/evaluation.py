"""Evaluation manifests for one evaluation id: the eval.json ConfigMap and a GPU Job.

The same image and the same inputs as training: the inputs container fetches the run's split and
the repository's files at the commit (bias sets, suites, corpus) from the artifact store and
materialises the base model into the cache; `python -m controller.evaluate --config eval.json`
fetches the run itself (verified against its manifest) and puts the report back into the store,
where the controller reads it. The Job's name is per evaluation id, so a changed gate is a new
Job and an unchanged one is never evaluated twice."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from controller import labels as L
from controller.catalog import OperatorConfig
from controller.evalconfig import EvalConfig, EvalData
from controller.render.context import CONFIG_DIR, DATA_DIR, REPO_DIR, lineage, owner_namespace, pod_resources, toleration_list
from controller.render.errors import RenderError
from controller.render.names import object_name
from controller.render.pods import (
    ModelSource, base_env, container, default_model_source, inputs_container, model_cache_mount, model_cache_volume,
    pod_failure_rules, store_env, store_root, with_ephemeral,
)
from controller.render.schema import validate_manifests
from controller.render.templates import EVALUATION_TEMPLATES, render_template
from controller.spec.finetune import FineTune

EVALUATOR = "evaluator"
CORPUS_DIR = "/workspace/corpus"
EVAL_BACKOFF_LIMIT = 2
"""Attempts of an evaluation Job beyond the first (a temporary failure: the store or a node away)."""


@dataclass(frozen=True)
class EvaluationInput:
    finetune: FineTune
    config: EvalConfig
    """eval.json as the controller wrote it; the render points its paths at the pod's volumes."""
    data_md5: str
    git_commit: str
    operator: OperatorConfig
    data_uri: str | None = None
    """The published split; None: named by the data md5 (render without a store)."""
    repo_uri: str | None = None
    """The repository's files at the commit, published; None: named by the commit."""
    model: ModelSource | None = None
    corpus_uri: str | None = None
    """The corpus the evaluation serves through (eval.json's serving.corpus), published."""
    namespace: str | None = None


def evaluation_names(spec_name: str, eval_id: str) -> dict[str, str]:
    return {"job": object_name(spec_name, eval_id, "eval"), "evalConfig": object_name(spec_name, eval_id, "evalcfg")}


def render_evaluation(inp: EvaluationInput, *, validate: bool = True) -> list[dict]:
    """The ConfigMap (eval.json) and the Job, in apply order."""
    context = _evaluation_context(inp)
    manifests: list[dict] = []
    for name in EVALUATION_TEMPLATES:
        manifests.extend(render_template(name, context))
    if validate:
        validate_manifests(manifests, namespace=context["namespace"])
    return manifests


def _evaluation_context(inp: EvaluationInput) -> dict:
    ft, op, cfg = inp.finetune, inp.operator, inp.config
    c = op.cluster
    hw = ft.spec.hardware
    if hw.gpu_type not in op.gpus:
        raise RenderError(f"spec '{ft.name}': hardware.gpuType '{hw.gpu_type}' is not in the operator's GPU catalog")
    root = store_root(op)
    if not re.match(r"^[a-z][a-z0-9+.-]*://", cfg.run_uri):
        raise RenderError(f"eval.json: runUri '{cfg.run_uri}' must be in the object store (cluster.artifactStore.uri)")
    namespace = owner_namespace(ft, op, inp.namespace)
    labels, _, annotations = lineage(ft, cfg.run_id, inp.data_md5, inp.git_commit, "evaluation")
    annotations = {**annotations, L.EVAL_ID: cfg.eval_id}
    names = evaluation_names(ft.name, cfg.eval_id)
    model = inp.model or default_model_source(ft, op, inp.git_commit)
    data_uri = inp.data_uri or f"{root}/inputs/unpublished/data-{inp.data_md5}"
    repo_uri = inp.repo_uri or f"{root}/inputs/unpublished/repo-{inp.git_commit}"
    gpus = 0 if hw.gpu_type == "cpu" else c.eval_gpus
    update: dict[str, object] = {
        "data": EvalData(test=f"{DATA_DIR}/test.jsonl", train=f"{DATA_DIR}/train.jsonl" if cfg.data.train else None),
        "repo_root": REPO_DIR,
        "device": "cuda" if gpus else "cpu",
    }
    bundles = [(data_uri, DATA_DIR), (repo_uri, REPO_DIR)]
    fetch_mounts = [{"name": "data", "mountPath": DATA_DIR}, {"name": "repo", "mountPath": REPO_DIR}]
    serving = getattr(cfg, "serving", None)  # the served configuration the evaluation runs through
    if serving is not None and serving.corpus:
        bundles.append((inp.corpus_uri or f"{root}/inputs/unpublished/corpus-{inp.git_commit}", CORPUS_DIR))
        fetch_mounts.append({"name": "corpus", "mountPath": CORPUS_DIR})
        update["serving"] = serving.model_copy(update={"corpus": CORPUS_DIR, "index_cache": "/tmp/index"})
    pod_config = cfg.model_copy(update=update)
    eval_json = json.dumps(pod_config.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"
    inputs = inputs_container(c, ft, bundles, model, fetch_mounts)
    evaluator = container(
        EVALUATOR, c, ["python", "-m", "controller.evaluate", "--config", f"{CONFIG_DIR}/eval.json"],
        [*base_env(cfg.run_id), *store_env(c)], with_ephemeral(pod_resources(op, hw.gpu_type, gpus), c),
        [{"name": "eval-config", "mountPath": CONFIG_DIR, "readOnly": True},
         *({**m, "readOnly": True} for m in fetch_mounts), model_cache_mount(), {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}],
    )
    tolerations = list(c.tolerations) + (list(c.spot_tolerations) if hw.spot else [])
    pod = {
        "labels": {**labels, L.ROLE: EVALUATOR},
        "annotations": annotations,
        "restartPolicy": "Never",
        "serviceAccountName": c.service_account_name,
        "subdomain": "",
        "priorityClassName": c.priority_class_name,
        "nodeSelector": dict(op.gpus[hw.gpu_type].node_selector) if gpus else {},
        "tolerations": toleration_list(tolerations if gpus else [t for t in tolerations if t.key != "nvidia.com/gpu"]),
        "terminationGracePeriodSeconds": 60,
        "runAsUser": c.run_as_user,
        "initContainers": [inputs],
        "containers": [evaluator],
        "volumes": [
            {"name": "eval-config", "configMap": {"name": names["evalConfig"], "items": [{"key": "eval.json", "path": "eval.json"}]}},
            *({"name": m["name"], "emptyDir": {}} for m in fetch_mounts), model_cache_volume(c),
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": c.shm_size if gpus else "1Gi"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    job_labels = dict(labels)
    if c.kueue_queue:
        job_labels[L.QUEUE] = c.kueue_queue
    return {
        "namespace": namespace,
        "names": names,
        "labels": labels,
        "jobLabels": job_labels,
        "annotations": annotations,
        "pod": pod,
        "job": {"backoffLimit": EVAL_BACKOFF_LIMIT, "activeDeadlineSeconds": int(math.ceil(hw.max_hours * 3600)),
                "ttlSecondsAfterFinished": c.ttl_seconds_after_finished, "podFailureRules": pod_failure_rules(EVALUATOR)},
        "evalJson": eval_json,
    }
