"""The cluster path end to end, on a fake cluster whose kubelet really runs the pods
(tests/fakekube) and an S3 store (moto on 127.0.0.1): the demo spec goes from commit to Ready on
the kubernetes backend. The controller pulls the data with DVC from S3 and publishes the split;
the training Job's inputs container fetches it and materialises the tiny base model into the
namespace's model cache; the real trainer trains in the pod and uploads the run; the evaluation
Job runs the real evaluator on the run fetched from the store and puts its report back; the gate
passes; a serving Deployment answers through the official openai SDK. Then the faults, each
asserted on what a user sees (conditions, ledger, store, the served answers).

One trained run is shared by the tests of this module (they run in order): training the tiny
model is the expensive part, and the faults after the first test are about what happens around
a run that exists."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from controller import demo

NS = "ftops-support-platform"
SPEC = demo.SPEC_NAME
STORE_SECRET = "ftops-store"


def _operator_yaml(path: Path, store_uri: str, endpoint: str) -> Path:
    config = {
        "tenancy": {"namespaces": {"support-platform": NS}},
        "cluster": {
            "image": "ghcr.io/ftops/trainer:test",
            "cpuOnlyCpu": "1", "cpuOnlyMemory": "2Gi", "servingCpu": "1", "servingMemory": "2Gi",
            "ephemeralStorage": "2Gi", "checkpointStorage": "1Gi",
            "artifactStore": {"uri": store_uri, "endpointUrl": endpoint, "region": "us-east-1",
                              "credentials": [{"env": "AWS_ACCESS_KEY_ID", "secret": STORE_SECRET, "key": "id"},
                                              {"env": "AWS_SECRET_ACCESS_KEY", "secret": STORE_SECRET, "key": "secret"}]},
            "modelCache": {"storage": "1Gi", "accessModes": ["ReadWriteOnce"]},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


class World:
    """The fake cluster, the bucket, the demo repository and a way to build controllers."""

    def __init__(self, root: Path, s3_server) -> None:
        from controller.catalog import load_operator_config
        from controller.data import dvc
        from fakekube.cluster import FakeCluster

        self.root, self.s3_server = root, s3_server
        self.bucket = s3_server.create_bucket()
        self.store_uri = self.bucket.uri("ftops")
        self.repo = demo.build(root / "repo", root / "remote", examples=400, epochs=2).root
        # The dataset lives in S3: the repository's DVC remote is the bucket, the local one is gone.
        for args in (["remote", "add", "--force", "--default", "ftops", self.bucket.uri("dvc")], ["push", "-r", "ftops"]):
            proc = dvc.run_dvc(args, self.repo)
            assert proc.returncode == 0, proc.stderr
        shutil.rmtree(root / "remote")
        # An early first checkpoint, so the preemption below comes early in the run; and the
        # comparative gate: the fine-tune must beat its base model on the held-out split (an
        # untrained or broken run fails it), beside a regression gate. The demo's absolute
        # thresholds need a longer training than a cluster test affords (two epochs of 400
        # tickets here); tests/reconciler holds the demo to them. Measured: this shorter run's
        # general skills drop 0.10, which the demo's maxDrop 0.05 would block; the demo's run
        # without replay drops 0.95, which this gate's 0.3 still blocks.
        spec_path = self.repo / "specs" / f"{SPEC}.yaml"
        spec = yaml.safe_load(spec_path.read_text())
        spec["spec"]["training"]["checkpointEverySteps"] = 10
        evaluation = spec["spec"]["evaluation"]
        spec["spec"]["evaluation"] = {"task": {**evaluation["task"], "min": 0.0}, "regression": {"maxDrop": 0.3},
                                      "compare": evaluation["compare"]}
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.commit = demo.commit(self.repo, "the dataset's remote is the bucket")
        self.cluster = FakeCluster(root / "cluster").start()
        self.cluster.fake.ensure_namespace(NS)
        self.cluster.expose_host_port(s3_server.port)
        env = s3_server.env()
        self.cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": STORE_SECRET, "namespace": NS},
                            "stringData": {"id": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"]}},
                           namespace=NS)
        self.kubeconfig = self.cluster.write_kubeconfig(root / "kubeconfig")
        self.operator_path = _operator_yaml(root / "operator.yaml", self.store_uri, s3_server.endpoint_url)
        self.operator = load_operator_config(self.operator_path)
        self.home = root / "home"

    def controller(self, fence=None, **config):
        """A controller as `ftops controller --backend kubernetes` builds one (build_reconciler)."""
        from controller.commands.reconcile_commands import cluster_store
        from controller.backends.kubernetes import KubernetesBackend, load_api_client
        from controller.backends.kubernetes_eval import KubernetesEvaluator
        from controller.ledger import Ledger
        from controller.reconcile import ControllerConfig, Reconciler
        from controller.serve.kube import KubernetesServing

        store = cluster_store(self.operator)
        backend = KubernetesBackend(load_api_client(str(self.kubeconfig)), namespaces=[NS], operator=self.operator,
                                    store=store, fence=fence)
        config = ControllerConfig(repo=str(self.repo), home=self.home, operator_config=str(self.operator_path),
                                  store=self.store_uri, backoff_base_s=0.5, backoff_cap_s=2, **config)
        serving = KubernetesServing(backend, self.operator, self.home / "store", artifacts=store, ready_timeout=300,
                                    poll_interval=0.5)
        return Reconciler(config, backend, ledger=Ledger(self.home / "ledger.db", before_write=fence), deployer=serving,
                          evaluator=KubernetesEvaluator(backend, store, self.operator), store=store)

    def settle(self, reconciler, until, timeout: float = 900):
        """Reconcile passes until `until(status)` holds for the spec (a timeout fails the test)."""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            result = reconciler.reconcile_once()
            status = result.statuses.get(SPEC)
            if status is not None and until(status):
                return status
            time.sleep(min(result.requeue_after or 1.0, 2.0))
        pytest.fail(f"not settled after {timeout:.0f}s: {status}")

    def close(self) -> None:
        self.cluster.stop()


@pytest.fixture(scope="module")
def world(s3_server, tmp_path_factory):
    saved = dict(os.environ)
    os.environ.update(s3_server.env())
    w = World(tmp_path_factory.mktemp("kube-e2e"), s3_server)
    yield w
    if getattr(w, "kill_b", None) is not None:
        w.kill_b.set()
    w.close()
    os.environ.clear()
    os.environ.update(saved)


def _ready(status) -> bool:
    return status.phase == "Ready"


def _elector(world, identity: str):
    from controller.backends.kubernetes_lease import LeaderElector

    return LeaderElector(kubeconfig=str(world.kubeconfig), namespace=NS, name="ftops-controller", identity=identity,
                         lease_duration=3, renew_deadline=2, retry_period=0.5)


def _keep_leading(elector) -> "threading.Event":
    """Renew the Lease every retry period until the returned event is set: setting it is the
    process dying (it never releases the Lease)."""
    dead = threading.Event()

    def loop() -> None:
        while not dead.is_set():
            try:
                elector.try_acquire_or_renew()
            except Exception:  # noqa: BLE001 - the API server away for a moment: try again
                pass
            dead.wait(elector.retry_period)

    threading.Thread(target=loop, daemon=True).start()
    return dead


def _complete_checkpoint(checkpoints: Path) -> bool:
    """A checkpoint the trainer would resume from: renamed into place *and* sealed by its COMPLETE
    marker (a kill between the two leaves one it discards, and the run starts over)."""
    from controller.train.checkpoint import latest_complete

    return latest_complete(checkpoints) is not None


def _training_pods(world) -> list[dict]:
    return world.cluster.pods(NS, "app.kubernetes.io/component=training")


def test_a_spec_goes_from_commit_to_ready_in_kubernetes_through_a_preemption_and_a_controller_handover(world):
    """One training run, with what a cluster does to it on the way: the pod is preempted after
    its first checkpoint (DisruptionTarget, SIGTERM), and the controller that submitted it dies
    while it trains; a second replica takes the Lease and carries the spec to Ready."""
    from openai import OpenAI

    from controller.errors import TemporaryError
    from controller.ledger import Ledger

    # Controller A leads and submits the run.
    a = _elector(world, "controller-a")
    assert a.try_acquire_or_renew()
    kill_a = _keep_leading(a)
    first = world.controller(fence=a.ensure_leader)
    world.settle(first, lambda st: bool(_training_pods(world)), timeout=300)
    (job,) = world.cluster.fake.list("batch/v1", "Job", NS)["items"]
    uid = job["metadata"]["uid"]

    # The pod writes its first checkpoint (on its own claim); then the scheduler preempts it.
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "checkpoints")
    checkpoints = world.cluster.claim_dir(NS, claim)
    world.cluster.wait(lambda: _complete_checkpoint(checkpoints), timeout=600, message="no checkpoint written")
    (pod,) = [p for p in _training_pods(world) if (p.get("status") or {}).get("phase") == "Running"]
    world.cluster.preempt(NS, pod["metadata"]["name"])

    # Controller A dies here (it never renews or releases). B cannot act until the Lease expires.
    kill_a.set()
    b = _elector(world, "controller-b")
    assert not b.try_acquire_or_renew()
    assert not b.is_leader()  # (`ftops controller` runs no pass while it does not lead)
    second = world.controller(fence=b.ensure_leader)
    world.cluster.wait(lambda: b.try_acquire_or_renew(), timeout=30, message="B never took the Lease")
    world.kill_b = _keep_leading(b)
    with pytest.raises(TemporaryError):  # a zombie A is fenced: it writes nothing now
        a.ensure_leader()
    status = world.settle(second, _ready)

    assert status.condition("Ready").status == "True", status
    jobs = world.cluster.fake.list("batch/v1", "Job", NS)["items"]
    training = [j for j in jobs if j["metadata"]["labels"]["app.kubernetes.io/component"] == "training"]
    assert [j["metadata"]["uid"] for j in training] == [uid]  # never resubmitted: no duplicate Job
    assert sorted(j["metadata"]["labels"]["app.kubernetes.io/component"] for j in jobs) == ["evaluation", "training"]

    ledger = Ledger(world.home / "ledger.db")
    submitted, finished = list(ledger.events(kind="run.submitted")), list(ledger.events(kind="run.finished"))
    assert len(submitted) == 1 and len(finished) == 1 and submitted[0].run_id == finished[0].run_id == status.run_id
    assert ledger.verify().ok  # the chain, and every artifact re-hashed at its store URI
    run_uri = finished[0].payload["outputDir"]
    assert run_uri == f"{world.store_uri}/{SPEC}/{status.run_id}"

    # The run resumed from its checkpoint: the steps it logged are 1..N once each, in order.
    from controller.artifacts import open_store

    store = open_store(world.store_uri)
    steps = [json.loads(line)["step"] for line in store.get(store.join(run_uri, "metrics.jsonl")).decode().splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 20
    summary = json.loads(store.get(store.join(run_uri, "summary.json")))
    assert summary["resumedFromSteps"], summary  # the replacement pod resumed, it did not start over
    keys = world.bucket.keys("ftops/")
    assert any(k.startswith("ftops/inputs/") for k in keys)  # the published split and repository files
    assert f"ftops/{SPEC}/{status.run_id}/eval/report.json" in keys

    # The base model was materialised once into the namespace's cache, for every pod.
    cache = world.cluster.claim_dir(NS, "ftops-model-cache")
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / ".ftops-model.json").is_file()

    # The served model answers through the official SDK, via the Service.
    client = OpenAI(base_url=world.cluster.service_url(NS, f"{SPEC}-serve", "http") + "/v1", api_key="unused")
    reply = client.chat.completions.create(model=SPEC, messages=[
        {"role": "user", "content": "I was charged twice for my subscription this month."}], max_tokens=16)
    assert reply.choices[0].message.content
    assert status.serving_run_id == status.run_id
    world.leader = b
    world.run_id = status.run_id


def _answers(world) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=world.cluster.service_url(NS, f"{SPEC}-serve", "http") + "/v1", api_key="unused",
                    max_retries=0, timeout=60)
    reply = client.chat.completions.create(model=SPEC, messages=[
        {"role": "user", "content": "The app crashes when I open settings."}], max_tokens=16)
    return reply.choices[0].message.content or ""


def test_a_lost_worker_of_a_two_node_run_restarts_the_group_and_it_resumes(world):
    """A 2-node run (Indexed Job + headless Service, torchrun over gloo between the pods) on the
    inputs the first run published: worker 1 is killed (SIGKILL, nothing written) after the first
    checkpoint; the group starts again and resumes from the shared checkpoint claim."""
    from controller.artifacts import open_store
    from controller.backends.kubernetes import KubernetesBackend, load_api_client
    from controller.render import ModelSource
    from controller.runconfig import RunConfig
    from controller.seams import Lineage, Run
    from controller.spec.finetune import FineTune

    first = next(j for j in world.cluster.fake.list("batch/v1", "Job", NS)["items"]
                 if j["metadata"]["labels"]["app.kubernetes.io/component"] == "training")
    init_env = {e["name"]: e.get("value") for e in first["spec"]["template"]["spec"]["initContainers"][0]["env"]}
    (data_uri, _), = json.loads(init_env["FTOPS_INPUTS"])
    model = json.loads(init_env["FTOPS_BASE_MODEL"])
    spec = yaml.safe_load((world.repo / "specs" / f"{SPEC}.yaml").read_text())
    spec["metadata"]["name"] = "triage-two-nodes"
    spec["spec"]["hardware"]["nodes"] = 2
    # the kill comes early in the run; half an epoch (32 steps): what is asserted is the group's
    # restart and resume, not what the run learns (measured in `make test`: two epochs took this
    # test 112 s of CPU, half an epoch 66 s)
    spec["spec"]["training"].update({"epochs": 0.5, "checkpointEverySteps": 3})
    ft = FineTune.model_validate_json(json.dumps(spec))
    cm = world.cluster.fake.list("v1", "ConfigMap", NS)["items"]
    run_json = next(c for c in cm if "run.json" in (c.get("data") or {}))["data"]["run.json"]
    rc = RunConfig.model_validate_json(run_json).model_copy(update={
        "run_id": "2" * 32, "spec_name": ft.name, "training": ft.spec.training})
    backend = KubernetesBackend(load_api_client(str(world.kubeconfig)), namespaces=[NS], operator=world.operator,
                                store=open_store(world.store_uri))
    backend.publish_inputs = lambda run: (data_uri, ModelSource(model["uri"], model["revision"]))  # published already
    run = Run(rc, ft, Lineage(first["metadata"]["labels"]["ftops.dev/data-md5"], world.commit))
    backend.submit(run)
    job = backend.find(run.run_id)
    name = job["metadata"]["name"]
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "checkpoints")
    checkpoints = world.cluster.claim_dir(NS, claim)
    world.cluster.wait(lambda: _complete_checkpoint(checkpoints), timeout=600, message="the 2-node run wrote no checkpoint")
    pods = world.cluster.pods(NS, f"batch.kubernetes.io/job-name={name}")
    worker = next(p for p in pods if p["metadata"]["labels"].get("batch.kubernetes.io/job-completion-index") == "1"
                  and (p.get("status") or {}).get("phase") == "Running")
    world.cluster.kill_pod(NS, worker["metadata"]["name"])
    done = world.cluster.wait(lambda: world.cluster.condition("batch/v1", "Job", NS, name, "Complete")
                              or world.cluster.condition("batch/v1", "Job", NS, name, "Failed"), timeout=900)
    assert done["type"] == "Complete", done
    store = open_store(world.store_uri)
    run_uri = store.run_uri(ft.name, run.run_id)
    assert store.manifest(run_uri) is not None  # uploaded by node 0, manifest last
    summary = json.loads(store.get(store.join(run_uri, "summary.json")))
    assert summary["resumedFromSteps"], summary  # the group resumed from its checkpoint
    status = world.cluster.get("batch/v1", "Job", NS, name)["status"]
    assert status["failed"] >= 2  # the group restarted: the killed worker, and the peer whose collective broke


def test_the_store_down_is_a_temporary_error_with_backoff_and_what_serves_keeps_serving(world):
    from controller.ledger import Ledger

    # resync 0: every pass looks at the world again (the store included), as after a resync period
    reconciler = world.controller(fence=world.leader.ensure_leader, resync_seconds=0)
    keys = set(world.bucket.keys())
    deployment = world.cluster.get("apps/v1", "Deployment", NS, f"{SPEC}-serve")
    records = Ledger(world.home / "ledger.db").count()
    with world.s3_server.outage():
        first = reconciler.reconcile_once()
        stalled = first.statuses[SPEC].condition("Stalled")
        assert stalled.reason == "Retrying" and "temporary error" in stalled.message, stalled
        assert "artifact store" in stalled.message
        assert "retry 1 in" in stalled.message  # counted and backed off (controller.reconcile.outcome)
        second = reconciler.reconcile_once()  # inside the backoff: waits, does not hammer the store
        assert first.requeue_after is not None and second.requeue_after is not None
        assert 0 < second.requeue_after <= first.requeue_after
        assert _answers(world)  # the server does not need the store to keep serving
        after = world.cluster.get("apps/v1", "Deployment", NS, f"{SPEC}-serve")
        assert after["metadata"]["uid"] == deployment["metadata"]["uid"]
        assert after["metadata"]["generation"] == deployment["metadata"]["generation"]  # not touched
    assert set(world.bucket.keys()) >= keys  # nothing deleted
    assert Ledger(world.home / "ledger.db").count() == records  # no record of a failure that is not a fact
    status = world.settle(reconciler, _ready, timeout=120)  # the store back: Ready again, not stalled
    stalled = status.condition("Stalled")
    assert stalled is None or stalled.status == "False"


def test_a_deleted_spec_prunes_its_serving_objects_and_nothing_else(world):
    from controller.ledger import Ledger

    keys = set(world.bucket.keys())
    (world.repo / "specs" / f"{SPEC}.yaml").unlink()
    demo.commit(world.repo, "retire the support-triage fine-tune")
    reconciler = world.controller(fence=world.leader.ensure_leader, allow_delete_all=True)

    def pruned() -> bool:
        reconciler.reconcile_once()
        return world.cluster.get("apps/v1", "Deployment", NS, f"{SPEC}-serve") is None

    world.cluster.wait(pruned, timeout=120, message="the serving Deployment was not pruned")
    assert world.cluster.get("v1", "Service", NS, f"{SPEC}-serve") is None
    serve_configs = [c for c in world.cluster.fake.list("v1", "ConfigMap", NS)["items"]
                     if c["metadata"]["labels"].get("app.kubernetes.io/component") == "serving"]
    assert serve_configs == []
    # ... and nothing else: the run and its report in the store, the namespace's model cache and
    # Secrets, the audit trail.
    assert set(world.bucket.keys()) >= keys
    assert world.cluster.get("v1", "PersistentVolumeClaim", NS, "ftops-model-cache") is not None
    assert world.cluster.get("v1", "Secret", NS, STORE_SECRET) is not None
    ledger = Ledger(world.home / "ledger.db")
    assert len(list(ledger.events(kind="run.finished"))) == 1 and ledger.verify().ok
