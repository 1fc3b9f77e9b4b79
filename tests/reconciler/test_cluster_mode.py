"""Cluster mode against the fake API server: the reconciler (kubernetes backend) mirrors each
spec into a FineTune CR, writes its status through /status, records an Event for each changed
condition, and a fenced (non-leader) controller writes nothing, not even to its ledger."""
from __future__ import annotations

import subprocess
import time
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fakekube and fakes packages
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # fake_deployments

from controller import demo  # noqa: E402
from controller.backends.kubernetes import KubernetesBackend, load_api_client  # noqa: E402
from controller.backends.kubernetes_crd import CRD_FILE, FineTuneMirror  # noqa: E402
from controller.commands.reconcile_commands import ClusterSync  # noqa: E402
from controller.errors import TemporaryError  # noqa: E402
from controller.ledger import Ledger  # noqa: E402
from controller.reconcile import ControllerConfig, Reconciler  # noqa: E402
from fakekube.fixtures import fake_kube  # noqa: E402,F401

NAMESPACE = "ftops-support-platform"


@pytest.fixture
def api(fake_kube, tmp_path):
    fake_kube.ensure_namespace(NAMESPACE)
    path = tmp_path / "kubeconfig"
    path.write_text(fake_kube.kubeconfig())
    api = load_api_client(str(path))
    KubernetesBackend(api)._request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                    body=yaml.safe_load(CRD_FILE.read_text()))
    return api


@pytest.fixture
def unreviewed(demo_repo):
    subprocess.run(["git", "rm", "-q", "-r", "reviews"], cwd=demo_repo.root, check=True)
    demo.commit(demo_repo.root, "no reviews yet")
    return demo_repo


def test_status_and_events_reach_the_finetune_cr(fake_kube, api, unreviewed, tmp_path):
    backend = KubernetesBackend(api)
    reconciler = Reconciler(ControllerConfig(repo=str(unreviewed.root), home=tmp_path / "home"), backend)
    sync = ClusterSync(FineTuneMirror(backend, lambda ft: NAMESPACE))
    result = reconciler.reconcile_once()
    sync(reconciler, result)
    cr = fake_kube.get("ftops.dev/v1alpha1", "FineTune", NAMESPACE, demo.SPEC_NAME)
    conditions = {c["type"]: c for c in cr["status"]["conditions"]}
    assert conditions["DataReady"]["status"] == "False" and conditions["DataReady"]["reason"] == "ReviewPending"
    events = fake_kube.list("v1", "Event", NAMESPACE)["items"]
    reasons = {(e["reason"], e["type"]) for e in events if e["involvedObject"]["name"] == demo.SPEC_NAME}
    assert ("ReviewPending", "Normal") in reasons
    assert any(kind == "Warning" for _, kind in reasons)  # Stalled=True is a warning
    count = len(events)
    sync(reconciler, reconciler.reconcile_once())  # nothing changed: no new Event, no status write
    assert len(fake_kube.list("v1", "Event", NAMESPACE)["items"]) == count


def test_a_fenced_controller_writes_nothing(api, unreviewed, tmp_path):
    def fence() -> None:
        raise TemporaryError("not the leader")

    home = tmp_path / "home"
    backend = KubernetesBackend(api, fence=fence)
    reconciler = Reconciler(ControllerConfig(repo=str(unreviewed.root), home=home), backend,
                            ledger=Ledger(home / "ledger.db", before_write=fence))
    result = reconciler.reconcile_once()
    status = result.statuses[demo.SPEC_NAME]
    assert status.condition("Stalled").reason == "Retrying" and "not the leader" in status.condition("Stalled").message
    assert Ledger(home / "ledger.db").count() == 0


def test_cluster_mode_promotes_through_the_kubernetes_deployer_and_prunes_a_deleted_spec(fake_kube, api, demo_repo,
                                                                                         tmp_path):
    """The reconciler with the cluster seams (the kubernetes backend and deployer on the fake API
    server) takes the demo spec to Ready: the training Job is applied, completes (the fake
    kubelet, with the trainer's artifacts in the store), the evaluation reports (a fake
    evaluator: this test is about the seams, tests/cluster runs real pods), the gate passes and
    the serving Deployment rolls out. Deleting the spec prunes its serving objects and nothing
    else, and the controller keeps reconciling afterwards."""
    from fake_deployments import FakeDeployments
    from fakekube.kubelet import FakeKubelet
    from fakes import FakeEvaluator, passing_report

    from controller.artifacts import open_store
    from controller.catalog import load_operator_config
    from controller.serve.kube import KubernetesServing

    home = tmp_path / "home"
    operator = load_operator_config()
    backend = KubernetesBackend(api, operator=operator)
    store = open_store(str(home / "store"))
    evaluator = FakeEvaluator(store)  # reports go to the same store the deployer checks
    deployer = KubernetesServing(backend, operator, home / "store", ready_timeout=30, poll_interval=0.02)
    reconciler = Reconciler(ControllerConfig(repo=str(demo_repo.root), home=home, allow_delete_all=True), backend,
                            deployer=deployer, evaluator=evaluator)
    kubelet = FakeKubelet(fake_kube)
    with FakeDeployments(fake_kube):
        first = reconciler.reconcile_once().statuses[demo.SPEC_NAME]
        assert first.condition("Trained").reason == "Pending", first.to_dict()
        job = backend.find(first.run_id)
        assert job is not None and job["kind"] == "Job"
        # the trainer's outputs land in the store; the Job completes
        run_uri = store.run_uri(demo.SPEC_NAME, first.run_id)
        _write_run(store, run_uri, first.run_id)
        kubelet.succeed(job["metadata"]["namespace"], job["metadata"]["name"])
        second = reconciler.reconcile_once().statuses[demo.SPEC_NAME]
        assert second.condition("Evaluated").reason == "InProgress", second.to_dict()
        request = evaluator.submitted[0]
        evaluator.complete(request, passing_report(first.run_id, request.finetune))
        ready = reconciler.reconcile_once().statuses[demo.SPEC_NAME]
        for _ in range(500):  # the rollout is asynchronous: each pass advances it, none waits for it
            if ready.phase != "RollingOut":
                break
            time.sleep(0.02)
            ready = reconciler.reconcile_once().statuses[demo.SPEC_NAME]
        assert ready.phase == "Ready" and ready.serving_run_id == first.run_id, ready.to_dict()
        serving = deployer.current(demo.SPEC_NAME)
        assert serving is not None and serving.healthy and serving.run_id == first.run_id
        assert [e.kind for e in reconciler.ledger.events(kind="deploy.promoted")] == ["deploy.promoted"]

        subprocess.run(["git", "rm", "-q", f"specs/{demo.SPEC_NAME}.yaml"], cwd=demo_repo.root, check=True)
        demo.commit(demo_repo.root, "retire the triage bot")
        pruned = reconciler.reconcile_once()
        assert pruned.error is None and demo.SPEC_NAME not in pruned.statuses
        for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service")):
            assert fake_kube.list(api_version, kind, NAMESPACE)["items"] == [], kind
        assert fake_kube.list("batch/v1", "Job", NAMESPACE)["items"]  # the finished training Job is not ours to delete
        assert store.manifest(run_uri) is not None  # nor are the artifacts
        kinds = [e.kind for e in reconciler.ledger.events(spec=demo.SPEC_NAME)]
        assert kinds[-2:] == ["deploy.stopped", "spec.pruned"]
        again = reconciler.reconcile_once()  # the controller keeps running
        assert again.error is None and again.statuses == {}
    assert reconciler.ledger.verify().ok


def _write_run(store, run_uri: str, run_id: str) -> None:
    """What the trainer leaves in the store: files, then the manifest."""
    import hashlib
    import json

    files = {"model/adapter_model.safetensors": b"weights", "metrics.jsonl": b'{"step": 1, "loss": 1.0}\n'}
    for rel, data in files.items():
        store.put(store.join(run_uri, rel), data)
    manifest = {"runId": run_id, "files": {rel: {"sha256": hashlib.sha256(d).hexdigest()} for rel, d in files.items()},
                "provenance": {"runId": run_id}}
    store.put(store.join(run_uri, "manifest.json"), json.dumps(manifest).encode())
