"""The pods ftops runs (training, evaluation, serving) and what they read, as plain values.

Every pod reads its inputs from the artifact store, never from git or DVC: an `inputs` init
container (`python -m controller.podinputs`) fetches the content-addressed bundles the
controller published (the prepared split, the repository files, a run), each file checked
against its manifest, and materialises the base model into the namespace's model cache claim,
which the main container mounts read-only at MODEL_DIR. Store credentials and the hub token
reach the pods only as secretKeyRefs named by the operator config.

Containers, volumes and env lists are built here and reach the templates whole through
`tojson`: one quoted JSON value each, so a spec string can never add a key."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from controller import exitcodes
from controller.catalog import ClusterDefaults, OperatorConfig
from controller.render.context import CONFIG_ERROR_EXIT_CODES, PREEMPTED_EXIT_CODE, secret_env
from controller.render.names import model_cache_key
from controller.spec.finetune import FineTune

MODEL_DIR = "/models"
"""Where the model cache claim is mounted (read-only but for the inputs init container)."""
INPUTS_CONTAINER = "inputs"


@dataclass(frozen=True)
class ModelSource:
    """What the model initializer materialises: a hub id at a revision, an object-store URI (a
    bundle the controller published for a repository path), or a directory."""

    uri: str
    revision: str | None = None

    @property
    def cache_key(self) -> str:
        return model_cache_key(self.uri, self.revision)

    @property
    def pod_path(self) -> str:
        """The model's directory inside every pod that mounts the cache."""
        return f"{MODEL_DIR}/{self.cache_key}"


def store_root(operator: OperatorConfig) -> str:
    return operator.cluster.artifact_store.uri.rstrip("/")


def default_model_source(finetune: FineTune, operator: OperatorConfig, git_commit: str) -> ModelSource:
    """The base model as the spec names it. A repository path becomes the bundle the controller
    publishes at submit; before that (`ftops render`, `ftops plan`) it is named by commit."""
    bm = finetune.spec.base_model
    if bm.kind == "path":
        return ModelSource(f"{store_root(operator)}/inputs/unpublished/{git_commit}/{bm.uri.strip('/')}")
    return ModelSource(bm.uri, bm.revision)


def store_env(c: ClusterDefaults) -> list[dict]:
    """The artifact store for a pod: its URI, endpoint and region as values, credentials only as
    references to Secrets in the pod's own namespace."""
    store = c.artifact_store
    env = [{"name": "FTOPS_STORE", "value": store.uri}]
    if store.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": store.endpoint_url})
    if store.region:
        env.append({"name": "AWS_REGION", "value": store.region})
    env += [secret_env(s.env, s.secret, s.key) for s in store.credentials]
    return env


def base_env(run_id: str) -> list[dict]:
    return [
        {"name": "FTOPS_RUN_ID", "value": run_id},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def container(name: str, c: ClusterDefaults, command: list[str], env: list[dict], resources: dict,
              mounts: list[dict], **extra: Any) -> dict:
    """One container: non-root, no privilege escalation, read-only root (writes go to volumes)."""
    out = {
        "name": name,
        "image": c.image,
        "imagePullPolicy": c.image_pull_policy,
        "command": command,
        "env": env,
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }
    out.update({k: v for k, v in extra.items() if v})
    return out


def model_secret_env(finetune: FineTune, c: ClusterDefaults) -> list[dict]:
    """The hub token for the model initializer: the spec's own secretRef, else the operator's."""
    bm = finetune.spec.base_model
    if bm.credentials is not None:
        return [secret_env("HF_TOKEN" if bm.kind == "hf" else "FTOPS_BASE_MODEL_TOKEN", bm.credentials.name, bm.credentials.key)]
    token = c.model_cache.hf_token
    if token is not None and bm.kind == "hf":
        return [secret_env(token.env, token.secret, token.key)]
    return []


def inputs_container(c: ClusterDefaults, finetune: FineTune, bundles: list[tuple[str, str]], model: ModelSource | None,
                     mounts: list[dict]) -> dict:
    """The init container that fetches `bundles` ([uri, dest]) verified and materialises `model`
    into the cache. Its values arrive as JSON in env vars (no shell parses a spec value)."""
    env = [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"},
           {"name": "HF_HOME", "value": "/tmp/hf"},
           {"name": "HF_HUB_OFFLINE", "value": "0" if model is not None and model.uri.startswith("hf://") else "1"},
           {"name": "FTOPS_INPUTS", "value": json.dumps([list(b) for b in bundles])},
           {"name": "FTOPS_BASE_MODEL", "value": json.dumps(
               {"uri": model.uri, "revision": model.revision, "cache": MODEL_DIR} if model is not None else None,
               sort_keys=True)},
           *store_env(c), *(model_secret_env(finetune, c) if model is not None else [])]
    resources = {"requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "1Gi"},
                 "limits": {"cpu": "2", "memory": "4Gi"}}
    return container(INPUTS_CONTAINER, c, ["python", "-m", "controller.podinputs"], env, resources,
                     [*mounts, {"name": "model-cache", "mountPath": MODEL_DIR}, {"name": "tmp", "mountPath": "/tmp"}])


def model_cache_volume(c: ClusterDefaults) -> dict:
    return {"name": "model-cache", "persistentVolumeClaim": {"claimName": c.model_cache.claim}}


def model_cache_mount() -> dict:
    return {"name": "model-cache", "mountPath": MODEL_DIR, "readOnly": True}


def pod_failure_rules(main: str) -> list[dict]:
    """A config error (78) of the main container or the inputs container fails the Job at once;
    a disruption (preemption, eviction) and the preempted exit (143, checkpoint written) do not
    count against backoffLimit; anything else (1 = torchrun's any-worker failure, 75, 137) does."""
    return [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": main, "operator": "In", "values": list(CONFIG_ERROR_EXIT_CODES)}},
        {"action": "FailJob", "onExitCodes": {"containerName": INPUTS_CONTAINER, "operator": "In",
                                              "values": [exitcodes.CONFIG_ERROR]}},
        {"action": "Ignore", "onExitCodes": {"containerName": main, "operator": "In", "values": [PREEMPTED_EXIT_CODE]}},
    ]


def with_ephemeral(resources: dict, c: ClusterDefaults) -> dict:
    """Requests = limits for CPU, memory and GPUs; scratch disk requested (and capped)."""
    requests = {**resources["requests"], "ephemeral-storage": c.ephemeral_storage}
    limits = {**resources["limits"], "ephemeral-storage": c.ephemeral_storage}
    return {"requests": requests, "limits": limits}


def model_cache_claim(namespace: str, operator: OperatorConfig) -> dict:
    """The namespace's model cache claim: created once (by the first run there), owned by none,
    shared read-only by every training, evaluation and serving pod of the namespace."""
    from controller.render.schema import validate_manifests

    mc = operator.cluster.model_cache
    spec: dict[str, Any] = {"accessModes": list(mc.access_modes), "resources": {"requests": {"storage": mc.storage}}}
    if mc.storage_class:
        spec["storageClassName"] = mc.storage_class
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": mc.claim, "namespace": namespace,
                          "labels": {"app.kubernetes.io/managed-by": "ftops", "app.kubernetes.io/name": "ftops",
                                     "app.kubernetes.io/component": "model-cache"}},
             "spec": spec}
    validate_manifests([claim], namespace=namespace)
    return claim
