"""What every rendered object shares: tenancy (the owner's namespace), lineage labels and
annotations, where things live inside a pod, resources, tolerations, secret references.

Pure: built from plain dicts, lists and numbers (templates get values, never code)."""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from controller import exitcodes
from controller import labels as L
from controller.catalog import OperatorConfig
from controller.render.errors import RenderError
from controller.render.names import MAX_NAME, run_label
from controller.render.templates import template_version
from controller.runconfig import RunConfig
from controller.spec.base import RFC1123_LABEL
from controller.spec.finetune import FineTune

CONFIG_ERROR_EXIT_CODES = (exitcodes.CONFIG_ERROR,)
"""Trainer exits that retrying cannot fix (78, EX_CONFIG: bad run.json, missing or invalid data,
unsupported model or precision). The Job fails at once on them. Exit 1 is not among them: it is
what torchrun returns for any worker failure, and a lost worker is worth a retry."""
PREEMPTED_EXIT_CODE = exitcodes.PREEMPTED
"""128 + SIGTERM: the trainer checkpointed after a termination notice; the replacement pod
resumes, and the attempt does not count against backoffLimit. Any other exit (1 = unexpected,
75 = temporary, 137 = OOM-killed, ...) counts against backoffLimit. See controller.exitcodes."""

MANAGED_BY = {L.MANAGED_BY: L.MANAGED_BY_VALUE}

# Where things live inside a pod. run.json / eval.json / serve.json are rewritten to point here.
CONFIG_DIR = "/etc/ftops"
DATA_DIR = "/workspace/data"
"""The prepared split (train.jsonl, test.jsonl), fetched from the store by the inputs container."""
REPO_DIR = "/workspace/repo"
"""The repository's files at the commit (evaluation sets, corpus), fetched from the store."""
CHECKPOINT_DIR = "/workspace/checkpoints"
OUTPUT_DIR = "/workspace/output"
MASTER_PORT = 29500


def owner_namespace(finetune: FineTune, operator: OperatorConfig, requested: str | None = None) -> str:
    """The one namespace a spec may use: its owner's, from the operator's tenancy map.

    Refuses a requested namespace that is not the owner's, and an owner whose namespace (by the
    prefix rule) is one the map gives to another owner: a spec never reaches another owner's
    namespace, and so never their Secrets or PVCs (references are namespace-local)."""
    owner = finetune.metadata.owner
    tenancy = operator.tenancy
    namespace = tenancy.namespace_for(owner)
    others = {o for o, ns in tenancy.namespaces.items() if ns == namespace and o != owner}
    if owner not in tenancy.namespaces:
        others |= {o for o in tenancy.namespaces if f"{tenancy.namespace_prefix}{o}" == namespace and o != owner}
    if others:
        raise RenderError(
            f"spec '{finetune.name}': owner '{owner}' maps to namespace '{namespace}', which the operator config "
            f"gives to {sorted(others)}; add an explicit tenancy.namespaces entry for '{owner}'"
        )
    if requested is not None and requested != namespace:
        raise RenderError(
            f"spec '{finetune.name}' (owner '{owner}') may only target namespace '{namespace}', not '{requested}': "
            "a spec can never reach another owner's namespace, secrets or PVCs"
        )
    if not RFC1123_LABEL.match(namespace) or len(namespace) > MAX_NAME:
        raise RenderError(f"namespace '{namespace}' for owner '{owner}' is not an RFC 1123 label of at most 63 characters")
    return namespace


def _spec_labels(finetune: FineTune) -> dict[str, str]:
    labels = dict(finetune.metadata.labels)
    for key in labels:
        if key.startswith(L.RESERVED_PREFIXES) or key in L.RESERVED_KEYS:
            raise RenderError(
                f"spec '{finetune.name}': metadata.labels key '{key}' is reserved (ftops lineage or a scheduler/controller "
                "key); choose another key"
            )
    return labels


def lineage(finetune: FineTune, run_id: str | None, data_md5: str, git_commit: str, component: str) -> tuple[dict, dict, dict]:
    """(labels, selector labels, annotations) for every object of a run."""
    selector = {
        L.NAME: "ftops",
        L.INSTANCE: finetune.name,
        L.COMPONENT: component,
        L.SPEC: finetune.name,
    }
    labels = {**_spec_labels(finetune), **selector, **MANAGED_BY, L.OWNER: finetune.metadata.owner}
    annotations = {
        L.SPEC: finetune.name,
        L.GIT_COMMIT: git_commit,
        L.DATA_MD5: data_md5,
        L.TEMPLATE_VERSION: template_version(),
    }
    if run_id:
        labels[L.RUN_ID] = run_label(run_id)
        annotations[L.RUN_ID] = run_id
    if re.fullmatch(r"[0-9a-f]{7,40}", git_commit):
        labels[L.GIT_COMMIT] = git_commit
    if re.fullmatch(r"[0-9a-f]{32}", data_md5):
        labels[L.DATA_MD5] = data_md5
    return labels, selector, annotations


def toleration_list(items) -> list[dict]:
    out = []
    for t in items:
        d = {"key": t.key, "operator": t.operator}
        if t.value is not None:
            d["value"] = t.value
        if t.effect is not None:
            d["effect"] = t.effect
        out.append(d)
    return out


def secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def pod_run_config(run_config: RunConfig | Mapping[str, Any], finetune: FineTune, base_model_dir: str) -> RunConfig:
    """run.json as the pod sees it: data, model, checkpoint and output paths point at the volumes
    the template mounts (the local backend uses host paths; the trainer reads only this file).
    The split's sha256 stays: the trainer checks the fetched files against it."""
    rc = run_config if isinstance(run_config, RunConfig) else RunConfig.model_validate_json(json.dumps(dict(run_config)))
    hw = finetune.spec.hardware
    return rc.model_copy(
        update={
            "base_model": rc.base_model.model_copy(update={"uri": base_model_dir}),
            "data": rc.data.model_copy(update={"train": f"{DATA_DIR}/train.jsonl", "test": f"{DATA_DIR}/test.jsonl"}),
            "output_dir": OUTPUT_DIR,
            "checkpoint_dir": CHECKPOINT_DIR,
            "distributed": rc.distributed.model_copy(update={"nodes": hw.nodes, "gpus_per_node": hw.gpus_per_node}),
            "device": "cpu" if hw.gpu_type == "cpu" else "cuda",
        }
    )


def pod_resources(operator: OperatorConfig, gpu_type: str, gpus: int) -> dict:
    c = operator.cluster
    if gpu_type == "cpu":
        amounts = {"cpu": c.cpu_only_cpu, "memory": c.cpu_only_memory}
    else:
        amounts = {"cpu": _scale(c.cpu_per_gpu, gpus), "memory": _scale(c.memory_per_gpu, gpus), "nvidia.com/gpu": str(gpus)}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _scale(quantity: str, times: int) -> str:
    """'8' x 2 -> '16'; '48Gi' x 2 -> '96Gi'. Quantities in the operator config are simple."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity)
    if not m:
        raise RenderError(f"operator config: resource quantity '{quantity}' must be a number with an optional unit")
    value = float(m.group(1)) * times
    text = str(int(value)) if value == int(value) else f"{value:g}"
    return text + m.group(2)
