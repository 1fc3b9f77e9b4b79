"""An engine pool on vLLM (pure): one Deployment of vLLM replicas serving every adapter of the
specs that share a base model, each replica with the adapter sidecar, behind a headless Service.

    vllm serve /models/<cache key>  --served-model-name base --enable-lora --max-lora-rank R
        --max-loras N --chat-template <the runs' recorded template> --dtype bfloat16
        --tensor-parallel-size G --port 8000
    env VLLM_ALLOW_RUNTIME_LORA_UPDATING=True   (the load/unload endpoints the sidecar calls)

Why these choices:
* one pool per base model: vLLM batches requests for different LoRA adapters together over one
  copy of the base, so specs that share a base share the GPUs (`--max-loras` adapters per batch);
* the chat template is the one recorded in the runs' manifests (train/serve parity), shipped in a
  ConfigMap named by its content; runs of one pool must share it (a different template is a
  different pool);
* `--max-lora-rank` is the largest LoRA rank among the pool's specs, rounded up to a rank vLLM
  accepts;
* the adapters are not baked in: the sidecar (controller.serve.sidecar) syncs each replica to the
  desired set in the artifact store through vLLM's own runtime API, so a restarted or added
  replica catches up by itself (vllm-project/vllm#12174); the shared `adapters` emptyDir is where
  it puts the verified files vLLM loads;
* the Service is headless, so the gateway resolves one address per replica and routes a request
  only to replicas that list its adapter in `/v1/models`.

The base model reaches the pool's model cache through the inputs init container every ftops pod
uses (controller.render.pods). Every manifest is validated against the Kubernetes schemas.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from controller import labels as L
from controller.catalog import OperatorConfig
from controller.render.errors import RenderError
from controller.render.names import object_name
from controller.render.pods import ModelSource, container, inputs_container, model_cache_mount, model_cache_volume
from controller.render.schema import validate_manifests
from controller.render.templates import render_template
from controller.spec.finetune import FineTune

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM's --max-lora-rank accepts."""
ENGINE_PORT = 8000
ADAPTERS_DIR = "/adapters"
SYNCED = ".synced"
"""The sidecar's marker in ADAPTERS_DIR while its replica holds every desired adapter
(controller.serve.sidecar writes it; the sidecar's readiness probe reads it)."""
TEMPLATE_DIR = "/etc/ftops/engine"


@dataclass(frozen=True)
class EnginePoolInput:
    """What a vLLM pool depends on."""

    pool: str
    """The pool's name (one per base model and chat template), an RFC 1123 label."""
    finetunes: tuple[FineTune, ...]
    """The specs whose runs it serves (they share the base model)."""
    model: ModelSource
    chat_template: str
    namespace: str
    operator: OperatorConfig
    desired_uri: str
    """The desired adapter set (adapters.json) in the artifact store, written by the deployer."""
    replicas: int = 1
    gpu_type: str = "a100-80gb"
    gpus: int = 1
    max_loras: int = 4
    adapter_ranks: tuple[int, ...] = ()
    """The ranks of the adapters the pool holds now (during a rollout an older run's adapter may
    have a larger rank than its spec asks for today); --max-lora-rank covers them and the specs'."""


def serving_engine(finetune: FineTune, operator: OperatorConfig) -> str:
    """The engine the operator chose for the spec's serving pool: `vllm` on a GPU pool
    (cluster.servingGpus > 0, gpus.<type>.engine vllm), else ftops' `embedded` engine."""
    gpu_type = finetune.spec.hardware.gpu_type
    gpus = operator.gpus
    if operator.cluster.serving_gpus and gpu_type in gpus and gpus[gpu_type].engine == "vllm":
        return "vllm"
    return "embedded"


def pool_name(model: ModelSource, chat_template: str) -> str:
    """One pool per base model (as materialised in the model cache) and chat template: the specs
    whose runs have both in common share it."""
    key = hashlib.sha256(f"{model.cache_key}\n{chat_template}".encode()).hexdigest()[:12]
    return f"pool-{key}"


def desired_set_uri(store_root: str, namespace: str, pool: str) -> str:
    """Where the deployer keeps a pool's desired adapter set (read by every replica's sidecar)."""
    return f"{store_root.rstrip('/')}/_engines/{namespace}/{pool}/adapters.json"


def max_lora_rank(finetunes: tuple[FineTune, ...], extra: tuple[int, ...] = ()) -> int:
    ranks = [int(getattr(ft.spec.method, "r", 0) or 0) for ft in finetunes] + [int(r) for r in extra]
    need = max(ranks or [8])
    for rank in VLLM_LORA_RANKS:
        if rank >= need:
            return rank
    raise RenderError(f"LoRA rank {need} is above the largest rank vLLM serves ({VLLM_LORA_RANKS[-1]})")


def render_vllm(inp: EnginePoolInput, validate: bool = True) -> list[dict]:
    """ConfigMap (chat template), Deployment (vLLM + the adapter sidecar), headless Service."""
    if not inp.finetunes:
        raise RenderError(f"engine pool {inp.pool} serves no spec")
    bases = {(ft.spec.base_model.uri, ft.spec.base_model.revision) for ft in inp.finetunes}
    if len(bases) > 1:
        raise RenderError(f"engine pool {inp.pool} mixes base models {sorted(map(str, bases))}; one pool per base")
    if inp.gpus < 1:
        raise RenderError(f"engine pool {inp.pool}: vLLM needs a GPU (gpuType cpu serves on the embedded engine)")
    if inp.gpu_type not in inp.operator.gpus:
        raise RenderError(f"engine pool {inp.pool}: GPU type '{inp.gpu_type}' is not in the operator config")
    c = inp.operator.cluster
    labels = {L.NAME: "ftops", L.MANAGED_BY: "ftops", L.COMPONENT: "engine", L.ENGINE_POOL: inp.pool}
    selector = {L.NAME: "ftops", L.COMPONENT: "engine", L.ENGINE_POOL: inp.pool}
    template_name = object_name(inp.pool, hashlib.sha256(inp.chat_template.encode()).hexdigest()[:16], "template")
    names = {"deployment": object_name(inp.pool, None, "engine"), "service": object_name(inp.pool, None, "engine")}
    rank = max_lora_rank(inp.finetunes, inp.adapter_ranks)
    # The model is `vllm serve`'s positional argument: some vLLM versions refuse --model with serve,
    # later ones deprecate it.
    args = [inp.model.pod_path, "--served-model-name", "base", "--enable-lora",
            "--max-lora-rank", str(rank), "--max-loras", str(inp.max_loras),
            "--chat-template", f"{TEMPLATE_DIR}/chat_template.jinja", "--dtype", "bfloat16",
            "--tensor-parallel-size", str(inp.gpus), "--host", "0.0.0.0", "--port", str(ENGINE_PORT)]
    gpu = {"cpu": c.cpu_per_gpu, "memory": c.memory_per_gpu, "nvidia.com/gpu": str(inp.gpus)}
    resources = {"requests": dict(gpu), "limits": dict(gpu)}
    engine = {
        **container("vllm", c, ["vllm", "serve"], [
            {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}, {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/tmp/hf"}], resources,
            [model_cache_mount(), {"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True},
             {"name": "chat-template", "mountPath": TEMPLATE_DIR, "readOnly": True},
             {"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}],
            ports=[{"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"}],
            readinessProbe={"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3},
            startupProbe={"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 90},
            livenessProbe={"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 15, "failureThreshold": 4}),
        "image": c.vllm_image, "args": args,
    }
    from controller.render.pods import store_env

    sidecar = container(
        "adapter-sidecar", c,
        ["ftops", "serve", "sidecar", "--desired", inp.desired_uri, "--engine", f"http://127.0.0.1:{ENGINE_PORT}",
         "--cache", ADAPTERS_DIR, "--interval", "2"],
        [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}, *store_env(c)],
        {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        [{"name": "adapters", "mountPath": ADAPTERS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        # in the Service only once this replica holds every desired adapter (controller.serve.sidecar)
        readinessProbe={"exec": {"command": ["test", "-f", f"{ADAPTERS_DIR}/{SYNCED}"]}, "periodSeconds": 2,
                        "failureThreshold": 1})
    inputs = inputs_container(c, inp.finetunes[0], [], inp.model, [])
    volumes = [model_cache_volume(c), {"name": "adapters", "emptyDir": {}},
               {"name": "chat-template", "configMap": {"name": template_name}}, {"name": "tmp", "emptyDir": {}},
               {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": c.shm_size}}]
    annotations = {L.ENGINE: "vllm"}
    context = {
        "namespace": inp.namespace, "names": names, "labels": labels, "annotations": annotations, "selector": selector,
        "pod": {
            "labels": labels, "annotations": annotations, "restartPolicy": "Always",
            "serviceAccountName": c.service_account_name, "subdomain": "", "priorityClassName": c.priority_class_name,
            "nodeSelector": dict(inp.operator.gpus[inp.gpu_type].node_selector),
            "tolerations": [t.model_dump(exclude_none=True) for t in c.tolerations],
            "terminationGracePeriodSeconds": 60, "runAsUser": c.run_as_user,
            "initContainers": [inputs], "containers": [engine, sidecar], "volumes": volumes,
        },
        "serving": {"replicas": inp.replicas, "port": ENGINE_PORT},
    }
    deployment = render_template("serving-deployment.yaml.j2", context)
    template_map = {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True,
                    "metadata": {"name": template_name, "namespace": inp.namespace, "labels": labels},
                    "data": {"chat_template.jinja": inp.chat_template}}
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": names["service"], "namespace": inp.namespace, "labels": labels},
               "spec": {"clusterIP": "None", "selector": selector, "publishNotReadyAddresses": False,
                        "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http", "protocol": "TCP"}]}}
    manifests = [template_map, *deployment, service]
    if validate:
        validate_manifests(manifests, namespace=inp.namespace)
    return manifests


def engine_url(inp: EnginePoolInput) -> str:
    """How the gateway finds every replica: the headless Service's name, resolved per request
    cycle to one address per ready pod (`dns+` tells the gateway to resolve it)."""
    return pool_url(inp.pool, inp.namespace)


def pool_url(pool: str, namespace: str) -> str:
    return f"dns+http://{object_name(pool, None, 'engine')}.{namespace}.svc:{ENGINE_PORT}"


GATEWAY_PORT = 8000


@dataclass(frozen=True)
class GatewayInput:
    """A spec's gateway in front of an engine pool: what its Deployment depends on."""

    finetune: FineTune
    routes: tuple[tuple[str, int], ...]
    """(run id, weight): the run ids are the adapters' names in the pool."""
    engines: tuple[str, ...]
    """The pool's replicas (engine_url: its headless Service, resolved per request cycle)."""
    data_md5: str
    git_commit: str
    operator: OperatorConfig
    namespace: str
    corpus_uri: str | None = None
    """The corpus version the gate passed, published as a bundle; None: the spec serves without one."""
    replicas: int | None = None


def gateway_json(inp: GatewayInput) -> dict:
    """The gateway's configuration (controller.serve.gateway.GatewayConfig's JSON form)."""
    from controller.render.serving import CORPUS_DIR

    serving = inp.finetune.spec.serving
    if serving is None:
        raise RenderError(f"spec '{inp.finetune.name}' has no spec.serving block; there is nothing to serve")
    return {"specName": inp.finetune.name, "routes": [{"runId": r, "model": r, "weight": w} for r, w in inp.routes],
            "engines": list(inp.engines), "corpus": CORPUS_DIR if inp.corpus_uri else None,
            "retriever": serving.retriever, "topK": serving.top_k, "maxTokens": serving.max_tokens,
            "indexCache": "/tmp/index", "replicaPollSeconds": 1.0}


def primary_run(routes: tuple[tuple[str, int], ...]) -> str:
    """The run with the largest weight: the one the spec serves (the stable run during a canary)."""
    live = [r for r in routes if r[1] > 0]
    if not live:
        raise RenderError("a gateway needs a route with a weight above 0")
    return max(live, key=lambda r: r[1])[0]


def render_gateway(inp: GatewayInput, validate: bool = True) -> list[dict]:
    """ConfigMap (gateway.json, named by its content, immutable), the spec's gateway Deployment
    (`<spec>-serve`: the same name, selector and Service as the embedded engine's server, so a
    spec moves between the engines by a rolling update) and its Service.

    The routes are in the ConfigMap, so a route switch (promotion, canary weights, rollback) is a
    rolling update of the gateway (maxUnavailable 0): a new gateway pod is ready only once an
    engine replica reports every adapter it routes to (controller.serve.gateway's /readyz), and
    the old pods keep answering until then. Gateways hold no model: CPU pods that start in seconds."""
    from controller.render.context import CONFIG_DIR, lineage
    from controller.render.pods import base_env, with_ephemeral
    from controller.render.serving import CORPUS_DIR

    ft, c = inp.finetune, inp.operator.cluster
    serving = ft.spec.serving
    if serving is None:
        raise RenderError(f"spec '{ft.name}' has no spec.serving block; there is nothing to serve")
    run_id = primary_run(inp.routes)
    labels, selector, annotations = lineage(ft, run_id, inp.data_md5, inp.git_commit, "serving")
    selector = {**selector, L.TRACK: "stable"}
    service_selector = {k: v for k, v in selector.items() if k != L.TRACK}
    text = json.dumps(gateway_json(inp), indent=2, sort_keys=True) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    names = {"config": object_name(ft.name, digest, "gateway"), "deployment": object_name(ft.name, None, "serve"),
             "service": object_name(ft.name, None, "serve")}
    fetch = [{"name": "corpus", "mountPath": CORPUS_DIR}] if inp.corpus_uri else []
    inputs = inputs_container(c, ft, [(inp.corpus_uri, CORPUS_DIR)] if inp.corpus_uri else [], None, fetch)
    resources = with_ephemeral({"requests": {"cpu": c.serving_cpu, "memory": c.serving_memory},
                                "limits": {"cpu": c.serving_cpu, "memory": c.serving_memory}}, c)
    gateway = container(
        "gateway", c, ["ftops", "serve", "gateway", "--config", f"{CONFIG_DIR}/gateway.json", "--host", "0.0.0.0",
                       "--port", str(GATEWAY_PORT)],
        base_env(run_id), resources,
        [{"name": "gateway-config", "mountPath": CONFIG_DIR, "readOnly": True},
         *({**m, "readOnly": True} for m in fetch), {"name": "tmp", "mountPath": "/tmp"}],
        ports=[{"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        readinessProbe={"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 2},
        livenessProbe={"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 30, "periodSeconds": 10,
                       "failureThreshold": 6})
    volumes = [{"name": "gateway-config", "configMap": {"name": names["config"]}},
               *([{"name": "corpus", "emptyDir": {}}] if inp.corpus_uri else []), model_cache_volume(c),
               {"name": "tmp", "emptyDir": {}}]
    pod_annotations = {**annotations, L.ENGINE: "vllm", GATEWAY_CONFIG: digest}
    context = {
        "namespace": inp.namespace, "names": names, "labels": labels, "annotations": annotations,
        "selector": selector, "serviceSelector": service_selector,
        "pod": {
            "labels": {**labels, L.TRACK: "stable"}, "annotations": pod_annotations, "restartPolicy": "Always",
            "serviceAccountName": c.service_account_name, "subdomain": "", "priorityClassName": c.priority_class_name,
            "nodeSelector": {}, "tolerations": [], "terminationGracePeriodSeconds": 30, "runAsUser": c.run_as_user,
            "initContainers": [inputs], "containers": [gateway], "volumes": volumes,
        },
        "serving": {"replicas": inp.replicas if inp.replicas is not None else serving.replicas, "port": GATEWAY_PORT},
    }
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True,
                  "metadata": {"name": names["config"], "namespace": inp.namespace, "labels": labels,
                               "annotations": annotations},
                  "data": {"gateway.json": text}}
    manifests = [config_map, *render_template("serving-deployment.yaml.j2", context),
                 *render_template("serving-service.yaml.j2", context)]
    if validate:
        validate_manifests(manifests, namespace=inp.namespace)
    return manifests


GATEWAY_CONFIG = "ftops.dev/gateway-config"
"""The pod template's annotation naming its gateway.json (by digest): a rollout of the gateway is
complete when the Deployment runs this template everywhere."""
