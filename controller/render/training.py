"""Training manifests for one run: the run.json ConfigMap, the checkpoint PVC, and the
workload of the operator's flavour (Job, Indexed Job + headless Service, JobSet, ...)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from controller import labels as L
from controller.catalog import OperatorConfig
from controller.render.context import (
    CHECKPOINT_DIR, CONFIG_DIR, CONFIG_ERROR_EXIT_CODES, DATA_DIR, DATA_PULL_SCRIPT, IMAGE_REPO_DIR, MASTER_PORT,
    OUTPUT_DIR, PREEMPTED_EXIT_CODE, REPO_DIR, lineage, owner_namespace, pod_run_config, prepared_dir, pod_resources,
    secret_env, toleration_list,
)
from controller.render.errors import RenderError
from controller.render.names import MAX_NAME, object_name, run_label
from controller.render.schema import validate_manifests
from controller.render.templates import TRAINING_TEMPLATES, render_template, template_version
from controller.runconfig import RunConfig
from controller.spec.base import RFC1123_LABEL
from controller.spec.finetune import FineTune


@dataclass(frozen=True)
class RenderInput:
    """Everything a training render depends on. Nothing else is read (no clock, no cluster)."""

    finetune: FineTune
    run_id: str
    data_md5: str
    git_commit: str
    operator: OperatorConfig
    run_config: RunConfig | Mapping[str, Any]
    namespace: str | None = None
    """The namespace a caller asks for; must be the owner's own (tenancy). None: the owner's."""
    flavor: str | None = None
    """Override the operator's trainingFlavor (job | pytorchjob | jobset); None: the operator's."""



def _training_context(inp: RenderInput) -> tuple[str, dict]:
    ft, op = inp.finetune, inp.operator
    c = op.cluster
    hw = ft.spec.hardware
    if not re.fullmatch(r"[0-9a-f]{8,64}", inp.run_id):
        raise RenderError(f"run id '{inp.run_id}' is not 8-64 lowercase hex characters")
    if hw.gpu_type not in op.gpus:
        raise RenderError(
            f"spec '{ft.name}': hardware.gpuType '{hw.gpu_type}' is not in the operator's GPU catalog "
            f"({', '.join(sorted(op.gpus))})"
        )
    rc = inp.run_config if isinstance(inp.run_config, RunConfig) else RunConfig.model_validate_json(
        json.dumps(dict(inp.run_config))
    )
    if rc.run_id != inp.run_id or rc.spec_name != ft.name:
        raise RenderError(
            f"run.json is for run '{rc.run_id}' of spec '{rc.spec_name}', not run '{inp.run_id}' of spec '{ft.name}'"
        )
    if rc.data.md5 != inp.data_md5:
        raise RenderError(f"run.json pins data md5 '{rc.data.md5}' but the render was asked for '{inp.data_md5}'")
    namespace = owner_namespace(ft, op, inp.namespace)
    flavor = inp.flavor or c.training_flavor
    if flavor not in ("job", "pytorchjob", "jobset"):
        raise RenderError(f"training flavour '{flavor}' is not one of job, pytorchjob, jobset")
    multi = hw.nodes > 1
    kind = ("indexed" if flavor == "job" else flavor) if multi else "job"

    labels, selector, annotations = lineage(ft, inp.run_id, inp.data_md5, inp.git_commit, "training")
    annotations = {**annotations, L.BASE_MODEL: ft.spec.base_model.uri + (
        f"@{ft.spec.base_model.revision}" if ft.spec.base_model.revision else "")}
    job_name = object_name(ft.name, inp.run_id, "train", max_length=52 if kind == "jobset" else MAX_NAME - 4)
    names = {
        "job": job_name,
        "runConfig": object_name(ft.name, inp.run_id, "run"),
        "checkpoints": object_name(ft.name, inp.run_id, "ckpt"),
        "workers": object_name(ft.name, inp.run_id, "workers"),
        "artifacts": c.artifacts_claim,
    }
    if not RFC1123_LABEL.match(c.artifacts_claim):
        raise RenderError(f"operator config: cluster.artifactsClaim '{c.artifacts_claim}' is not an RFC 1123 label")
    job_labels = dict(labels)
    if c.kueue_queue:
        job_labels[L.QUEUE] = c.kueue_queue
    pod_labels = {**labels, L.ROLE: "trainer"}
    pod_selector = {L.RUN_ID: run_label(inp.run_id), L.ROLE: "trainer"}

    gpus = 0 if hw.gpu_type == "cpu" else hw.gpus_per_node
    config_path = f"{CONFIG_DIR}/run.json"
    train_module = ["-m", "controller.train", "--config", config_path]
    env: list[dict] = [
        {"name": "FTOPS_RUN_ID", "value": inp.run_id},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "HF_HUB_OFFLINE", "value": "0" if ft.spec.base_model.kind == "hf" else "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if ft.spec.base_model.credentials is not None:
        cred = ft.spec.base_model.credentials
        env.append(secret_env("HF_TOKEN" if ft.spec.base_model.kind == "hf" else "FTOPS_BASE_MODEL_TOKEN", cred.name, cred.key))
    ports: list[dict] = []
    if kind == "pytorchjob":
        # The training operator injects PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ...; torchrun reads them.
        command = ["torchrun", "--module", "controller.train", "--config", config_path]
        ports = [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}]
    else:
        # One command for every world size: with nodes or GPUs > 1 the trainer re-executes
        # itself through torchrun (controller.train.launch), reading the node rank from
        # JOB_COMPLETION_INDEX (set by Indexed Jobs) and the rendezvous host from MASTER_ADDR.
        command = ["python", *train_module]
        if kind == "indexed":
            master = f"{job_name}-0.{names['workers']}"
        elif kind == "jobset":
            master = f"{job_name}-node-0-0.{names['workers']}"
        else:
            master = ""
        if master:
            env += [{"name": "MASTER_ADDR", "value": master}, {"name": "MASTER_PORT", "value": str(MASTER_PORT)}]
            ports = [{"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"}]

    init_command = ["sh", "-c", DATA_PULL_SCRIPT]
    init_env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "DVC_NO_ANALYTICS", "value": "1"},
        {"name": "FTOPS_GIT_REPO", "value": c.git_repo},
        {"name": "FTOPS_IMAGE_REPO_DIR", "value": IMAGE_REPO_DIR},
        {"name": "FTOPS_REPO_DIR", "value": REPO_DIR},
        {"name": "FTOPS_GIT_COMMIT", "value": inp.git_commit},
        {"name": "FTOPS_SPEC", "value": ft.name},
        {"name": "FTOPS_DATA_MD5", "value": inp.data_md5},
        {"name": "FTOPS_DATA_DIR", "value": DATA_DIR},
    ]
    init_env += [secret_env(s.env, s.secret, s.key) for s in c.data_credentials]

    tolerations = list(c.tolerations) + (list(c.spot_tolerations) if hw.spot else [])
    node_selector = dict(op.gpus[hw.gpu_type].node_selector)
    pod = {
        "labels": pod_labels,
        "annotations": annotations,
        "restartPolicy": "Never",  # retries belong to the Job controller and its podFailurePolicy
        "serviceAccountName": c.service_account_name,
        "subdomain": names["workers"] if kind == "indexed" else "",
        "priorityClassName": c.priority_class_name,
        "nodeSelector": node_selector,
        "tolerations": toleration_list(tolerations if gpus else [t for t in tolerations if t.key != "nvidia.com/gpu"]),
        "terminationGracePeriodSeconds": 120,
        "runAsUser": c.run_as_user,
        "image": c.image,
        "imagePullPolicy": c.image_pull_policy,
        "resources": pod_resources(op, hw.gpu_type, gpus),
        "shmSize": c.shm_size if gpus else "1Gi",
    }
    rules = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                              "values": list(CONFIG_ERROR_EXIT_CODES)}},
        {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [PREEMPTED_EXIT_CODE]}},
    ]
    scheduling: dict = {}
    if c.kueue_queue:
        scheduling["queue"] = c.kueue_queue
    if c.priority_class_name:
        scheduling["priorityClass"] = c.priority_class_name
    job = {
        "backoffLimit": c.backoff_limit,
        "activeDeadlineSeconds": int(math.ceil(hw.max_hours * 3600)),
        "ttlSecondsAfterFinished": c.ttl_seconds_after_finished,
        "podFailureRules": rules,
        "indexed": kind == "indexed",
        "nodes": hw.nodes,
        "nprocPerNode": str(max(gpus, 1)),
        "masterPort": MASTER_PORT,
        "schedulingPolicy": scheduling,
    }
    pod_rc = pod_run_config(rc, ft)
    run_json = json.dumps(pod_rc.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"
    checkpoint = {
        "accessModes": ["ReadWriteMany"] if multi else ["ReadWriteOnce"],
        "storageClassName": c.checkpoint_storage_class,
        "storage": c.checkpoint_storage,
    }
    context = {
        "namespace": namespace,
        "names": names,
        "labels": labels,
        "jobLabels": job_labels,
        "annotations": annotations,
        "podSelector": pod_selector,
        "pod": pod,
        "trainer": {"command": command, "env": env, "ports": ports},
        "init": {"command": init_command, "env": init_env},
        "paths": {
            "configDir": CONFIG_DIR,
            "dataDir": DATA_DIR,
            "repoDir": REPO_DIR,
            "checkpointDir": CHECKPOINT_DIR,
            "outputDir": OUTPUT_DIR,
            "artifactsSubPath": f"{ft.name}/{inp.run_id}",
        },
        "job": job,
        "checkpoint": checkpoint,
        "runJson": run_json,
    }
    return kind, context


def training_templates(kind: str) -> list[str]:
    return ["run-configmap.yaml.j2", "checkpoint-pvc.yaml.j2", TRAINING_TEMPLATES[kind]]


def render(inp: RenderInput | None = None, /, *, validate: bool = True, **kwargs: Any) -> list[dict]:
    """Training manifests for one run, in apply order: run.json ConfigMap, checkpoint PVC,
    (headless Service,) Job / PyTorchJob / JobSet.

    Call as `render(RenderInput(...))` or `render(finetune=..., run_id=..., data_md5=...,
    git_commit=..., operator=..., run_config=...)`. Raises RenderError when the inputs cannot
    give valid manifests."""
    if inp is None:
        inp = RenderInput(**kwargs)
    elif kwargs:
        raise TypeError("pass either a RenderInput or keyword arguments, not both")
    kind, context = _training_context(inp)
    manifests: list[dict] = []
    for name in training_templates(kind):
        manifests.extend(render_template(name, context))
    if validate:
        validate_manifests(manifests, namespace=context["namespace"])
    return manifests


def run_config_for(finetune: FineTune, run_id: str, data_md5: str) -> RunConfig:
    """The run.json a pod gets when the caller has no host-side one (`ftops render`, `ftops plan`):
    built from the spec alone, with the pod's paths."""
    s = finetune.spec
    rc = RunConfig(
        run_id=run_id,
        spec_name=finetune.name,
        base_model={"uri": s.base_model.uri, "revision": s.base_model.revision},
        method=s.method,
        training=s.training,
        data={"train": f"{prepared_dir(finetune.name, data_md5)}/train.jsonl",
              "test": f"{prepared_dir(finetune.name, data_md5)}/test.jsonl", "md5": data_md5},
        output_dir=OUTPUT_DIR,
        checkpoint_dir=CHECKPOINT_DIR,
    )
    return pod_run_config(rc, finetune)


def input_for(finetune: FineTune, data_md5: str, git_commit: str, operator: OperatorConfig,
              run_config: RunConfig | Mapping[str, Any] | None = None, **extra: Any) -> RenderInput:
    """A RenderInput whose run id is the real run identity (controller.identity), for callers
    that start from a spec: `ftops render`, `ftops plan`, the reconciler."""
    from controller.identity import run_id as identity_run_id

    rid = identity_run_id(finetune, data_md5, template_version())
    return RenderInput(
        finetune=finetune, run_id=rid, data_md5=data_md5, git_commit=git_commit, operator=operator,
        run_config=run_config if run_config is not None else run_config_for(finetune, rid, data_md5), **extra,
    )
