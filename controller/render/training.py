"""Training manifests for one run: the run.json ConfigMap, the checkpoint PVC, and the
workload of the operator's flavour: a Job (one node), an Indexed Job + headless Service, a
JobSet, or a Kubeflow Trainer v2 TrainJob on the operator's ClusterTrainingRuntime.

The pod reads its split and base model through the inputs init container (render.pods), trains
into an emptyDir, and uploads the finished run to the artifact store itself (manifest last,
controller.train.upload). Checkpoints live on the run's own claim, which outlives any attempt:
a retried or preempted pod resumes from the newest one."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from controller import labels as L
from controller.catalog import OperatorConfig
from controller.render.context import (
    CHECKPOINT_DIR, CONFIG_DIR, DATA_DIR, MASTER_PORT, OUTPUT_DIR, lineage, owner_namespace, pod_resources,
    pod_run_config, toleration_list,
)
from controller.render.errors import RenderError
from controller.render.names import MAX_NAME, object_name, run_label
from controller.render.pods import (
    ModelSource, base_env, container, default_model_source, inputs_container, model_cache_mount, model_cache_volume,
    pod_failure_rules, store_env, store_root, with_ephemeral,
)
from controller.render.schema import validate_manifests
from controller.render.templates import TRAINING_TEMPLATES, render_template, template_version
from controller.runconfig import RunConfig
from controller.spec.finetune import FineTune

FLAVORS = ("job", "jobset", "trainjob")
TRAINJOB_CONTAINER = "node"
"""The trainer container's name in a Kubeflow Trainer v2 runtime (its torch plugin looks for it)."""
RUNTIME_PATCH_MANAGER = "ftops.dev/controller"


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
    """Override the operator's trainingFlavor (job | jobset | trainjob); None: the operator's."""
    data_uri: str | None = None
    """The published split (a bundle in the artifact store); None: named by the data md5 (render, plan)."""
    model: ModelSource | None = None
    """What the model initializer materialises; None: the spec's base model."""



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
    if flavor not in FLAVORS:
        raise RenderError(f"training flavour '{flavor}' is not one of {', '.join(FLAVORS)}")
    multi = hw.nodes > 1
    kind = "trainjob" if flavor == "trainjob" else (("indexed" if flavor == "job" else flavor) if multi else "job")
    root = store_root(op)
    if not re.match(r"^[a-z][a-z0-9+.-]*://", root):
        raise RenderError(f"operator config: cluster.artifactStore.uri '{root}' must be an object-store URI "
                          "(s3://bucket/prefix, gs://, az://): pods read their inputs from it and write runs to it")

    labels, selector, annotations = lineage(ft, inp.run_id, inp.data_md5, inp.git_commit, "training")
    annotations = {**annotations, L.BASE_MODEL: ft.spec.base_model.uri + (
        f"@{ft.spec.base_model.revision}" if ft.spec.base_model.revision else "")}
    job_name = object_name(ft.name, inp.run_id, "train", max_length=52 if kind in ("jobset", "trainjob") else MAX_NAME - 4)
    names = {
        "job": job_name,
        "runConfig": object_name(ft.name, inp.run_id, "run"),
        "checkpoints": object_name(ft.name, inp.run_id, "ckpt"),
        "workers": object_name(ft.name, inp.run_id, "workers"),
        "runtime": c.training_runtime,
    }
    job_labels = dict(labels)
    if c.kueue_queue:
        job_labels[L.QUEUE] = c.kueue_queue
    pod_labels = {**labels, L.ROLE: "trainer"}
    pod_selector = {L.RUN_ID: run_label(inp.run_id), L.ROLE: "trainer"}

    model = inp.model or default_model_source(ft, op, inp.git_commit)
    data_uri = inp.data_uri or f"{root}/inputs/unpublished/data-{inp.data_md5}"
    run_uri = f"{root}/{ft.name}/{inp.run_id}"
    gpus = 0 if hw.gpu_type == "cpu" else hw.gpus_per_node
    config_path = f"{CONFIG_DIR}/run.json"
    main_name = TRAINJOB_CONTAINER if kind == "trainjob" else "trainer"
    # One command for every world size: with nodes or GPUs > 1 the trainer re-executes itself
    # through torchrun (controller.train.launch), reading the node rank from JOB_COMPLETION_INDEX
    # (Indexed Jobs, JobSet) or PET_NODE_RANK (Trainer v2) and the rendezvous host from MASTER_ADDR.
    command = ["python", "-m", "controller.train", "--config", config_path]
    env = [*base_env(inp.run_id), {"name": "FTOPS_RUN_URI", "value": run_uri}, *store_env(c)]
    ports: list[dict] = []
    master = {"indexed": f"{job_name}-0.{names['workers']}", "jobset": f"{job_name}-node-0-0.{names['workers']}",
              "trainjob": f"{job_name}-node-0-0.{job_name}"}.get(kind, "") if multi else ""
    if master:
        env += [{"name": "MASTER_ADDR", "value": master}, {"name": "MASTER_PORT", "value": str(MASTER_PORT)}]
        ports = [{"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"}]

    resources = with_ephemeral(pod_resources(op, hw.gpu_type, gpus), c)
    trainer_mounts = [
        {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "data", "mountPath": DATA_DIR, "readOnly": True},
        model_cache_mount(),
        {"name": "checkpoints", "mountPath": CHECKPOINT_DIR},
        {"name": "output", "mountPath": OUTPUT_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    inputs = inputs_container(c, ft, [(data_uri, DATA_DIR)], model, [{"name": "data", "mountPath": DATA_DIR}])
    trainer = container(main_name, c, command, env, resources, trainer_mounts, ports=ports)
    volumes = [
        {"name": "run-config", "configMap": {"name": names["runConfig"], "items": [{"key": "run.json", "path": "run.json"}]}},
        {"name": "data", "emptyDir": {}},
        model_cache_volume(c),
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": names["checkpoints"]}},
        {"name": "output", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": c.shm_size if gpus else "1Gi"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    tolerations = list(c.tolerations) + (list(c.spot_tolerations) if hw.spot else [])
    pod = {
        "labels": pod_labels,
        "annotations": annotations,
        "restartPolicy": "Never",  # retries belong to the Job controller and its podFailurePolicy
        "serviceAccountName": c.service_account_name,
        "subdomain": names["workers"] if kind == "indexed" else "",
        "priorityClassName": c.priority_class_name,
        "nodeSelector": dict(op.gpus[hw.gpu_type].node_selector),
        "tolerations": toleration_list(tolerations if gpus else [t for t in tolerations if t.key != "nvidia.com/gpu"]),
        "terminationGracePeriodSeconds": 120,
        "runAsUser": c.run_as_user,
        "initContainers": [inputs],
        "containers": [trainer],
        "volumes": volumes,
    }
    job = {
        "backoffLimit": c.backoff_limit,
        "activeDeadlineSeconds": int(math.ceil(hw.max_hours * 3600)),
        "ttlSecondsAfterFinished": c.ttl_seconds_after_finished,
        "podFailureRules": pod_failure_rules(main_name),
        "indexed": kind == "indexed",
        "nodes": hw.nodes,
        "masterPort": MASTER_PORT,
    }
    pod_rc = pod_run_config(rc, ft, model.pod_path)
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
        "job": job,
        "checkpoint": checkpoint,
        "runJson": run_json,
    }
    if kind == "trainjob":
        context["trainJob"] = _train_job(pod, trainer, inputs, hw.nodes, max(gpus, 1), c.image)
    return kind, context


def _train_job(pod: dict, trainer: dict, inputs: dict, nodes: int, procs: int, image: str) -> dict:
    """A TrainJob's trainer and the per-run patch of its runtime: what Trainer v2 lets a job set
    (env, volumes, mounts, placement); the commands of the runtime's init containers are fixed
    there, which is why the inputs container reads everything from env."""
    pod_patch = {
        "volumes": pod["volumes"],
        "initContainers": [{"name": inputs["name"], "env": inputs["env"], "volumeMounts": inputs["volumeMounts"]}],
        "containers": [{"name": trainer["name"], "volumeMounts": trainer["volumeMounts"]}],
        "nodeSelector": pod["nodeSelector"],
        "tolerations": pod["tolerations"],
    }
    if pod["serviceAccountName"]:
        pod_patch["serviceAccountName"] = pod["serviceAccountName"]
    return {
        "trainer": {"image": image, "command": trainer["command"], "env": trainer["env"], "numNodes": nodes,
                    "numProcPerNode": procs, "resourcesPerNode": trainer["resources"]},
        "runtimePatches": [{"manager": RUNTIME_PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {
                "metadata": {"labels": pod["labels"], "annotations": pod["annotations"]}, "spec": pod_patch}}}}],
        }}}}],
    }


def training_templates(kind: str) -> list[str]:
    return ["run-configmap.yaml.j2", "checkpoint-pvc.yaml.j2", TRAINING_TEMPLATES[kind]]


def render(inp: RenderInput | None = None, /, *, validate: bool = True, **kwargs: Any) -> list[dict]:
    """Training manifests for one run, in apply order: run.json ConfigMap, checkpoint PVC,
    (headless Service,) Job / JobSet / TrainJob.

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
    built from the spec alone (the render rewrites its paths to the pod's)."""
    s = finetune.spec
    return RunConfig(
        run_id=run_id,
        spec_name=finetune.name,
        base_model={"uri": s.base_model.uri, "revision": s.base_model.revision},
        method=s.method,
        training=s.training,
        data={"train": f"{DATA_DIR}/train.jsonl", "test": f"{DATA_DIR}/test.jsonl", "md5": data_md5},
        output_dir=OUTPUT_DIR,
        checkpoint_dir=CHECKPOINT_DIR,
    )


def input_for(finetune: FineTune, data_md5: str, git_commit: str, operator: OperatorConfig,
              run_config: RunConfig | Mapping[str, Any] | None = None, replay_md5: str | None = None,
              **extra: Any) -> RenderInput:
    """A RenderInput whose run id is the real run identity (controller.identity), for callers
    that start from a spec: `ftops render`, `ftops plan`, the reconciler. `replay_md5`: the
    version of spec.training.replay.path, where the spec replays a file."""
    from controller.identity import run_id as identity_run_id

    rid = identity_run_id(finetune, data_md5, template_version(), replay_md5)
    return RenderInput(
        finetune=finetune, run_id=rid, data_md5=data_md5, git_commit=git_commit, operator=operator,
        run_config=run_config if run_config is not None else run_config_for(finetune, rid, data_md5), **extra,
    )
