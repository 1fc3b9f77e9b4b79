"""The vLLM engine pool renders with the right arguments and validates against the real
Kubernetes schemas (controller.render.schema, the render package's validation)."""
from __future__ import annotations

import pytest

from serve_helpers import ROOT


def _finetune(name: str = "support-triage", rank: int | None = None):
    from controller.spec import load_spec_text

    text = (ROOT / "specs" / "support-triage.yaml").read_text().replace("name: support-triage", f"name: {name}")
    spec = load_spec_text(text, f"specs/{name}.yaml").spec
    if rank is not None:
        spec = spec.model_copy(update={"spec": spec.spec.model_copy(update={
            "method": spec.spec.method.model_copy(update={"r": rank})})})
    return spec


def _pool(*finetunes, **kw):
    from controller.catalog import load_operator_config
    from controller.render.pods import ModelSource
    from controller.render.vllm import EnginePoolInput

    bm = finetunes[0].spec.base_model
    args = dict(pool="support-base", finetunes=tuple(finetunes), model=ModelSource(bm.uri, bm.revision),
                chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}", namespace="ftops-support",
                operator=load_operator_config(), desired_uri="s3://ftops-artifacts/_engines/support-base/adapters.json",
                replicas=2, gpu_type="a100-80gb", gpus=2)
    return EnginePoolInput(**{**args, **kw})


def test_vllm_pool_renders_lora_bf16_gpus_and_the_recorded_chat_template():
    from controller.render import manifest_problems
    from controller.render.vllm import engine_url, render_vllm

    pool = _pool(_finetune(), _finetune("support-other", rank=24))
    manifests = render_vllm(pool)
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Deployment", "Service"]
    assert all(manifest_problems(m, namespace="ftops-support") == [] for m in manifests)
    template, deployment, service = manifests
    pod = deployment["spec"]["template"]["spec"]
    vllm, sidecar = pod["containers"]
    args = vllm["args"]

    def arg(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert vllm["command"] == ["vllm", "serve"] and vllm["image"].startswith("vllm/vllm-openai:")
    assert "--enable-lora" in args and arg("--max-lora-rank") == "32"  # rank 24 rounds up to vLLM's 32
    assert arg("--dtype") == "bfloat16" and arg("--tensor-parallel-size") == "2"
    assert arg("--served-model-name") == "base" and args[0].startswith("/models/")  # serve's positional MODEL
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    mount = next(m for m in vllm["volumeMounts"] if m["name"] == "chat-template")
    assert arg("--chat-template") == f"{mount['mountPath']}/chat_template.jinja"
    assert template["data"]["chat_template.jinja"] == pool.chat_template and template["immutable"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "chat-template")
    assert volume["configMap"]["name"] == template["metadata"]["name"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    # the sidecar syncs the desired adapters into the shared folder vLLM reads
    assert sidecar["command"][:3] == ["ftops", "serve", "sidecar"] and pool.desired_uri in sidecar["command"]
    shared = {m["name"]: m for m in sidecar["volumeMounts"]}["adapters"]
    assert not shared.get("readOnly") and any(m["name"] == "adapters" and m["readOnly"] for m in vllm["volumeMounts"])
    assert service["spec"]["clusterIP"] == "None"  # one address per replica for the gateway
    assert engine_url(pool) == "dns+http://support-base-engine.ftops-support.svc:8000"


@pytest.mark.parametrize("change, message", [
    (dict(gpus=0), "needs a GPU"),
    (dict(gpu_type="tpu-v9"), "not in the operator config"),
])
def test_vllm_pool_refuses_what_it_cannot_serve(change, message):
    from controller.render import RenderError
    from controller.render.vllm import render_vllm

    with pytest.raises(RenderError, match=message):
        render_vllm(_pool(_finetune(), **change))


def test_a_pool_serves_one_base_model_and_ranks_vllm_accepts():
    from controller.render import RenderError
    from controller.render.vllm import render_vllm

    other = _finetune("support-other")
    other = other.model_copy(update={"spec": other.spec.model_copy(update={
        "base_model": other.spec.base_model.model_copy(update={"revision": "f" * 40})})})
    with pytest.raises(RenderError, match="one pool per base"):
        render_vllm(_pool(_finetune(), other))
    with pytest.raises(RenderError, match="largest rank"):
        render_vllm(_pool(_finetune(rank=1024)))


def test_a_broken_manifest_is_caught_by_the_schema_validation():
    """The validation is real: a container without an image fails the Kubernetes schema."""
    from controller.render import RenderError, validate_manifests
    from controller.render.vllm import render_vllm

    manifests = render_vllm(_pool(_finetune()), validate=False)
    manifests[1]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(RenderError):
        validate_manifests(manifests, namespace="ftops-support")
