"""Serving manifests for one run: serve.json ConfigMap, Deployment (per spec and track),
Service (per spec, so it stays put as runs roll)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from controller import labels as L
from controller.catalog import OperatorConfig
from controller.render.context import CONFIG_DIR, lineage, owner_namespace, secret_env, toleration_list
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
    adapter_uri: str
    """Where the run's model artifacts are: a path relative to the artifacts claim
    (`<spec>/<run-id>/model`) or a URI the server resolves itself (s3://...)."""
    data_md5: str
    git_commit: str
    operator: OperatorConfig
    replicas: int | None = None
    track: str = "stable"
    """'stable' or 'canary': a canary Deployment runs beside the stable one behind one Service."""
    namespace: str | None = None


def render_serving(inp: ServingInput | None = None, /, *, validate: bool = True, **kwargs: Any) -> list[dict]:
    """Serving manifests for one run: ConfigMap (serve.json), Deployment, Service (port 8000,
    readiness /readyz, liveness /healthz). The Service name is per spec, so it stays put as runs
    roll; the Deployment is per spec and track, so a new run is a rolling update."""
    if inp is None:
        inp = ServingInput(**kwargs)
    context = _serving_context(inp)
    manifests: list[dict] = []
    for name in SERVING_TEMPLATES:
        manifests.extend(render_template(name, context))
    if validate:
        validate_manifests(manifests, namespace=context["namespace"])
    return manifests


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
    names = {
        "servingConfig": object_name(ft.name, inp.run_id, "serve"),
        "deployment": object_name(ft.name, None, "serve" if inp.track == "stable" else "canary"),
        "service": object_name(ft.name, None, "serve"),
        "artifacts": c.artifacts_claim,
    }
    adapter_local = not re.match(r"^[a-z0-9]+://", inp.adapter_uri)
    if adapter_local and (inp.adapter_uri.startswith("/") or ".." in inp.adapter_uri.split("/")):
        raise RenderError(f"adapter location '{inp.adapter_uri}' must be relative to the artifacts claim, without '..'")
    serve_config = {
        "runId": inp.run_id,
        "specName": ft.name,
        "adapter": "/workspace/adapter" if adapter_local else inp.adapter_uri,
        "baseModel": {"uri": ft.spec.base_model.uri, "revision": ft.spec.base_model.revision},
        "corpus": serving.corpus,
        "retriever": serving.retriever,
        "topK": serving.top_k,
        "maxTokens": serving.max_tokens,
        "port": c.serving_port,
    }
    gpus = c.serving_gpus
    resources = {"cpu": c.serving_cpu, "memory": c.serving_memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    env = [{"name": "FTOPS_RUN_ID", "value": inp.run_id}, {"name": "HOME", "value": "/tmp"},
           {"name": "HF_HOME", "value": "/tmp/hf"}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if ft.spec.base_model.credentials is not None:
        cred = ft.spec.base_model.credentials
        env.append(secret_env("HF_TOKEN" if ft.spec.base_model.kind == "hf" else "FTOPS_BASE_MODEL_TOKEN", cred.name, cred.key))
    context = {
        "namespace": namespace,
        "names": names,
        "labels": labels,
        "podLabels": pod_labels,
        "annotations": annotations,
        "selector": selector,
        "serviceSelector": service_selector,
        "pod": {
            "serviceAccountName": c.service_account_name,
            "priorityClassName": c.priority_class_name,
            "nodeSelector": {},
            "tolerations": toleration_list(c.tolerations) if gpus else [],
            "runAsUser": c.run_as_user,
            "image": c.image,
            "imagePullPolicy": c.image_pull_policy,
            "resources": {"requests": dict(resources), "limits": dict(resources)},
        },
        "serving": {
            "replicas": inp.replicas if inp.replicas is not None else serving.replicas,
            "port": c.serving_port,
            "command": ["ftops", "serve", "--config", f"{CONFIG_DIR}/serve.json", "--host", "0.0.0.0",
                        "--port", str(c.serving_port)],
            "env": env,
        },
        "paths": {
            "configDir": CONFIG_DIR,
            "adapterDir": "/workspace/adapter",
            "adapterSubPath": inp.adapter_uri if adapter_local else f"{ft.name}/{inp.run_id}",
        },
        "serveJson": json.dumps(serve_config, indent=2, sort_keys=True) + "\n",
    }
    return context
