"""Serving on the operator's vLLM pool, with pods that really run: the fake cluster's process
kubelet (tests/fakekube) runs every container as a process, the artifact store is S3 (moto), and
the vLLM image's `vllm` is tests/serve/fake_vllm.py (vLLM's CLI and the API subset ftops uses,
served by ftops' embedded engine; vLLM itself cannot run here).

The operator config gives the spec's GPU type the vllm engine (`cluster.servingGpus: 1`), so
KubernetesServing rolls out no model server of the spec's own: the run's adapter joins the
shared engine pool (vLLM replicas, each with the adapter sidecar, behind a headless Service) and
the spec's gateway Deployment routes to it. In order, sharing one world:

* a run is promoted: pool and gateway pods ready, an answer through the openai SDK via the
  gateway's Service with retrieval (sources, citations), every replica holding the adapter;
* a second spec on the same base shares the one pool; both adapters answer;
* an engine pod is killed: requests keep being answered (the gateway routes only to replicas
  that hold the adapter, and away from one that cannot be reached) and the restarted replica is
  refilled by its sidecar;
* a run whose adapter cannot be loaded (its files do not match its manifest) is rolled back:
  the old adapter answers throughout and the broken one leaves the desired set;
* a canary whose adapter fails every answer is rolled back by the analysis of the gateway's
  metrics while users get only the old adapter's answers;
* a spec whose GPU type moves to the embedded engine gets its own server in place of the
  gateway (answering throughout) and its adapter leaves the pool; moved back, it rejoins;
* a deleted spec loses its gateway and adapter, not the shared pool; the last one takes the pool.

The two adapters are the serving tests' session runs (tests/serve/conftest.py: two tiny LoRA
runs of a few steps), uploaded to the bucket; nothing is trained here."""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from fakekube.fixtures import s3_server  # noqa: F401
from serve_helpers import ANSWER_DOC, QUESTION, ROOT, RUN_A, RUN_B, SPEC_NAME, corpus_version, served_config, spec_text
from serve_helpers import write_gate

NS = "ftops-support-platform"
OTHER = "tiny-billing"
BROKEN = "cccc0000cccc0003"
DIVERGED = "dddd0000dddd0004"
CANARY = "{strategy: canary, canaryPercent: 50, stableSeconds: 600}"
STORE_SECRET = "ftops-store"
VLLM_IMAGE = "ghcr.io/ftops/vllm-fake:test"
MD5 = "0123456789abcdef0123456789abcdef"
COMMIT = "1234567abcdef1234567abcdef1234567abcdef0"
ENGINE_PODS = "app.kubernetes.io/component=engine"


def _spec(name: str, rollout: str = "{strategy: rolling}") -> str:
    """The serving tests' spec on a base model from the repository (published to the store for
    the pods), two serving replicas (the pool's and the gateway's)."""
    text = spec_text(name=name, replicas=2, rollout=rollout)
    head, _, rest = text.partition("  baseModel:\n")
    rest = rest[rest.index("  dataset:"):]
    return head + "  baseModel:\n    uri: models/tiny-base\n    parametersBillions: 0.001\n" + rest


def _finetune(name: str, rollout: str = "{strategy: rolling}"):
    from controller.spec import load_spec_text

    loaded = load_spec_text(_spec(name, rollout), f"specs/{name}.yaml")
    assert loaded.spec is not None, loaded.issues
    return loaded.spec


class World:
    def __init__(self, root: Path, s3_server, env) -> None:  # noqa: F811
        from controller.backends.kubernetes import KubernetesBackend, load_api_client
        from controller.catalog import load_operator_config
        from controller.commands.reconcile_commands import cluster_store
        from controller.serve.kube import KubernetesServing
        from fakekube.cluster import FakeCluster

        self.env = env
        self.bucket = s3_server.create_bucket()
        self.cluster = FakeCluster(root / "cluster").start()
        self.cluster.fake.ensure_namespace(NS)
        self.cluster.expose_host_port(s3_server.port)
        # The vLLM image: the host, plus a `vllm` on its PATH (under /tmp, which a pod's emptyDir
        # covers: the kubelet keeps an image's directories visible).
        self.image_bin = Path(tempfile.mkdtemp(prefix="ftops-vllm-image-"))
        os.chmod(self.image_bin, 0o755)
        shim = self.image_bin / "vllm"
        shim.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'serve' / 'fake_vllm.py'} \"$@\"\n")
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.cluster.kubelet.images[VLLM_IMAGE] = [str(self.image_bin)]
        creds = s3_server.env()
        self.cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": STORE_SECRET, "namespace": NS},
                            "stringData": {"id": creds["AWS_ACCESS_KEY_ID"], "secret": creds["AWS_SECRET_ACCESS_KEY"]}},
                           namespace=NS)
        operator_path = root / "operator.yaml"
        operator_path.write_text(yaml.safe_dump({
            "tenancy": {"namespaces": {"support-platform": NS}},
            "cluster": {
                "image": "ghcr.io/ftops/trainer:test", "vllmImage": VLLM_IMAGE, "servingGpus": 1,
                "cpuPerGpu": "1", "memoryPerGpu": "2Gi", "servingCpu": "1", "servingMemory": "1Gi",
                "ephemeralStorage": "1Gi", "shmSize": "64Mi",
                "artifactStore": {"uri": self.bucket.uri("ftops"), "endpointUrl": s3_server.endpoint_url,
                                  "region": "us-east-1",
                                  "credentials": [{"env": "AWS_ACCESS_KEY_ID", "secret": STORE_SECRET, "key": "id"},
                                                  {"env": "AWS_SECRET_ACCESS_KEY", "secret": STORE_SECRET,
                                                   "key": "secret"}]},
                "modelCache": {"storage": "1Gi", "accessModes": ["ReadWriteOnce"]},
            },
        }))
        self.operator = load_operator_config(operator_path)
        assert self.operator.gpus["a100-80gb"].engine == "vllm"  # the default for a GPU type
        self.store = cluster_store(self.operator)
        kubeconfig = self.cluster.write_kubeconfig(root / "kubeconfig")
        backend = KubernetesBackend(load_api_client(str(kubeconfig)), namespaces=[NS], operator=self.operator,
                                    store=self.store)
        self.serving = KubernetesServing(backend, self.operator, root / "state", artifacts=self.store,
                                         ready_timeout=180, poll_interval=0.5)
        self.root = root

    def upload(self, spec: str, run_id: str, source: str, tamper: bool = False, diverged: bool = False) -> None:
        """A finished run of `spec` in the bucket: the session run `source`'s files, with its gate
        decided again (passed) for this copy; `tamper` changes its adapter weights after the
        manifest was written (what a corrupted upload looks like to every reader); `diverged`
        puts NaN in its LoRA weights with a manifest that matches (it loads, then every answer
        fails: what a diverged run looks like at the engine)."""
        src = self.root / "runs" / spec / run_id
        shutil.copytree(self.env.run_dir(source), src)
        if run_id != source:
            manifest = json.loads((src / "manifest.json").read_text())
            manifest["runId"] = run_id
            (src / "manifest.json").write_text(json.dumps(manifest))
        write_gate(src, passed=True)
        if diverged:
            import hashlib

            from safetensors.torch import load_file, save_file

            weights = src / "model" / "adapter_model.safetensors"
            save_file({k: (v * float("nan") if "lora_B" in k else v) for k, v in load_file(str(weights)).items()},
                      str(weights))
            manifest = json.loads((src / "manifest.json").read_text())
            manifest["files"]["model/adapter_model.safetensors"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
            (src / "manifest.json").write_text(json.dumps(manifest))
        if tamper:
            weights = next(src.glob("model/*.safetensors"))
            data = bytearray(weights.read_bytes())
            data[-1] ^= 0xFF
            weights.write_bytes(bytes(data))
        uri = self.store.run_uri(spec, run_id)
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            self.store.put(self.store.join(uri, str(path.relative_to(src))), path.read_bytes())

    def request(self, spec: str, run_id: str, rollout: str = "{strategy: rolling}"):
        from controller.seams import DeployRequest, Lineage

        return DeployRequest(finetune=_finetune(spec, rollout), run_id=run_id, run_uri=self.store.run_uri(spec, run_id),
                             serving_id=f"serving-{run_id}", lineage=Lineage(MD5, COMMIT), base_model=str(self.env.base),
                             serving_config_sha256=served_config(), corpus_dir=str(self.env.repo / "corpora" / "kb"),
                             corpus_version=corpus_version())

    def promote(self, spec: str, run_id: str, timeout: float = 300, rollout: str = "{strategy: rolling}",
                serving=None):
        """Reconcile passes of the deploy step until the rollout settles (the loop never blocks:
        each `promote` returns at once); `serving`: another deployer on the same cluster and state."""
        request = self.request(spec, run_id, rollout)
        deadline = time.monotonic() + timeout
        steps = []
        while time.monotonic() < deadline:
            result = (serving or self.serving).promote(request)
            steps.append(result)
            if result.outcome != "rolling_out":
                return result, steps
            time.sleep(min(result.after or 0.5, 1.0))
        pytest.fail(f"the rollout of {run_id} did not settle in {timeout:.0f}s: {steps[-1].message}\n{self.pods_report()}")

    def pods_report(self) -> str:
        """Each pod's containers (state, restarts) and the tail of their logs: what a failure shows."""
        out = []
        for pod in self.cluster.pods(NS):
            name = pod["metadata"]["name"]
            status = pod.get("status") or {}
            out.append(f"=== {name} phase={status.get('phase')} conditions="
                       f"{[(c.get('type'), c.get('status'), c.get('message')) for c in status.get('conditions') or []]}")
            for st in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
                log = self.cluster.kubelet.log_result(NS, name, {"container": st["name"], "tailLines": "8"})
                out.append(f"--- {name}/{st['name']} ready={st.get('ready')} restarts={st.get('restartCount')} "
                           f"state={st.get('state')}\n{log.text or log.error}")
        return "\n".join(out)

    def client(self, spec: str):
        from openai import OpenAI

        return OpenAI(base_url=self.cluster.service_url(NS, f"{spec}-serve", "http") + "/v1", api_key="unused",
                      max_retries=0, timeout=60)

    def ask(self, spec: str):
        return self.client(spec).chat.completions.create(model=spec, max_tokens=8, messages=[
            {"role": "user", "content": QUESTION}])

    def engine_pods(self, ready: bool = True) -> list[dict]:
        pods = [p for p in self.cluster.pods(NS, ENGINE_PODS) if not p["metadata"].get("deletionTimestamp")]
        return [p for p in pods if not ready or _ready(p)]

    def replica_models(self, pod: dict) -> set[str]:
        """What one engine replica reports loaded (GET /v1/models inside the pod's network)."""
        import urllib.request

        host, port = self.cluster.pod_address(NS, pod["metadata"]["name"], 8000)
        with urllib.request.urlopen(f"http://{host}:{port}/v1/models", timeout=10) as resp:
            cards = json.loads(resp.read())["data"]
        return {c["id"] for c in cards if c.get("parent") == "base"}

    def desired(self) -> dict:
        from controller.render.vllm import desired_set_uri

        (pool,) = {p["metadata"]["labels"]["ftops.dev/engine-pool"] for p in self.cluster.pods(NS, ENGINE_PODS)}
        return json.loads(self.store.get(desired_set_uri(self.store.root, NS, pool)))

    def close(self) -> None:
        self.cluster.stop()
        shutil.rmtree(self.image_bin, ignore_errors=True)


class Traffic:
    """Requests to a spec's gateway in a thread, each on a new connection (a new client), one every
    PACE seconds until stopped: every answer's run id, and every failure as the client saw it.

    Paced, not back to back: each answer costs the gateway and engine pods CPU, and requests
    without a pause kept a core busy for as long as a rollout took, which slowed the pods being
    rolled out on a two-core machine. Five requests a second still cross every window these tests
    open (a pod killed and restarted, an adapter that fails to load, a canary)."""

    PACE = 0.2

    def __init__(self, world: World, spec: str) -> None:
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(world, spec), daemon=True)

    def _run(self, world: World, spec: str) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(str(world.ask(spec).system_fingerprint))
            except Exception as exc:  # noqa: BLE001 - a failed request is what the tests look for
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.PACE)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(90)


def _ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


@pytest.fixture(scope="module")
def world(s3_server, env, tmp_path_factory):  # noqa: F811
    saved = dict(os.environ)
    os.environ.update(s3_server.env())
    w = World(tmp_path_factory.mktemp("vllm-pool"), s3_server, env)
    w.upload(SPEC_NAME, RUN_A, RUN_A)
    w.upload(OTHER, RUN_B, RUN_B)
    yield w
    w.close()
    os.environ.clear()
    os.environ.update(saved)


def test_a_run_is_promoted_onto_the_vllm_pool_and_answers_through_the_gateway(world):
    result, steps = world.promote(SPEC_NAME, RUN_A)
    assert result.outcome == "promoted", f"{result.message}\n{world.pods_report()}"
    assert [s.outcome for s in steps[:1]] == ["rolling_out"] and len(steps) > 2  # asynchronous: it never waited
    assert [e["kind"] for s in steps for e in s.events] == ["deploy.started", "deploy.promoted"]

    # The pool: vLLM (the operator's image) with the sidecar, every replica ready and holding the adapter.
    names = sorted(d["metadata"]["name"] for d in world.cluster.fake.list("apps/v1", "Deployment", NS)["items"])
    assert len(names) == 2 and names[1] == f"{SPEC_NAME}-serve" and names[0].endswith("-engine"), names
    # the gateway switched once one replica held the adapter; the other one catches up by itself
    pods = world.cluster.wait(lambda: len(world.engine_pods()) == 2 and world.engine_pods(), timeout=120,
                              message="both engine replicas ready")
    for pod in pods:
        engine, sidecar = pod["spec"]["containers"]
        assert engine["image"] == VLLM_IMAGE and engine["command"] == ["vllm", "serve"] and "--enable-lora" in engine["args"]
        assert sidecar["name"] == "adapter-sidecar"
        assert world.replica_models(pod) == {RUN_A}
    assert world.desired()["adapters"] == {RUN_A: world.store.run_uri(SPEC_NAME, RUN_A)}

    # The gateway: no model of its own; its engines are the pool's headless Service.
    gateway = world.cluster.get("apps/v1", "Deployment", NS, f"{SPEC_NAME}-serve")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["ftops", "serve", "gateway"]
    assert all("nvidia.com/gpu" not in (container["resources"].get(k) or {}) for k in ("requests", "limits"))
    reply = world.ask(SPEC_NAME)
    assert reply.system_fingerprint == RUN_A and reply.model == SPEC_NAME
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.model_extra["sources"][0]["path"] == ANSWER_DOC  # retrieval over the published corpus
    assert "citations" in reply.model_extra
    current = world.serving.current(SPEC_NAME)
    assert current is not None and current.run_id == RUN_A and current.healthy, current


def test_a_second_spec_on_the_same_base_shares_the_pool_and_both_adapters_answer(world):
    engine = {d["metadata"]["name"] for d in world.cluster.fake.list("apps/v1", "Deployment", NS)["items"]
              if d["metadata"]["name"].endswith("-engine")}
    uids = {p["metadata"]["uid"] for p in world.engine_pods()}
    result, _ = world.promote(OTHER, RUN_B)
    assert result.outcome == "promoted", result.message
    after = {d["metadata"]["name"] for d in world.cluster.fake.list("apps/v1", "Deployment", NS)["items"]
             if d["metadata"]["name"].endswith("-engine")}
    assert after == engine  # one pool for both specs
    assert {p["metadata"]["uid"] for p in world.engine_pods()} == uids  # its replicas were not restarted
    desired = world.desired()
    assert desired["adapters"] == {RUN_A: world.store.run_uri(SPEC_NAME, RUN_A),
                                   RUN_B: world.store.run_uri(OTHER, RUN_B)}
    assert desired["owners"] == {RUN_A: SPEC_NAME, RUN_B: OTHER}
    world.cluster.wait(lambda: all(world.replica_models(p) == {RUN_A, RUN_B} for p in world.engine_pods()),
                       timeout=60, message="every replica holds both adapters")
    assert world.ask(SPEC_NAME).system_fingerprint == RUN_A
    other = world.ask(OTHER)
    assert other.system_fingerprint == RUN_B and other.model == OTHER
    assert other.model_extra["sources"][0]["path"] == ANSWER_DOC


def test_a_killed_engine_replica_is_refilled_by_its_sidecar_while_the_gateway_routes_around_it(world):
    victim, survivor = sorted(world.engine_pods(), key=lambda p: p["metadata"]["name"])
    name = victim["metadata"]["name"]

    def restarted() -> bool:  # both containers of the killed pod run again, and the pod is ready
        pod = world.cluster.get("v1", "Pod", NS, name)
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return _ready(pod) and len(statuses) == 2 and all(c["restartCount"] >= 1 and c["ready"] for c in statuses)

    with Traffic(world, SPEC_NAME) as traffic:
        world.cluster.wait(lambda: len(traffic.answers) >= 2, timeout=60, message="traffic before the kill")
        world.cluster.kill_pod(NS, name)  # every process of the pod: vLLM comes back empty
        before = len(traffic.answers)
        world.cluster.wait(restarted, timeout=180, message="the killed replica comes back ready")
        world.cluster.wait(lambda: len(traffic.answers) >= before + 4, timeout=60, message="traffic after the restart")
    pod = world.cluster.get("v1", "Pod", NS, name)
    restarts = {c["name"]: c["restartCount"] for c in pod["status"]["containerStatuses"]}
    assert restarts["vllm"] >= 1 and restarts["adapter-sidecar"] >= 1, restarts
    assert world.replica_models(pod) == {RUN_A, RUN_B}  # the sidecar loaded both again
    assert traffic.failures == [], traffic.failures[:3]
    assert set(traffic.answers) == {RUN_A}
    assert world.replica_models(survivor) == {RUN_A, RUN_B}


def test_a_run_whose_adapter_cannot_load_is_rolled_back_while_the_old_one_answers(world):
    world.upload(SPEC_NAME, BROKEN, RUN_B, tamper=True)
    world.serving.ready_timeout = 25
    try:
        with Traffic(world, SPEC_NAME) as traffic:
            result, steps = world.promote(SPEC_NAME, BROKEN)
    finally:
        world.serving.ready_timeout = 180
    assert result.outcome == "rolled_back" and result.serving_run_id == RUN_A, result.message
    assert "not ready" in result.message and BROKEN in result.message
    assert BROKEN not in world.desired()["adapters"]  # out of the pool again
    assert traffic.answers and set(traffic.answers) == {RUN_A} and traffic.failures == [], \
        (set(traffic.answers), traffic.failures[:3])
    world.cluster.wait(lambda: all(world.replica_models(p) == {RUN_A, RUN_B} for p in world.engine_pods()),
                       timeout=30, message="no replica keeps the broken adapter")
    assert world.ask(SPEC_NAME).system_fingerprint == RUN_A
    current = world.serving.current(SPEC_NAME)
    assert current is not None and current.run_id == RUN_A and current.healthy, current


def test_a_canary_whose_adapter_fails_is_rolled_back_by_the_analysis_while_the_old_one_answers(world):
    """Canary on the pool: the diverged run (NaN LoRA weights: it loads, then every answer fails)
    joins the desired set and gets half of the spec's requests through the gateway's weighted
    routes. The gateway retries each failed canary request on the stable run (users see only A's
    answers); the analysis of the gateway pods' own /metrics rolls it back by itself, long before
    its 600 s window ends, and its adapter leaves every replica."""
    from controller.serve.rollout import Policy

    world.upload(SPEC_NAME, DIVERGED, RUN_B, diverged=True)
    world.serving.policy = Policy(window_seconds=600, min_errors=3)
    try:
        with Traffic(world, SPEC_NAME) as traffic:
            result, steps = world.promote(SPEC_NAME, DIVERGED, rollout=CANARY)
    finally:
        world.serving.policy = None
    assert result.outcome == "rolled_back" and result.serving_run_id == RUN_A, f"{result.message}\n{world.pods_report()}"
    assert "analysis" in result.message and DIVERGED in result.message, result.message
    assert any("routed" in step.message for step in steps), [s.message for s in steps]  # it did get traffic
    assert len(traffic.answers) >= 3 and set(traffic.answers) == {RUN_A} and traffic.failures == [], \
        (set(traffic.answers), traffic.failures[:3], world.pods_report())
    assert DIVERGED not in world.desired()["adapters"]
    world.cluster.wait(lambda: all(world.replica_models(p) == {RUN_A, RUN_B} for p in world.engine_pods()),
                       timeout=30, message="no replica keeps the diverged adapter")
    assert world.ask(SPEC_NAME).system_fingerprint == RUN_A
    current = world.serving.current(SPEC_NAME)
    assert current is not None and current.run_id == RUN_A and current.healthy, current


def test_a_spec_whose_gpu_type_moves_to_the_embedded_engine_and_back_keeps_answering(world):
    """The operator moves the spec's GPU type to the embedded engine (here also serving GPUs to 0:
    the fake kubelet's pods have no CUDA for an embedded server on a GPU): the spec's `<spec>-serve`
    rolls in place from the gateway to its own model server, users keep getting answers, and its
    adapter leaves the shared pool, whose replicas are not restarted. Set back to vllm, the
    adapter rejoins the pool and the gateway returns. First, a move whose server never gets
    ready (the embedded engine on a GPU, which these pods lack) puts the gateway back while it
    keeps answering, and the adapter stays in the pool."""
    from controller.serve.kube import KubernetesServing

    op = world.operator
    moved = {**op.gpus, "a100-80gb": op.gpus["a100-80gb"].model_copy(update={"engine": "embedded"})}

    def deployer(serving_gpus: int, ready_timeout: float) -> KubernetesServing:
        operator = op.model_copy(update={"gpus": moved, "cluster": op.cluster.model_copy(
            update={"serving_gpus": serving_gpus})})
        return KubernetesServing(world.serving.kube, operator, world.root / "state", artifacts=world.store,
                                 ready_timeout=ready_timeout, poll_interval=0.5)

    pool_uids = {p["metadata"]["uid"] for p in world.engine_pods()}

    def serve_command() -> list[str]:
        dep = world.cluster.get("apps/v1", "Deployment", NS, f"{OTHER}-serve")
        return dep["spec"]["template"]["spec"]["containers"][-1]["command"]

    with Traffic(world, OTHER) as traffic:
        failed, _ = world.promote(OTHER, RUN_B, serving=deployer(serving_gpus=1, ready_timeout=20))
    assert failed.outcome == "rolled_back" and failed.serving_run_id == RUN_B, failed.message
    assert "failed readiness" in failed.message and "serves again" in failed.message, failed.message
    assert serve_command()[:3] == ["ftops", "serve", "gateway"]
    assert traffic.failures == [] and set(traffic.answers) == {RUN_B}, (set(traffic.answers), traffic.failures[:3])
    assert RUN_B in world.desired()["adapters"]
    embedded = deployer(serving_gpus=0, ready_timeout=180)

    with Traffic(world, OTHER) as traffic:
        result, _ = world.promote(OTHER, RUN_B, serving=embedded)
        world.cluster.wait(lambda: len(traffic.answers) >= 2, timeout=60, message="answers from the embedded server")
    assert result.outcome == "promoted" and result.serving_run_id == RUN_B, f"{result.message}\n{world.pods_report()}"
    assert "left engine pool" in result.message, result.message
    assert serve_command()[:3] != ["ftops", "serve", "gateway"], serve_command()
    assert traffic.failures == [] and set(traffic.answers) == {RUN_B}, (set(traffic.answers), traffic.failures[:3])
    desired = world.desired()
    assert desired["adapters"] == {RUN_A: world.store.run_uri(SPEC_NAME, RUN_A)} and OTHER not in desired["members"]
    world.cluster.wait(lambda: all(world.replica_models(p) == {RUN_A} for p in world.engine_pods()),
                       timeout=30, message="the sidecars unload the adapter of the spec that left")
    assert {p["metadata"]["uid"] for p in world.engine_pods()} == pool_uids
    reply = world.ask(OTHER)
    assert reply.system_fingerprint == RUN_B and reply.model_extra["sources"][0]["path"] == ANSWER_DOC
    assert world.ask(SPEC_NAME).system_fingerprint == RUN_A

    with Traffic(world, OTHER) as traffic:
        back, _ = world.promote(OTHER, RUN_B)
    assert back.outcome == "promoted" and back.serving_run_id == RUN_B, f"{back.message}\n{world.pods_report()}"
    assert serve_command()[:3] == ["ftops", "serve", "gateway"]
    assert traffic.failures == [] and set(traffic.answers) == {RUN_B}, (set(traffic.answers), traffic.failures[:3])
    assert world.desired()["adapters"] == {RUN_A: world.store.run_uri(SPEC_NAME, RUN_A),
                                           RUN_B: world.store.run_uri(OTHER, RUN_B)}
    world.cluster.wait(lambda: all(world.replica_models(p) == {RUN_A, RUN_B} for p in world.engine_pods()),
                       timeout=60, message="every replica holds the returning adapter")
    assert world.ask(OTHER).system_fingerprint == RUN_B


def test_a_deleted_spec_takes_its_gateway_and_adapter_but_not_the_shared_pool(world):
    pool_uids = {p["metadata"]["uid"] for p in world.engine_pods()}
    stopped = world.serving.stop(OTHER)
    assert stopped.outcome == "stopped" and "left engine pool" in stopped.message, stopped.message
    assert world.cluster.get("apps/v1", "Deployment", NS, f"{OTHER}-serve") is None
    assert world.cluster.get("v1", "Service", NS, f"{OTHER}-serve") is None
    desired = world.desired()
    assert desired["adapters"] == {RUN_A: world.store.run_uri(SPEC_NAME, RUN_A)} and OTHER not in desired["members"]
    world.cluster.wait(lambda: all(world.replica_models(p) == {RUN_A} for p in world.engine_pods()),
                       timeout=30, message="the sidecars unload the deleted spec's adapter")
    assert {p["metadata"]["uid"] for p in world.engine_pods()} == pool_uids  # the pool stayed
    assert world.ask(SPEC_NAME).system_fingerprint == RUN_A

    last = world.serving.stop(SPEC_NAME)
    assert "deleted" in last.message and "no spec uses it" in last.message, last.message
    world.cluster.wait(lambda: not world.cluster.fake.list("apps/v1", "Deployment", NS)["items"], timeout=30,
                       message="the pool and the gateway are gone")
    assert [s for s in world.cluster.fake.list("v1", "Service", NS)["items"]] == []
