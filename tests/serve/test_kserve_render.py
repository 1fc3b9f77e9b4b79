"""A spec's serving as a KServe InferenceService (controller.render.kserve): the engine as the
predictor (vLLM with the run's adapter on a vLLM GPU pool, the embedded engine elsewhere), the
gateway as the transformer, validated through KServe's own API models (the `kserve` package's
`kserve.models`) and the Kubernetes schemas of what they embed."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from serve_helpers import ROOT

RUN = "abcdef0123456789"


def _finetune(name: str = "support-triage"):
    from controller.spec import load_spec_text

    text = (ROOT / "specs" / "support-triage.yaml").read_text().replace("name: support-triage", f"name: {name}")
    return load_spec_text(text, f"specs/{name}.yaml").spec


def _operator(gpus: int = 1, flavor: str = "kserve"):
    from controller.catalog import load_operator_config

    op = load_operator_config()
    return op.model_copy(update={"cluster": op.cluster.model_copy(update={"serving_flavor": flavor, "serving_gpus": gpus})})


def _render(gpus: int = 1, validate: bool = True, **kw):
    from controller.render import ServingInput, render_serving

    args = dict(finetune=_finetune(), run_id=RUN, data_md5="0" * 32, git_commit="c" * 40, operator=_operator(gpus))
    return render_serving(ServingInput(**{**args, **kw}), validate=validate)


def _argv(container: dict) -> list[str]:
    """What the container runs once the launcher has run: its arguments after `python3 -c LAUNCHER`."""
    from controller.render.kserve import LAUNCHER

    assert container["command"][:3] == ["python3", "-c", LAUNCHER]
    return container["command"][3:]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_the_vllm_predictor_serves_the_runs_adapter_and_the_gateway_is_the_transformer():
    from controller.render import manifest_problems
    from controller.render import ModelSource
    from controller.render.kserve import inference_service_problems, predictor_url
    from controller.serve.gateway import GatewayConfig

    manifests = _render()
    assert [m["kind"] for m in manifests] == ["ConfigMap", "InferenceService"]
    config_map, isvc = manifests
    namespace = isvc["metadata"]["namespace"]
    assert all(manifest_problems(m, namespace=namespace) == [] for m in manifests)
    assert inference_service_problems(isvc) == []
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"

    predictor = isvc["spec"]["predictor"]
    (engine,) = predictor["containers"]
    argv = _argv(engine)

    def arg(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert engine["name"] == "kserve-container" and engine["image"].startswith("vllm/vllm-openai:")
    assert argv[:2] == ["vllm", "serve"] and "--enable-lora" in argv
    adapter_name, adapter_path = arg("--lora-modules").split("=")
    assert adapter_name == RUN and arg("--max-lora-rank") == "16"  # the spec's rank 16 is one vLLM accepts
    assert arg("--dtype") == "bfloat16" and arg("--tensor-parallel-size") == "1" and arg("--port") == "8080"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    # the chat template vLLM reads is the one the launcher writes from the run's manifest
    env = _env(engine)
    assert arg("--chat-template") == env["FTOPS_CHAT_TEMPLATE_TO"]
    adapter_mount = next(m for m in engine["volumeMounts"] if m["name"] == "adapter")
    assert env["FTOPS_CHAT_TEMPLATE_FROM"] == f"{adapter_mount['mountPath']}/manifest.json"
    assert adapter_path == f"{adapter_mount['mountPath']}/model" and adapter_mount["readOnly"]
    # the inputs init container fetches exactly this run into that folder, and the base into the cache
    (inputs,) = predictor["initContainers"]
    fetched = json.loads(_env(inputs)["FTOPS_INPUTS"])
    assert fetched == [[f"s3://ftops-artifacts/support-triage/{RUN}", adapter_mount["mountPath"]]]
    base = json.loads(_env(inputs)["FTOPS_BASE_MODEL"])
    assert arg("serve") == ModelSource(base["uri"], base["revision"]).pod_path  # the base the cache holds
    assert predictor["minReplicas"] == predictor["maxReplicas"] == 2  # the spec's serving.replicas

    transformer = isvc["spec"]["transformer"]
    (gateway,) = transformer["containers"]
    gargv = _argv(gateway)
    assert gargv[:3] == ["ftops", "serve", "gateway"] and "nvidia.com/gpu" not in gateway["resources"]["limits"]
    config_path = gargv[gargv.index("--config") + 1]
    mount = next(m for m in gateway["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in transformer["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"] and config_map["immutable"] is True
    config = GatewayConfig.from_json(json.loads(config_map["data"][config_path.rsplit("/", 1)[1]]))
    assert config.engines == (predictor_url(isvc["metadata"]["name"], namespace),)
    assert [(r.run_id, r.model, r.weight) for r in config.routes] == [(RUN, adapter_name, 100)]
    assert config.retriever == "hybrid" and config.corpus_dir is not None
    corpus_fetch = json.loads(_env(transformer["initContainers"][0])["FTOPS_INPUTS"])
    assert [dest for _, dest in corpus_fetch] == [config.corpus_dir]


def test_the_embedded_engine_is_the_predictor_where_the_pool_has_no_vllm():
    """No serving GPUs: ftops' embedded engine with the run's adapter, and the rendered command
    parses with the real `ftops` command line."""
    from controller.cli import build_parser

    manifests = _render(gpus=0)
    isvc = manifests[1]
    (engine,) = isvc["spec"]["predictor"]["containers"]
    argv = _argv(engine)
    assert argv[0] == "ftops" and not engine["image"].startswith("vllm/")
    assert "nvidia.com/gpu" not in engine["resources"]["limits"] and not isvc["spec"]["predictor"].get("nodeSelector")
    args = build_parser().parse_args(argv[1:])
    assert args.role == "engine" and args.adapter == [f"{RUN}=/workspace/adapter"] and args.port == 8080
    gateway_args = build_parser().parse_args(_argv(isvc["spec"]["transformer"]["containers"][0])[1:])
    assert gateway_args.role == "gateway" and gateway_args.port == 8080


def test_the_launcher_drops_kserves_arguments_and_writes_the_recorded_chat_template(tmp_path):
    """Run for real: KServe appends --model_name/--predictor_host/--http_port to a transformer's
    arguments; the launcher runs what ftops rendered without them."""
    from controller.render.kserve import LAUNCHER

    from controller.train.trainer import write_manifest

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "adapter_model.safetensors").write_bytes(b"weights")
    template = "{% for m in messages %}[{{ m.role }}]{% endfor %}"
    # the manifest as the trainer writes it (the template sits in its provenance block)
    manifest = write_manifest(run_dir, {"runId": RUN, "chatTemplate": template})
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-c", "import sys; print(sys.argv[1:])", "a", "--b",
         "--model_name", "isvc", "--predictor_host", "isvc-predictor.ns", "--http_port", "8080"],
        env={"FTOPS_CHAT_TEMPLATE_FROM": str(manifest), "FTOPS_CHAT_TEMPLATE_TO": str(tmp_path / "t.jinja")},
        capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['a', '--b']"
    assert (tmp_path / "t.jinja").read_text() == template


def test_the_operators_flavour_chooses_kserve_and_the_default_stays_deployments():
    from controller.render import ServingInput, render_serving

    default = render_serving(ServingInput(finetune=_finetune(), run_id=RUN, data_md5="0" * 32, git_commit="c" * 40,
                                          operator=_operator(flavor="deployment")))
    assert {m["kind"] for m in default} == {"ConfigMap", "Deployment", "Service"}
    assert {m["kind"] for m in _render()} == {"ConfigMap", "InferenceService"}


BREAKS = [
    ("an unknown predictor field", lambda i: i["spec"]["predictor"].update(replicas=2),
     "spec.predictor.replicas: unknown field of V1beta1PredictorSpec"),
    ("no predictor", lambda i: i["spec"].pop("predictor"), "Invalid value for `predictor`, must not be `None`"),
    ("a wrong type in a KServe field", lambda i: i["spec"]["predictor"].update(minReplicas="two"),
     "spec.predictor.minReplicas: 'two' is not of type int"),
    ("a wrong type inside a Kubernetes container",
     lambda i: i["spec"]["transformer"]["containers"][0]["ports"][0].update(containerPort="eight thousand"),
     "spec.transformer.containers[0].ports.0.containerPort"),
    ("an unknown container field", lambda i: i["spec"]["predictor"]["containers"][0].update(gpus=1),
     "spec.predictor.containers[0]"),
    ("a name KServe refuses", lambda i: i["metadata"].update(name="9-triage"), "must be a DNS-1035 label"),
]


@pytest.mark.parametrize("what, breaks, message", BREAKS, ids=[b[0] for b in BREAKS])
def test_a_broken_inference_service_is_refused_by_the_validation(what, breaks, message):
    from controller.render import RenderError, validate_manifests
    from controller.render.kserve import inference_service_problems

    manifests = _render(validate=False)
    assert inference_service_problems(manifests[1]) == []
    broken = copy.deepcopy(manifests)
    breaks(broken[1])
    problems = inference_service_problems(broken[1])
    assert any(message in p for p in problems), problems
    with pytest.raises(RenderError, match="InferenceService/"):
        validate_manifests(broken, namespace=broken[1]["metadata"]["namespace"])


def test_what_an_inference_service_cannot_serve_is_a_render_error():
    from controller.render import RenderError

    with pytest.raises(RenderError, match="no second track"):
        _render(track="canary")
    unserved = _finetune()
    unserved = unserved.model_copy(update={"spec": unserved.spec.model_copy(update={"serving": None})})
    with pytest.raises(RenderError, match="no spec.serving block"):
        _render(finetune=unserved)


def test_the_kubernetes_deployer_refuses_the_kserve_flavour_instead_of_rolling_deployments(tmp_path):
    from controller.errors import PermanentError
    from controller.serve.kube import KubernetesServing

    serving = KubernetesServing(None, _operator(), tmp_path)  # type: ignore[arg-type]  # never reaches the cluster
    with pytest.raises(PermanentError, match="servingFlavor kserve"):
        serving.manifests(_finetune(), RUN, "0" * 32, "c" * 40)


def test_only_kserves_models_are_loaded_not_its_model_server():
    """The package is installed without its server dependencies; validating must not need them."""
    code = ("import sys; from controller.render.kserve import kserve_models; m = kserve_models(); "
            "assert m.V1beta1InferenceService.attribute_map['api_version'] == 'apiVersion'; "
            "print(sorted(k for k in sys.modules if k.startswith('kserve.') and not k.startswith('kserve.models')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['kserve.configuration']"
