"""A spec's serving as one KServe `InferenceService` (pure), for clusters that serve through KServe
(`cluster.servingFlavor: kserve` in the operator config; render_serving dispatches here).

    predictor    the engine: vLLM (`vllm serve --enable-lora --lora-modules <run>=<adapter>
                 --max-lora-rank R --chat-template <the run's recorded template> --dtype bfloat16
                 --tensor-parallel-size G`) on a GPU pool whose engine is vllm, otherwise ftops'
                 embedded engine (`ftops serve engine --adapter <run>=<run dir>`)
    transformer  our gateway (`ftops serve gateway`: retrieval, prompt, citations, limits,
                 metrics), calling the predictor through its Service with the OpenAI API

Why the gateway is the transformer rather than a Deployment beside the InferenceService: it is
KServe's own slot for what runs in front of a model, so the InferenceService's URL (what KServe
users call, and what its ingress, auth and autoscaling are attached to) answers with retrieval and
citations, and the bare engine is reachable only from inside the service. KServe appends
`--model_name/--predictor_host/--http_port` to a transformer's arguments; the container starts
through LAUNCHER, which drops them (the gateway's engine is named in gateway.json instead).

Why these choices:
* RawDeployment mode (annotation): plain Deployments and Services, no Knative, which is what GPU
  pools usually run; replicas are fixed at spec.serving.replicas (min = max);
* the run's adapter is fetched at pod start by the inputs init container every ftops pod uses
  (verified against the run's manifest) and loaded at engine start, so every replica, including
  one that restarts or scales up, serves exactly the adapter the gate passed; a new run is a new
  predictor revision that KServe rolls out;
* the chat template is the one recorded in the run's manifest (train/serve parity): the launcher
  writes manifest.json's `provenance.chatTemplate` (where the trainer records it) to a file vLLM reads (no ConfigMap to keep in step);
* no spec value reaches a shell: the containers run the launcher through `python -c` with their
  arguments as a list.

Validated through KServe's published API models (the `kserve` package: `kserve.models`, the
classes its SDK (de)serialises InferenceServices with): every field we write must be one the
model knows, with the model's type and its required fields; the Kubernetes objects inside (pod
fields, containers, volumes) are checked against the real Kubernetes schemas, as every ftops
manifest is (controller.render.schema).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import threading
import types
from typing import Any

from controller import labels as L
from controller.render.context import CONFIG_DIR, lineage, owner_namespace, toleration_list
from controller.render.errors import RenderError
from controller.render.names import object_name
from controller.render.pods import (
    ModelSource, base_env, container, default_model_source, inputs_container, model_cache_mount, model_cache_volume,
    store_root, with_ephemeral,
)
from controller.render.serving import ADAPTER_DIR, CORPUS_DIR, ServingInput
from controller.render.vllm import max_lora_rank

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
PORT = 8080
"""KServe's container port convention; its Service for each component listens on 80."""
MAX_NAME = 45
"""KServe names the component objects `<name>-predictor`, `<name>-transformer`: room for them."""
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
CHAT_TEMPLATE = "/tmp/chat_template.jinja"
KSERVE_ARGS = ("--model_name", "--predictor_host", "--http_port")

LAUNCHER = (
    "import json, os, sys\n"
    "argv = sys.argv[1:]\n"
    "cut = [i for i, a in enumerate(argv) if a in %r]\n"
    "argv = argv[:cut[0]] if cut else argv\n"
    "src, dst = os.environ.get('FTOPS_CHAT_TEMPLATE_FROM'), os.environ.get('FTOPS_CHAT_TEMPLATE_TO')\n"
    "if src and dst:\n"
    "    with open(src) as f, open(dst, 'w') as out:\n"
    "        out.write(json.load(f)['provenance']['chatTemplate'])\n"
    "os.execvp(argv[0], argv)\n"
) % (KSERVE_ARGS,)
"""Runs its arguments (up to the first one KServe appended), after writing the run's recorded chat
template where vLLM reads it when FTOPS_CHAT_TEMPLATE_FROM/_TO say so (constants, never spec values)."""


def isvc_name(spec_name: str) -> str:
    """A DNS-1035 label (KServe's rule: it starts with a letter) short enough for its components."""
    return object_name(spec_name if spec_name[:1].isalpha() else f"s-{spec_name}", None, "", max_length=MAX_NAME)


def predictor_url(name: str, namespace: str) -> str:
    """The predictor's Service, which KServe names `<name>-predictor` (port 80 to the container's 8080)."""
    return f"http://{name}-predictor.{namespace}.svc.cluster.local"


def engine_for(inp: ServingInput) -> str:
    """vllm on a GPU pool whose operator chose it (gpus.<type>.engine), else the embedded engine."""
    op = inp.operator
    gpu_type = inp.finetune.spec.hardware.gpu_type
    if op.cluster.serving_gpus and gpu_type in op.gpus and op.gpus[gpu_type].engine == "vllm":
        return "vllm"
    return "embedded"


def render_kserve(inp: ServingInput, validate: bool = True) -> list[dict]:
    """ConfigMap (gateway.json, named by its content) and the InferenceService (predictor: the
    engine with the run's adapter; transformer: the gateway)."""
    from controller.render.schema import validate_manifests

    ft, op = inp.finetune, inp.operator
    c = op.cluster
    serving = ft.spec.serving
    if serving is None:
        raise RenderError(f"spec '{ft.name}' has no spec.serving block; there is nothing to serve")
    if not re.fullmatch(r"[0-9a-f]{8,64}", inp.run_id):
        raise RenderError(f"run id '{inp.run_id}' is not 8-64 lowercase hex characters")
    if inp.track != "stable":
        raise RenderError("serving track 'canary': an InferenceService rolls a new run out as a new predictor "
                          "revision; there is no second track to render")
    namespace = owner_namespace(ft, op, inp.namespace)
    labels, _, annotations = lineage(ft, inp.run_id, inp.data_md5, inp.git_commit, "serving")
    name = isvc_name(ft.name)
    root = store_root(op)
    run_uri = inp.run_uri or f"{root}/{ft.name}/{inp.run_id}"
    corpus_uri = None
    if serving.corpus:
        corpus_uri = inp.corpus_uri or f"{root}/inputs/unpublished/{inp.git_commit}/{serving.corpus.strip('/')}"
    engine = engine_for(inp)
    full = ft.spec.method.type == "full"
    model = None if full else (inp.model or default_model_source(ft, op, inp.git_commit))
    replicas = inp.replicas if inp.replicas is not None else serving.replicas

    gateway_json = json.dumps({
        "specName": ft.name, "routes": [{"runId": inp.run_id, "model": inp.run_id, "weight": 100}],
        "engines": [predictor_url(name, namespace)], "corpus": CORPUS_DIR if corpus_uri else None,
        "retriever": serving.retriever, "topK": serving.top_k, "maxTokens": serving.max_tokens,
        "indexCache": "/tmp/index",
    }, indent=2, sort_keys=True) + "\n"
    config_name = object_name(ft.name, hashlib.sha256(gateway_json.encode()).hexdigest()[:16], "gateway")
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True,
                  "metadata": {"name": config_name, "namespace": namespace, "labels": labels, "annotations": annotations},
                  "data": {"gateway.json": gateway_json}}

    def component(pod: dict, **extra_annotations: str) -> dict:
        return {**pod, "serviceAccountName": c.service_account_name, "priorityClassName": c.priority_class_name,
                "labels": {**labels, L.TRACK: "stable"}, "annotations": {**annotations, **extra_annotations},
                "minReplicas": replicas, "maxReplicas": replicas}

    predictor = component(_predictor(inp, engine, full, model, run_uri), **{L.ENGINE: engine})
    transformer = component(_transformer(inp, corpus_uri, config_name))
    isvc = {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels),
                     "annotations": {**annotations, DEPLOYMENT_MODE: "RawDeployment"}},
        "spec": {"predictor": {k: v for k, v in predictor.items() if v not in ("", None)},
                 "transformer": {k: v for k, v in transformer.items() if v not in ("", None)}},
    }
    manifests: list[dict] = [config_map, isvc]
    if validate:
        validate_manifests(manifests, namespace=namespace)
    return manifests


def _launch(built: dict, argv: list[str]) -> dict:
    return {**built, "command": ["python3", "-c", LAUNCHER, *argv]}


def _predictor(inp: ServingInput, engine: str, full: bool, model: ModelSource | None, run_uri: str) -> dict:
    ft, op = inp.finetune, inp.operator
    base = model.pod_path if model is not None else f"{ADAPTER_DIR}/model"  # a full fine-tune is its own model
    c = op.cluster
    gpus = c.serving_gpus if engine == "vllm" else 0
    amounts = {"cpu": c.serving_cpu, "memory": c.serving_memory}
    if c.serving_gpus:
        amounts["nvidia.com/gpu"] = str(c.serving_gpus)
    resources = with_ephemeral({"requests": dict(amounts), "limits": dict(amounts)}, c)
    fetch = [{"name": "adapter", "mountPath": ADAPTER_DIR}]
    inputs = inputs_container(c, ft, [(run_uri, ADAPTER_DIR)], model, fetch)
    mounts = [{"name": "adapter", "mountPath": ADAPTER_DIR, "readOnly": True}, model_cache_mount(),
              {"name": "tmp", "mountPath": "/tmp"}]
    env = base_env(inp.run_id)
    if engine == "vllm":
        if full:
            argv = ["vllm", "serve", f"{ADAPTER_DIR}/model", "--served-model-name", inp.run_id]
        else:
            argv = ["vllm", "serve", base, "--served-model-name", "base", "--enable-lora",
                    "--max-lora-rank", str(max_lora_rank((ft,))), "--max-loras", "1",
                    "--lora-modules", f"{inp.run_id}={ADAPTER_DIR}/model"]
        argv += ["--chat-template", CHAT_TEMPLATE, "--dtype", "bfloat16", "--tensor-parallel-size", str(gpus),
                 "--host", "0.0.0.0", "--port", str(PORT)]
        env += [{"name": "FTOPS_CHAT_TEMPLATE_FROM", "value": f"{ADAPTER_DIR}/manifest.json"},
                {"name": "FTOPS_CHAT_TEMPLATE_TO", "value": CHAT_TEMPLATE}]
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        image = c.vllm_image
    else:
        argv = ["ftops", "serve", "engine", "--host", "0.0.0.0", "--port", str(PORT), "--dtype", "auto"]
        argv += (["--base", f"{ADAPTER_DIR}/model", "--name", inp.run_id] if full
                 else ["--base", base, "--adapter", f"{inp.run_id}={ADAPTER_DIR}"])
        image = c.image
    engine_container = _launch(container(
        "kserve-container", c, [], env, resources, mounts,
        ports=[{"containerPort": PORT, "protocol": "TCP"}],
        readinessProbe={"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 5, "failureThreshold": 3},
        startupProbe={"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 10, "failureThreshold": 90}), argv)
    engine_container["image"] = image
    volumes = [{"name": "adapter", "emptyDir": {}}, model_cache_volume(c), {"name": "tmp", "emptyDir": {}}]
    if engine == "vllm":
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": c.shm_size}})
    gpu_type = ft.spec.hardware.gpu_type
    on_gpus = bool(c.serving_gpus) and gpu_type in op.gpus
    return {"initContainers": [inputs], "containers": [engine_container], "volumes": volumes,
            "nodeSelector": dict(op.gpus[gpu_type].node_selector) if on_gpus else {},
            "tolerations": toleration_list(c.tolerations) if on_gpus else [],
            "terminationGracePeriodSeconds": 60}


def _transformer(inp: ServingInput, corpus_uri: str | None, config_name: str) -> dict:
    c = inp.operator.cluster
    fetch = [{"name": "corpus", "mountPath": CORPUS_DIR}] if corpus_uri else []
    inputs = inputs_container(c, inp.finetune, [(corpus_uri, CORPUS_DIR)] if corpus_uri else [], None, fetch)
    resources = with_ephemeral({"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}, c)
    argv = ["ftops", "serve", "gateway", "--config", f"{CONFIG_DIR}/gateway.json", "--host", "0.0.0.0",
            "--port", str(PORT)]
    gateway = _launch(container(
        "kserve-container", c, [], base_env(inp.run_id), resources,
        [{"name": "gateway-config", "mountPath": CONFIG_DIR, "readOnly": True},
         *({**m, "readOnly": True} for m in fetch), {"name": "tmp", "mountPath": "/tmp"}],
        ports=[{"containerPort": PORT, "protocol": "TCP"}],
        readinessProbe={"httpGet": {"path": "/readyz", "port": PORT}, "periodSeconds": 5, "failureThreshold": 3},
        livenessProbe={"httpGet": {"path": "/healthz", "port": PORT}, "initialDelaySeconds": 30, "periodSeconds": 10,
                       "failureThreshold": 6}), argv)
    volumes = [{"name": "gateway-config", "configMap": {"name": config_name}},
               *([{"name": "corpus", "emptyDir": {}}] if corpus_uri else []), model_cache_volume(c),
               {"name": "tmp", "emptyDir": {}}]
    return {"initContainers": [inputs], "containers": [gateway], "volumes": volumes, "terminationGracePeriodSeconds": 30}


# ---------------------------------------------------------------------------- validation

_MODELS: dict[str, types.ModuleType] = {}
_LOCK = threading.Lock()


def kserve_models() -> types.ModuleType:
    """`kserve.models`, KServe's generated API models, without `kserve/__init__.py`.

    The package's top level imports its model server (FastAPI, gRPC, pandas, ...), none of which
    validating an object needs, so it is installed with --no-deps and only its `models` package
    (which needs six, urllib3 and python-dateutil, the kubernetes client's own dependencies) is
    loaded: the `kserve` package is registered from its location without running its __init__."""
    with _LOCK:
        if "models" in _MODELS:
            return _MODELS["models"]
        if "kserve" not in sys.modules:
            spec = importlib.util.find_spec("kserve")
            if spec is None or not spec.submodule_search_locations:
                raise RenderError("the kserve package is not installed; pip install --no-deps kserve==0.21.0 "
                                  "to validate InferenceServices")
            package = types.ModuleType("kserve")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec
            sys.modules["kserve"] = package
        import kserve.models as models

        _MODELS["models"] = models
        return models


_PRIMITIVES: dict[str, Any] = {
    "str": lambda v: isinstance(v, str), "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "bool": lambda v: isinstance(v, bool),
    "object": lambda v: True, "datetime": lambda v: isinstance(v, str), "date": lambda v: isinstance(v, str),
    "ResourceQuantity": lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
}


def inference_service_problems(doc: dict) -> list[str]:
    """Every reason KServe's API models (and the Kubernetes schemas of what they embed) give
    against `doc`, as `path: problem`; [] when it is valid."""
    problems: list[str] = []
    name = str((doc.get("metadata") or {}).get("name", ""))
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > MAX_NAME:
        problems.append(f"metadata.name: '{name}' must be a DNS-1035 label (a letter first) of at most {MAX_NAME} "
                        "characters (KServe names its components after it)")
    _check(doc, "V1beta1InferenceService", "", problems)
    return problems


def _check(value: Any, type_name: str, path: str, problems: list[str]) -> Any:
    """`value` against the OpenAPI type `type_name` (a kserve model, a Kubernetes type, a list,
    a map or a primitive); returns what to hand a model's constructor."""
    where = path or "."
    inner = re.fullmatch(r"list\[(.+)\]", type_name)
    if inner:
        if not isinstance(value, list):
            problems.append(f"{where}: must be a list")
            return value
        return [_check(v, inner.group(1), f"{path}[{i}]", problems) for i, v in enumerate(value)]
    inner = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if inner:
        if not isinstance(value, dict):
            problems.append(f"{where}: must be a mapping")
            return value
        return {k: _check(v, inner.group(1), f"{path}.{k}", problems) for k, v in value.items()}
    if type_name in _PRIMITIVES:
        if not _PRIMITIVES[type_name](value):
            problems.append(f"{where}: {value!r} is not of type {type_name}")
        return value
    klass = getattr(kserve_models(), type_name, None)
    if klass is None:
        problems += _kubernetes_problems(value, type_name, path)
        return value
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping ({type_name})")
        return value
    by_json = {json_key: attr for attr, json_key in klass.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        attr = by_json.get(key)
        if attr is None:
            problems.append(f"{path + '.' if path else ''}{key}: unknown field of {type_name}")
            continue
        kwargs[attr] = _check(item, klass.openapi_types[attr], f"{path + '.' if path else ''}{key}", problems)
    try:
        klass(**kwargs)  # the model's own checks: required fields, enumerations
    except (ValueError, TypeError) as exc:
        problems.append(f"{where}: {exc}")
    return value


_K8S_GROUPS = ("io.k8s.api.core.v1", "io.k8s.apimachinery.pkg.apis.meta.v1", "io.k8s.api.apps.v1",
               "io.k8s.apimachinery.pkg.api.resource")


def _kubernetes_problems(value: Any, type_name: str, path: str) -> list[str]:
    """A Kubernetes type inside the InferenceService (V1Container, V1ObjectMeta, ...), checked
    against the same strict Kubernetes schemas as every other ftops manifest."""
    from controller.render.schema import _definitions, _schema_errors

    m = re.fullmatch(r"(?:V1|K8sIoApiAppsV1)(\w+)", type_name)
    definitions = _definitions()
    table = definitions.get("$defs") or definitions.get("definitions") or {}
    ref = next((f"{g}.{m.group(1)}" for g in _K8S_GROUPS if m and f"{g}.{m.group(1)}" in table), None)
    if ref is None:
        return [f"{path or '.'}: type {type_name} is in neither KServe's models nor the Kubernetes schemas"]
    return _schema_errors(value, ref, ref=ref, where=path)
