"""Serving manifests for one run: serve.json ConfigMap, Deployment (per spec and track),
Service (per spec, so it stays put as runs roll).

The server's pods get exactly what the gate passed: the inputs init container fetches the run
(adapter and manifest, verified) and the published corpus version from the artifact store, and
materialises the base model into the model cache; serve.json points at those paths."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from controller import labels as L
from controller.catalog import OperatorConfig
from controller.render.context import CONFIG_DIR, lineage, owner_namespace, toleration_list
from controller.render.pods import (
    ModelSource, base_env, container, default_model_source, inputs_container, model_cache_mount, model_cache_volume,
    store_root, with_ephemeral,
)
from controller.render.errors import RenderError
from controller.render.names import object_name
from controller.render.schema import validate_manifests
from controller.render.templates import SERVING_TEMPLATES, render_template
from controller.spec.finetune import FineTune


@dataclass(frozen=True)
class ServingInput:
    """What a serving render depends on (used by the serving issue)."""

    finetune: FineTune
    run_id: str
    data_md5: str
    git_commit: str
    operator: OperatorConfig
    replicas: int | None = None
    track: str = "stable"
    """'stable' or 'canary': a canary Deployment runs beside the stable one behind one Service."""
    namespace: str | None = None
    run_uri: str | None = None
    """The run in the artifact store; None: `<store>/<spec>/<run-id>`."""
    corpus_uri: str | None = None
    """The corpus version the gate passed, published as a bundle; None: named by commit (render, plan)."""
    model: ModelSource | None = None
    """The base model the run was trained on; None: the spec's."""


def render_serving(inp: ServingInput | None = None, /, *, validate: bool = True, **kwargs: Any) -> list[dict]:
    """Serving manifests for one run: ConfigMap (serve.json), Deployment, Service (port 8000,
    readiness /readyz, liveness /healthz). The Service name is per spec, so it stays put as runs
    roll; the Deployment is per spec and track, so a new run is a rolling update."""
    if inp is None:
        inp = ServingInput(**kwargs)
    if inp.operator.cluster.serving_flavor == "kserve":
        from controller.render.kserve import render_kserve

        return render_kserve(inp, validate=validate)
    context = _serving_context(inp)
    manifests: list[dict] = []
    for name in SERVING_TEMPLATES:
        manifests.extend(render_template(name, context))
    if validate:
        validate_manifests(manifests, namespace=context["namespace"])
    return manifests


ADAPTER_DIR = "/workspace/adapter"
"""The run (manifest.json, model/...) fetched from the store: serve.json's `adapter`."""
CORPUS_DIR = "/workspace/corpus"


def _serving_context(inp: ServingInput) -> dict:
    ft, op = inp.finetune, inp.operator
    c = op.cluster
    serving = ft.spec.serving
    if serving is None:
        raise RenderError(f"spec '{ft.name}' has no spec.serving block; there is nothing to serve")
    if inp.track not in ("stable", "canary"):
        raise RenderError(f"serving track '{inp.track}' must be 'stable' or 'canary'")
    if not re.fullmatch(r"[0-9a-f]{8,64}", inp.run_id):
        raise RenderError(f"run id '{inp.run_id}' is not 8-64 lowercase hex characters")
    namespace = owner_namespace(ft, op, inp.namespace)
    labels, selector, annotations = lineage(ft, inp.run_id, inp.data_md5, inp.git_commit, "serving")
    selector = {**selector, L.TRACK: inp.track}
    service_selector = {k: v for k, v in selector.items() if k != L.TRACK}
    pod_labels = {**labels, L.TRACK: inp.track}
    root = store_root(op)
    run_uri = inp.run_uri or f"{root}/{ft.name}/{inp.run_id}"
    model = inp.model or default_model_source(ft, op, inp.git_commit)
    corpus_uri = None
    if serving.corpus:
        corpus_uri = inp.corpus_uri or f"{root}/inputs/unpublished/{inp.git_commit}/{serving.corpus.strip('/')}"
    gpus = c.serving_gpus
    serve_config = {
        "runId": inp.run_id,
        "specName": ft.name,
        "adapter": ADAPTER_DIR,
        "baseModel": {"uri": model.pod_path, "revision": model.revision},
        "corpus": CORPUS_DIR if corpus_uri else None,
        "retriever": serving.retriever,
        "topK": serving.top_k,
        "maxTokens": serving.max_tokens,
        "port": c.serving_port,
        "device": "cuda" if gpus else "cpu",
        "indexCache": "/tmp/index",
    }
    serve_json = json.dumps(serve_config, indent=2, sort_keys=True) + "\n"
    names = {
        # named by content: a changed serve.json is a new (immutable) ConfigMap, never an edit of one
        "servingConfig": object_name(ft.name, hashlib.sha256(serve_json.encode()).hexdigest()[:16], "serve"),
        "deployment": object_name(ft.name, None, "serve" if inp.track == "stable" else "canary"),
        "service": object_name(ft.name, None, "serve"),
    }
    amounts = {"cpu": c.serving_cpu, "memory": c.serving_memory}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    resources = with_ephemeral({"requests": dict(amounts), "limits": dict(amounts)}, c)
    bundles = [(run_uri, ADAPTER_DIR)] + ([(corpus_uri, CORPUS_DIR)] if corpus_uri else [])
    fetch_mounts = [{"name": "adapter", "mountPath": ADAPTER_DIR}] + (
        [{"name": "corpus", "mountPath": CORPUS_DIR}] if corpus_uri else [])
    inputs = inputs_container(c, ft, bundles, model, fetch_mounts)
    port = c.serving_port
    server = container(
        "server", c,
        ["ftops", "serve", "--config", f"{CONFIG_DIR}/serve.json", "--host", "0.0.0.0", "--port", str(port)],
        base_env(inp.run_id), resources,
        [{"name": "serve-config", "mountPath": CONFIG_DIR, "readOnly": True},
         *({**m, "readOnly": True} for m in fetch_mounts), model_cache_mount(), {"name": "tmp", "mountPath": "/tmp"}],
        ports=[{"name": "http", "containerPort": port, "protocol": "TCP"}],
        readinessProbe={"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3},
        livenessProbe={"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 30, "periodSeconds": 10,
                       "failureThreshold": 6},
    )
    volumes = [{"name": "serve-config", "configMap": {"name": names["servingConfig"]}},
               {"name": "adapter", "emptyDir": {}}, *([{"name": "corpus", "emptyDir": {}}] if corpus_uri else []),
               model_cache_volume(c), {"name": "tmp", "emptyDir": {}}]
    gpu_type = ft.spec.hardware.gpu_type
    context = {
        "namespace": namespace,
        "names": names,
        "labels": labels,
        "annotations": annotations,
        "selector": selector,
        "serviceSelector": service_selector,
        "pod": {
            "labels": pod_labels,
            "annotations": annotations,
            "restartPolicy": "Always",
            "serviceAccountName": c.service_account_name,
            "subdomain": "",
            "priorityClassName": c.priority_class_name,
            "nodeSelector": dict(op.gpus[gpu_type].node_selector) if gpus and gpu_type in op.gpus else {},
            "tolerations": toleration_list(c.tolerations) if gpus else [],
            "terminationGracePeriodSeconds": 30,
            "runAsUser": c.run_as_user,
            "initContainers": [inputs],
            "containers": [server],
            "volumes": volumes,
        },
        "serving": {"replicas": inp.replicas if inp.replicas is not None else serving.replicas, "port": port},
        "serveJson": serve_json,
    }
    return context
