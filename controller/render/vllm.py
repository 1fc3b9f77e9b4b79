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


def max_lora_rank(finetunes: tuple[FineTune, ...]) -> int:
    ranks = [int(getattr(ft.spec.method, "r", 0) or 0) for ft in finetunes]
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
    rank = max_lora_rank(inp.finetunes)
    args = ["--model", inp.model.pod_path, "--served-model-name", "base", "--enable-lora",
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
         "--cache", ADAPTERS_DIR],
        [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}, *store_env(c)],
        {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        [{"name": "adapters", "mountPath": ADAPTERS_DIR}, {"name": "tmp", "mountPath": "/tmp"}])
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
    return f"dns+http://{object_name(inp.pool, None, 'engine')}.{inp.namespace}.svc:{ENGINE_PORT}"
