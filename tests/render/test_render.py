"""Rendering: valid manifests with everything GPU operators need, deterministic names and bytes,
tenancy, and validation that catches what the API server would refuse."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import controller.render as R
import controller.render.schema as S
import controller.render.templates as T
from controller.render import (
    RenderError,
    RenderInput,
    ServingInput,
    object_name,
    render,
    render_serving,
    template_version,
    to_yaml,
    validate_manifests,
)
from controller.runconfig import RunConfig
from render_sample import COMMIT, DATA_MD5, RUN_ID, finetune, operator, render_input, run_config

REPO = Path(__file__).resolve().parents[2]
NS = "ftops-team-a"


def by_kind(manifests: list[dict]) -> dict[str, dict]:
    return {m["kind"]: m for m in manifests}


def pod_spec(workload: dict) -> dict:
    if workload["kind"] == "Job":
        return workload["spec"]["template"]["spec"]
    return workload["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


def trainer(workload: dict) -> dict:
    return next(c for c in pod_spec(workload)["containers"] if c["name"] == "trainer")


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "nodes,flavor,kinds",
    [
        (1, "job", ["ConfigMap", "PersistentVolumeClaim", "Job"]),
        (1, "jobset", ["ConfigMap", "PersistentVolumeClaim", "Job"]),  # flavours only matter multi-node
        (3, "job", ["ConfigMap", "PersistentVolumeClaim", "Service", "Job"]),
        (3, "trainjob", ["ConfigMap", "PersistentVolumeClaim", "TrainJob"]),
        (3, "jobset", ["ConfigMap", "PersistentVolumeClaim", "JobSet"]),
    ],
)
def test_every_flavour_renders_valid_manifests(nodes, flavor, kinds):
    ft = finetune(**{"spec.hardware.nodes": nodes, "spec.hardware.gpusPerNode": 8})
    manifests = render(render_input(ft, operator(trainingFlavor=flavor)))
    assert [m["kind"] for m in manifests] == kinds
    validate_manifests(manifests, namespace=NS)  # also done inside render; explicit here
    for m in manifests:
        assert m["metadata"]["namespace"] == NS
        assert m["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ftops"


def test_single_node_job_has_what_gpu_operators_need():
    op = operator(priorityClassName="training-low", kueueQueue="team-a-gpus", backoffLimit=4,
                  ttlSecondsAfterFinished=3600, checkpointStorageClass="fast-rwx")
    ft = finetune(**{"spec.hardware.spot": True, "spec.hardware.gpusPerNode": 2, "spec.hardware.maxHours": 1.5})
    m = by_kind(render(render_input(ft, op)))
    job, pvc, cm = m["Job"], m["PersistentVolumeClaim"], m["ConfigMap"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    c = trainer(job)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert c["resources"]["limits"]["cpu"] == "16" and c["resources"]["limits"]["memory"] == "96Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    keys = {t["key"] for t in pod["tolerations"]}
    assert keys == {"nvidia.com/gpu", "cloud.google.com/gke-spot"}
    assert pod["priorityClassName"] == "training-low"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    claim = next(v for v in pod["volumes"] if v["name"] == "checkpoints")["persistentVolumeClaim"]["claimName"]
    assert claim == pvc["metadata"]["name"] and pvc["spec"]["storageClassName"] == "fast-rwx"
    init = pod["initContainers"][0]
    init_env = {e["name"]: e.get("value") for e in init["env"]}
    # No git, no DVC, no shell in pods: the inputs container fetches the published split and the
    # base model; its values arrive as JSON in env vars.
    assert init["command"] == ["python", "-m", "controller.podinputs"]
    assert json.loads(init_env["FTOPS_INPUTS"]) == [[f"s3://ftops-artifacts/inputs/unpublished/data-{DATA_MD5}",
                                                     "/workspace/data"]]
    model = json.loads(init_env["FTOPS_BASE_MODEL"])
    assert model == {"uri": "hf://org/base-7b", "revision": "b" * 40, "cache": "/models"}
    assert init_env["HF_HUB_OFFLINE"] == "0"  # only the initializer talks to the hub
    assert {e["name"]: e.get("value") for e in c["env"]}["HF_HUB_OFFLINE"] == "1"
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")["persistentVolumeClaim"]["claimName"]
    assert cache == "ftops-model-cache"
    assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert {"name": "model-cache", "mountPath": "/models"} in init["volumeMounts"]  # the only writer
    assert c["resources"]["requests"]["ephemeral-storage"] == "20Gi"
    # The finished run goes to the store from the pod's own disk (no shared claim across namespaces).
    assert next(v for v in pod["volumes"] if v["name"] == "output") == {"name": "output", "emptyDir": {}}
    assert {e["name"]: e.get("value") for e in c["env"]}["FTOPS_RUN_URI"] == f"s3://ftops-artifacts/support-bot/{RUN_ID}"
    assert spec["activeDeadlineSeconds"] == 5400
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["backoffLimit"] == 4
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [78]  # EX_CONFIG, never 1
    assert rules[1]["onExitCodes"]["containerName"] == "trainer"
    # An input that does not match its manifest fails at once; a store that is away (75) is retried.
    assert rules[2] == {"action": "FailJob", "onExitCodes": {"containerName": "inputs", "operator": "In", "values": [78]}}
    assert rules[3]["action"] == "Ignore" and rules[3]["onExitCodes"]["values"] == [R.PREEMPTED_EXIT_CODE]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The trainer launches torchrun itself for 2 GPUs; the config comes from the run's ConfigMap.
    assert c["command"] == ["python", "-m", "controller.train", "--config", "/etc/ftops/run.json"]
    assert next(v for v in pod["volumes"] if v["name"] == "run-config")["configMap"]["name"] == cm["metadata"]["name"]


def test_credentials_only_through_secret_refs():
    op = operator(artifactStore={"uri": "s3://bucket/ftops", "endpointUrl": "http://minio:9000", "region": "eu-1",
                                 "credentials": [{"env": "AWS_ACCESS_KEY_ID", "secret": "store", "key": "id"},
                                                 {"env": "AWS_SECRET_ACCESS_KEY", "secret": "store", "key": "secret"}]})
    job = by_kind(render(render_input(op=op)))["Job"]
    pod = job["spec"]["template"]["spec"]
    trainer_env = {e["name"]: e for e in pod["containers"][0]["env"]}
    init_env = {e["name"]: e for e in pod["initContainers"][0]["env"]}
    secret = lambda env: {k: e["valueFrom"]["secretKeyRef"] for k, e in env.items() if "valueFrom" in e}  # noqa: E731
    store_refs = {"AWS_ACCESS_KEY_ID": {"name": "store", "key": "id"},
                  "AWS_SECRET_ACCESS_KEY": {"name": "store", "key": "secret"}}
    assert secret(init_env) == {**store_refs, "HF_TOKEN": {"name": "hf-token", "key": "token"}}
    assert secret(trainer_env) == store_refs  # the trainer uploads; it never needs the hub token
    assert trainer_env["AWS_ENDPOINT_URL_S3"]["value"] == "http://minio:9000"
    assert trainer_env["FTOPS_STORE"]["value"] == "s3://bucket/ftops"
    envs = [e for c in pod["containers"] + pod["initContainers"] for e in c["env"]]
    # No env var whose name smells like a credential carries a literal value.
    for e in envs:
        if re.search(r"TOKEN|SECRET|PASSWORD|KEY", e["name"]):
            assert "value" not in e, e


def test_lineage_labels_and_annotations():
    for m in render(render_input()):
        labels, ann = m["metadata"]["labels"], m["metadata"]["annotations"]
        assert labels["ftops.dev/spec"] == "support-bot"
        assert labels["ftops.dev/run-id"] == RUN_ID
        assert labels["ftops.dev/data-md5"] == DATA_MD5
        assert labels["ftops.dev/git-commit"] == COMMIT
        assert labels["cost-center"] == "cc-42"  # the spec's own labels travel along
        assert ann["ftops.dev/run-id"] == RUN_ID
        assert ann["ftops.dev/template-version"] == template_version()


def test_multi_node_indexed_job_and_headless_service():
    ft = finetune(**{"spec.hardware.nodes": 4, "spec.hardware.gpusPerNode": 8})
    m = by_kind(render(render_input(ft)))
    job, svc = m["Job"], m["Service"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert svc["spec"]["clusterIP"] == "None"
    pod = job["spec"]["template"]
    assert pod["spec"]["subdomain"] == svc["metadata"]["name"]
    # The Service selects exactly this run's trainer pods.
    assert all(pod["metadata"]["labels"][k] == v for k, v in svc["spec"]["selector"].items())
    env = {e["name"]: e.get("value") for e in trainer(job)["env"]}
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    rc = RunConfig.model_validate_json(m["ConfigMap"]["data"]["run.json"])
    assert (rc.distributed.nodes, rc.distributed.gpus_per_node) == (4, 8)  # the trainer reads these
    # Pod hostnames <job>-<index> must stay DNS labels.
    assert len(f"{job['metadata']['name']}-255") <= 63
    assert m["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_trainjob_and_jobset_flavours():
    ft = finetune(**{"spec.hardware.nodes": 3, "spec.hardware.gpusPerNode": 4})
    op = operator(trainingFlavor="trainjob", kueueQueue="q", priorityClassName="p")
    tj = by_kind(render(render_input(ft, op)))["TrainJob"]
    assert tj["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert tj["spec"]["runtimeRef"] == {"name": "ftops-torch", "kind": "ClusterTrainingRuntime",
                                        "apiGroup": "trainer.kubeflow.org"}
    assert tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    t = tj["spec"]["trainer"]
    assert (t["numNodes"], t["numProcPerNode"]) == (3, 4)
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert t["command"] == ["python", "-m", "controller.train", "--config", "/etc/ftops/run.json"]
    patch = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} >= {"run-config", "checkpoints", "model-cache", "data", "output"}
    assert [c["name"] for c in pod["initContainers"]] == ["inputs"] and [c["name"] for c in pod["containers"]] == ["node"]
    # Validated by Kubeflow's published models: a field Trainer v2 does not have is refused.
    bad = json.loads(json.dumps(tj))
    bad["spec"]["trainer"]["nprocPerNode"] = 4
    assert any("spec.trainer.nprocPerNode: unknown field" in p for p in R.manifest_problems(bad))
    bad = json.loads(json.dumps(tj))
    bad["spec"]["trainer"]["numNodes"] = "three"
    assert R.manifest_problems(bad)
    js = by_kind(render(render_input(ft, operator(trainingFlavor="jobset"))))["JobSet"]
    inner = js["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert inner["completionMode"] == "Indexed" and inner["completions"] == 3
    assert inner["podFailurePolicy"]["rules"][0]["action"] == "Ignore"
    assert js["spec"]["failurePolicy"]["rules"][0] == {
        "name": "config-error", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}
    # <jobset>-node-0-<index> hostnames fit in a DNS label.
    assert len(f"{js['metadata']['name']}-node-0-255") <= 63


def test_cpu_runs_request_no_gpu_and_no_gpu_toleration():
    ft = finetune(**{"spec.hardware.gpuType": "cpu"})
    job = by_kind(render(render_input(ft)))["Job"]
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in trainer(job)["resources"]["limits"]
    assert all(t["key"] != "nvidia.com/gpu" for t in pod["tolerations"])
    assert trainer(job)["command"][:3] == ["python", "-m", "controller.train"]


def test_run_json_configmap_is_the_runconfig_with_pod_paths():
    cm = by_kind(render(render_input()))["ConfigMap"]
    assert cm["immutable"] is True
    rc = RunConfig.model_validate_json(cm["data"]["run.json"])
    assert rc.run_id == RUN_ID and rc.data.md5 == DATA_MD5
    assert rc.data.train == "/workspace/data/train.jsonl" and rc.data.test == "/workspace/data/test.jsonl"
    from controller.render import model_cache_key

    assert rc.base_model.uri == f"/models/{model_cache_key('hf://org/base-7b', 'b' * 40)}"  # the cache, read-only
    assert rc.checkpoint_dir == "/workspace/checkpoints" and rc.output_dir == "/workspace/output"
    assert rc.device == "cuda"


def test_run_json_for_another_run_is_refused():
    ft = finetune()
    with pytest.raises(RenderError, match="run.json is for run"):
        render(render_input(ft, run_config=run_config(ft, run_id="ffffffffffff")))
    with pytest.raises(RenderError, match="data md5"):
        render(render_input(ft, data_md5="0" * 32))


def test_unknown_gpu_type_is_refused():
    ft = finetune(**{"spec.hardware.gpuType": "tpu-v9"})
    with pytest.raises(RenderError, match="not in the operator's GPU catalog"):
        render(render_input(ft))


# ----------------------------------------------------------------------------- names


def test_object_names_are_rfc1123_and_short():
    label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    seen = set()
    for length in range(1, 41):
        spec = ("a-" * 40)[:length].strip("-") or "a"
        for suffix in ("", "run", "train", "workers", "ckpt", "serve"):
            for max_length in (63, 59, 52):
                name = object_name(spec, RUN_ID, suffix, max_length=max_length)
                assert label.match(name) and len(name) <= max_length, name
                assert RUN_ID[:12] in name
                seen.add((spec, suffix, max_length, name))
    assert object_name("support-bot", RUN_ID, "train") == "support-bot-0123456789ab-train"
    assert object_name("support-bot", None, "serve") == "support-bot-serve"
    # Two long names with a common prefix stay apart after shortening.
    a = object_name("x" * 39 + "a", RUN_ID, "train", max_length=52)
    b = object_name("x" * 39 + "b", RUN_ID, "train", max_length=52)
    assert a != b and len(a) <= 52
    with pytest.raises(ValueError):
        object_name("ok", "NOT-HEX", "run")
    with pytest.raises(ValueError):
        object_name("ok", RUN_ID, "Bad_Suffix")


def test_rendered_names_fit_for_the_longest_spec_name():
    longest = "n" * 40
    for flavor in ("job", "trainjob", "jobset"):
        ft = finetune(**{"metadata.name": longest, "spec.hardware.nodes": 2})
        for m in render(render_input(ft, operator(trainingFlavor=flavor))):
            assert len(m["metadata"]["name"]) <= 63


# ----------------------------------------------------------------------------- determinism


def test_render_is_deterministic_across_processes():
    """Same inputs -> byte-identical YAML, even with a different hash seed in a fresh process."""
    here = to_yaml(render(render_input()))
    assert here == to_yaml(render(render_input()))
    code = ("import sys; sys.path[:0] = [%r]; from render_sample import render_input; "
            "from controller.render import render, to_yaml; sys.stdout.write(to_yaml(render(render_input())))"
            % str(Path(__file__).parent))
    for seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, cwd=REPO).stdout
        assert out == here


def test_template_version_is_a_hash_of_the_templates(tmp_path):
    src = T.templates_dir()
    for p in src.glob("*.j2"):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    assert T._template_version(str(tmp_path)) == template_version()
    job = tmp_path / "training-job.yaml.j2"
    job.write_bytes(job.read_bytes() + b"{# changed #}\n")
    T._template_version.cache_clear()
    assert T._template_version(str(tmp_path)) != template_version()
    assert re.fullmatch(r"[0-9a-f]{12}", template_version())


# ----------------------------------------------------------------------------- tenancy


def test_a_spec_cannot_target_another_owners_namespace():
    with pytest.raises(RenderError, match="may only target namespace 'ftops-team-a'"):
        render(render_input(namespace="ftops-team-b"))
    assert render(render_input(namespace=NS))  # its own is fine


def test_namespace_map_collisions_are_refused():
    base = operator()
    data = base.model_dump(by_alias=True)
    data["tenancy"]["namespaces"] = {"team-b": "ftops-team-a"}  # team-b was given team-a's namespace
    op = type(base).model_validate(data)
    with pytest.raises(RenderError, match="gives to \\['team-b'\\]"):
        render(render_input(op=op))
    data["tenancy"]["namespaces"] = {"team-a": "research"}
    ok = render(render_input(op=type(base).model_validate(data)))
    assert {m["metadata"]["namespace"] for m in ok} == {"research"}


@pytest.mark.parametrize("key", ["kueue.x-k8s.io/queue-name", "ftops.dev/run-id", "app.kubernetes.io/managed-by",
                                 "batch.kubernetes.io/job-name"])
def test_spec_labels_cannot_steer_queues_or_forge_lineage(key):
    ft = finetune(**{"metadata.labels": {key: "other"}})
    with pytest.raises(RenderError, match="reserved"):
        render(render_input(ft))


def test_validation_refuses_foreign_namespace_and_foreign_claims():
    manifests = render(render_input())
    moved = copy.deepcopy(manifests)
    moved[0]["metadata"]["namespace"] = "ftops-team-b"
    with pytest.raises(RenderError, match="not the owner's namespace"):
        validate_manifests(moved, namespace=NS)
    stolen = copy.deepcopy(manifests)
    pod = by_kind(stolen)["Job"]["spec"]["template"]["spec"]
    next(v for v in pod["volumes"] if v["name"] == "checkpoints")["persistentVolumeClaim"]["claimName"] = "team-b-ckpt"
    with pytest.raises(RenderError, match="mounts PVC 'team-b-ckpt' that this run does not own"):
        validate_manifests(stolen, namespace=NS)


# ----------------------------------------------------------------------------- validation


def _mutations(job: dict):
    """(description, mutate) pairs that the API server would refuse."""
    def m(path, value=None, delete=False):
        def apply(doc):
            node = doc
            for p in path[:-1]:
                node = node[p]
            if delete:
                del node[path[-1]]
            else:
                node[path[-1]] = value
        return apply

    tpl = ["spec", "template", "spec"]
    return [
        ("unknown field (strict schema)", m(["spec", "backofLimit"], 3)),
        ("wrong type", m(["spec", "backoffLimit"], "three")),
        ("missing required containers", m(tpl + ["containers"], delete=True)),
        ("unknown container field", m(tpl + ["containers", 0, "gpu"], 1)),
        ("bad restartPolicy enum", m(tpl + ["restartPolicy"], "Sometimes")),
        ("bad imagePullPolicy enum", m(tpl + ["containers", 0, "imagePullPolicy"], "Maybe")),
        ("bad pod failure action", m(["spec", "podFailurePolicy", "rules", 0, "action"], "Retry")),
        ("bad toleration effect", m(tpl + ["tolerations", 0, "effect"], "NoWay")),
        ("uppercase name", m(["metadata", "name"], "Support-Bot")),
        ("name too long", m(["metadata", "name"], "a" * 64)),
        ("bad label value", m(["metadata", "labels", "x"], "-bad-")),
        ("bad quantity", m(tpl + ["containers", 0, "resources", "limits", "memory"], "lots")),
        ("mount of a missing volume", m(tpl + ["containers", 0, "volumeMounts", 0, "name"], "nope")),
        ("bad env name", m(tpl + ["containers", 0, "env", 0, "name"], "1BAD=")),
        ("bad container name", m(tpl + ["containers", 0, "name"], "Trainer_1")),
    ]


def test_validation_catches_what_the_api_server_would_refuse():
    job = by_kind(render(render_input()))["Job"]
    for description, mutate in _mutations(job):
        bad = copy.deepcopy(job)
        mutate(bad)
        with pytest.raises(RenderError) as err:
            validate_manifests([bad])
        assert "invalid" in str(err.value), description


def test_compiled_schema_checker_agrees_with_jsonschema():
    """The fast checker is an optimisation only: on valid and invalid documents it must agree
    with jsonschema over kubernetes-validate's strict schemas."""
    docs = []
    for flavor, nodes in (("job", 1), ("job", 3)):
        docs += render(render_input(finetune(**{"spec.hardware.nodes": nodes}), operator(trainingFlavor=flavor)))
    inp = render_input()
    docs += render_serving(ServingInput(finetune=inp.finetune, run_id=RUN_ID,
                                        data_md5=DATA_MD5, git_commit=COMMIT, operator=inp.operator))
    job = by_kind(docs)["Job"]
    for _, mutate in _mutations(job)[:4]:
        bad = copy.deepcopy(job)
        mutate(bad)
        docs.append(bad)
    checked = 0
    for doc in docs:
        schema_file = S._BUILTIN[(doc["apiVersion"], doc["kind"])]
        key = f"{doc['apiVersion']}/{doc['kind']}"
        fast = S._fast_checker(key, schema_file, None)(doc)
        slow = S._validator_for(key, schema_file).is_valid(doc)
        assert fast == slow, (doc["kind"], doc["metadata"]["name"])
        checked += 1
    assert checked >= 10
    # And jsonschema itself (not just our wrapper) rejects the strict-schema mutation.
    with pytest.raises(jsonschema.ValidationError):
        S._validator_for("batch/v1/Job", "job-batch-v1.json").validate(docs[-4])


def test_kubernetes_validate_library_agrees_on_rendered_manifests():
    """Cross-check with the library's own entry point (slow path, a few manifests)."""
    import kubernetes_validate

    for m in render(render_input(finetune(**{"spec.hardware.nodes": 2}))):
        kubernetes_validate.validate(m, R.KUBERNETES_VERSION, strict=True)


# ----------------------------------------------------------------------------- templates are safe


def test_every_template_expression_is_quoted():
    """Every `{{ ... }}` ends in `|tojson`: templates never emit a raw value."""
    for path in sorted(T.templates_dir().glob("*.j2")):
        for expr in re.findall(r"\{\{(.*?)\}\}", path.read_text(), re.S):
            assert re.search(r"\|\s*tojson\s*$", expr.strip()), f"{path.name}: {{{{{expr}}}}} is not quoted"


def test_sandbox_and_strict_undefined(tmp_path):
    from jinja2.exceptions import SecurityError, UndefinedError

    (tmp_path / "evil.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__()|tojson }}")
    (tmp_path / "mutate.j2").write_text("{% set _ = items.append(1) %}{{ items|tojson }}")
    (tmp_path / "missing.j2").write_text("{{ nope|tojson }}")
    env = T._environment(str(tmp_path))
    with pytest.raises(SecurityError):
        env.get_template("evil.j2").render()
    with pytest.raises(SecurityError):
        env.get_template("mutate.j2").render(items=[])
    with pytest.raises(UndefinedError):
        env.get_template("missing.j2").render()


# ----------------------------------------------------------------------------- serving


def test_serving_manifests():
    inp = render_input()
    manifests = render_serving(ServingInput(finetune=inp.finetune, run_id=RUN_ID, data_md5=DATA_MD5, git_commit=COMMIT,
                                            operator=inp.operator, corpus_uri="s3://ftops-artifacts/inputs/c0ffee"))
    m = by_kind(manifests)
    dep, svc, cm = m["Deployment"], m["Service"], m["ConfigMap"]
    pod = dep["spec"]["template"]
    server = pod["spec"]["containers"][0]
    assert dep["spec"]["replicas"] == 2
    assert server["ports"][0]["containerPort"] == 8000
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["resources"]["requests"]["ephemeral-storage"] == "20Gi"
    assert svc["spec"]["ports"][0]["port"] == 8000
    assert all(pod["metadata"]["labels"][k] == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    assert all(pod["metadata"]["labels"][k] == v for k, v in svc["spec"]["selector"].items())
    serve = json.loads(cm["data"]["serve.json"])
    assert serve["runId"] == RUN_ID and serve["corpus"] == "/workspace/corpus" and serve["adapter"] == "/workspace/adapter"
    assert serve["baseModel"]["uri"] == f"/models/{R.model_cache_key('hf://org/base-7b', 'b' * 40)}"
    assert serve["device"] == "cpu"  # servingGpus 0
    init_env = {e["name"]: e.get("value") for e in pod["spec"]["initContainers"][0]["env"]}
    assert json.loads(init_env["FTOPS_INPUTS"]) == [[f"s3://ftops-artifacts/support-bot/{RUN_ID}", "/workspace/adapter"],
                                                    ["s3://ftops-artifacts/inputs/c0ffee", "/workspace/corpus"]]
    assert {"name": "adapter", "mountPath": "/workspace/adapter", "readOnly": True} in server["volumeMounts"]
    canary = by_kind(render_serving(ServingInput(finetune=inp.finetune, run_id=RUN_ID, data_md5=DATA_MD5,
                                                 git_commit=COMMIT, operator=inp.operator, track="canary", replicas=1)))
    assert canary["Deployment"]["metadata"]["name"] == "support-bot-canary"
    assert canary["Service"]["spec"]["selector"] == svc["spec"]["selector"]  # one Service over both tracks
    gpu = by_kind(render_serving(ServingInput(finetune=inp.finetune, run_id=RUN_ID, data_md5=DATA_MD5,
                                              git_commit=COMMIT, operator=operator(servingGpus=1))))
    gpu_pod = gpu["Deployment"]["spec"]["template"]["spec"]
    assert gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert json.loads(gpu["ConfigMap"]["data"]["serve.json"])["device"] == "cuda"
    assert gpu["ConfigMap"]["metadata"]["name"] != cm["metadata"]["name"]  # immutable: new content, new name


# ----------------------------------------------------------------------------- CLI


def test_ftops_render_prints_manifests(capsys):
    from controller.cli import main

    rc = main(["render", str(REPO / "specs" / "support-triage.yaml"), "--data-md5", DATA_MD5, "--commit", COMMIT,
               "--serving"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "PersistentVolumeClaim", "Job", "ConfigMap", "Deployment", "Service"]
    validate_manifests(docs)
    rc = main(["render", str(REPO / "specs" / "support-triage.yaml"), "--data-md5", DATA_MD5, "--commit", COMMIT,
               "--namespace", "kube-system"])
    assert rc == 1 and "may only target namespace" in capsys.readouterr().err


def test_every_example_spec_renders():
    from controller.catalog import load_operator_config
    from controller.commands.render_commands import load_finetune

    op = load_operator_config()
    specs = sorted((REPO / "specs").glob("*.yaml"))
    assert specs
    for path in specs:
        ft = load_finetune(path, sorted(op.gpus))
        manifests = render(R.input_for(ft, DATA_MD5, COMMIT, op))
        assert manifests[-1]["kind"] in ("Job", "TrainJob", "JobSet")


def test_exit_codes_match_the_trainer():
    """The pod failure policy speaks the trainer's exit codes (controller.exitcodes): only the
    dedicated config-error code fails the Job; 1 (torchrun's code for any worker failure) and 75
    (temporary) are retried; 143 (preempted after a checkpoint) is ignored."""
    from controller import exitcodes

    assert R.CONFIG_ERROR_EXIT_CODES == (exitcodes.CONFIG_ERROR,) and exitcodes.CONFIG_ERROR == 78
    assert R.PREEMPTED_EXIT_CODE == exitcodes.PREEMPTED == 143
    assert exitcodes.FAILURE not in R.CONFIG_ERROR_EXIT_CODES  # a lost worker is retried
    assert exitcodes.TEMPORARY not in R.CONFIG_ERROR_EXIT_CODES  # temporary errors are retried
    job = by_kind(render(render_input()))["Job"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    actions = {(r["onExitCodes"]["containerName"], code): r["action"] for r in rules if "onExitCodes" in r
               for code in r["onExitCodes"]["values"]}
    assert actions == {("trainer", exitcodes.CONFIG_ERROR): "FailJob", ("inputs", exitcodes.CONFIG_ERROR): "FailJob",
                       ("trainer", exitcodes.PREEMPTED): "Ignore"}


def test_repo_path_base_model_is_read_from_the_model_cache():
    ft = finetune(**{"spec.baseModel": {"uri": "models/tiny-llama"}})
    published = R.ModelSource("s3://ftops-artifacts/inputs/0123abcd")
    m = by_kind(render(render_input(ft, model=published, data_uri="s3://ftops-artifacts/inputs/feedbeef")))
    rc = RunConfig.model_validate_json(m["ConfigMap"]["data"]["run.json"])
    assert rc.base_model.uri == f"/models/{R.model_cache_key('s3://ftops-artifacts/inputs/0123abcd', None)}"
    init_env = {e["name"]: e.get("value") for e in m["Job"]["spec"]["template"]["spec"]["initContainers"][0]["env"]}
    assert json.loads(init_env["FTOPS_BASE_MODEL"])["uri"] == published.uri
    assert json.loads(init_env["FTOPS_INPUTS"]) == [["s3://ftops-artifacts/inputs/feedbeef", "/workspace/data"]]
    assert init_env["HF_HUB_OFFLINE"] == "1"


def test_a_store_that_is_not_an_object_store_is_refused():
    with pytest.raises(RenderError, match="artifactStore.uri"):
        render(render_input(op=operator(artifactStore={"uri": "/var/lib/ftops/store"})))
