"""The kubernetes backend against the fake API server over real HTTP: idempotent submit by
server-side apply, 409 -> re-read, watch with 410 relist, and Job conditions -> run states."""
from __future__ import annotations

import threading

import pytest

from controller.seams import Lineage, Phase, Run, RunNotFound, RunState
from controller.backends.kubernetes import FIELD_MANAGER, KubernetesBackend, load_api_client
from controller.errors import PermanentError
from controller.render import render
from render_sample import finetune, operator, render_input

NS = "ftops-team-a"


@pytest.fixture
def cluster(fake_kube, tmp_path):
    """The fake API server with the tenant namespace, and a kubeconfig file pointing at it."""
    fake_kube.ensure_namespace(NS)
    path = tmp_path / "kubeconfig"
    path.write_text(fake_kube.kubeconfig())
    return fake_kube, str(path)


def backend(kubeconfig: str, op=None) -> KubernetesBackend:
    return KubernetesBackend(kubeconfig=kubeconfig, namespaces=[NS], operator=op or operator())


def make_run(ft=None, op=None) -> tuple[Run, list[dict]]:
    """The run as the reconciler hands it over, and the manifests the backend renders from it."""
    inp = render_input(ft, op)
    manifests = render(inp)
    return Run(inp.run_config, inp.finetune, Lineage(inp.data_md5, inp.git_commit)), manifests


def job_name(manifests: list[dict]) -> str:
    return manifests[-1]["metadata"]["name"]


def test_submit_applies_every_manifest_server_side_and_is_idempotent(cluster):
    fake, kubeconfig = cluster
    run, manifests = make_run()
    b = backend(kubeconfig)
    state = b.submit(run)
    assert state.phase is Phase.PENDING and state.run_id == run.run_id
    applies = [r for r in fake.requests if r["method"] == "PATCH"]
    assert applies and all(r["contentType"].startswith("application/apply-patch+yaml") for r in applies)
    assert all(r["query"]["fieldManager"] == FIELD_MANAGER for r in applies)
    job = fake.get("batch/v1", "Job", NS, job_name(manifests))
    cm = fake.get("v1", "ConfigMap", NS, manifests[0]["metadata"]["name"])
    pvc = fake.get("v1", "PersistentVolumeClaim", NS, manifests[1]["metadata"]["name"])
    for owned in (cm, pvc):
        assert owned["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert job["spec"]["podFailurePolicy"] == manifests[-1]["spec"]["podFailurePolicy"]

    rv = fake.resource_version
    again = backend(kubeconfig).submit(run)  # e.g. a controller restarted mid-reconcile
    assert again.phase is Phase.PENDING
    assert fake.resource_version == rv  # nothing was written
    assert fake.get("batch/v1", "Job", NS, job_name(manifests))["metadata"]["uid"] == job["metadata"]["uid"]
    assert len(fake.list("batch/v1", "Job", NS)["items"]) == 1


def test_a_new_backend_instance_finds_the_run(cluster, kubelet):
    fake, kubeconfig = cluster
    run, manifests = make_run()
    backend(kubeconfig).submit(run)
    kubelet.start(NS, job_name(manifests))
    fresh = backend(kubeconfig)  # no memory of the submit
    assert fresh.status(run.run_id).phase is Phase.RUNNING
    with pytest.raises(RunNotFound):
        fresh.status("feedfacefeed")


def test_job_lifecycle_maps_to_run_states(cluster, kubelet):
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    name = job_name(manifests)
    assert b.submit(run).phase is Phase.PENDING
    pod = kubelet.start(NS, name)
    assert b.status(run.run_id).phase is Phase.RUNNING
    kubelet.preempt(NS, pod["metadata"]["name"], name)
    preempted = b.status(run.run_id)
    assert preempted.phase is Phase.PREEMPTED and preempted.reason == "PreemptionByScheduler"
    kubelet.start(NS, name)  # the replacement pod resumes from the checkpoint PVC
    assert b.status(run.run_id).phase is Phase.RUNNING
    kubelet.succeed(NS, name)
    done = b.status(run.run_id)
    assert done.phase is Phase.SUCCEEDED and done.finished and done.finished_at


@pytest.mark.parametrize(
    "reason,message,expected_reason,exit_code",
    [
        ("BackoffLimitExceeded", "Job has reached the specified backoff limit", "BackoffLimitExceeded", None),
        ("DeadlineExceeded", "Job was active longer than specified deadline", "DeadlineExceeded", None),
        ("PodFailurePolicy", "Container trainer for pod ftops-team-a/x-1 failed with exit code 78 matching FailJob rule at index 1",
         "ConfigError", 78),
    ],
)
def test_failed_jobs_carry_their_reason(cluster, kubelet, reason, message, expected_reason, exit_code):
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    b.submit(run)
    kubelet.fail(NS, job_name(manifests), reason, message)
    state = b.status(run.run_id)
    assert state.phase is Phase.FAILED and state.reason == expected_reason and state.exit_code == exit_code
    assert message in state.message


def test_kueue_suspension_is_pending_or_preempted(cluster):
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run(op=operator(kueueQueue="team-a"))
    b.submit(run)
    name = job_name(manifests)
    fake.patch_status("batch/v1", "Job", NS, name, {"conditions": [
        {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended"}]})
    assert b.status(run.run_id).phase is Phase.PENDING
    fake.patch_status("batch/v1", "Job", NS, name, {"conditions": [
        {"type": "Suspended", "status": "True", "reason": "JobSuspended",
         "message": "Preempted to accommodate a workload (UID: 1) due to prioritization in the ClusterQueue"}]})
    assert b.status(run.run_id).phase is Phase.PREEMPTED


def test_watch_follows_the_run_and_relists_after_410(cluster, kubelet):
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    name = job_name(manifests)
    b.submit(run)
    first = b.poll(timeout_seconds=1)  # initial list (already known from submit: no change)
    assert all(s.phase is Phase.PENDING for s in first)
    kubelet.start(NS, name)
    changes = b.poll(timeout_seconds=1)
    assert [s.phase for s in changes] == [Phase.RUNNING]
    assert b.relists == 0
    # History is compacted while the run finishes: the next watch gets 410, relists, and
    # still sees the final state.
    fake.compact()
    kubelet.succeed(NS, name)
    changes = b.poll(timeout_seconds=1)
    assert b.relists >= 1
    assert changes[-1].phase is Phase.SUCCEEDED
    watches = [r for r in fake.requests if r["query"].get("watch") == "1" and r["path"].endswith("/jobs")]
    assert all(r["query"].get("resourceVersion") for r in watches)  # always resumes from a version


def test_watch_in_a_thread_reports_changes(cluster, kubelet):
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    b.submit(run)
    seen: list[RunState] = []
    done = threading.Event()
    stop = threading.Event()

    def on_change(state: RunState) -> None:
        seen.append(state)
        if state.phase is Phase.SUCCEEDED:
            done.set()

    t = threading.Thread(target=b.watch, args=(on_change, stop), kwargs={"timeout_seconds": 1}, daemon=True)
    t.start()
    kubelet.start(NS, job_name(manifests))
    kubelet.succeed(NS, job_name(manifests))
    assert done.wait(30)
    stop.set()
    t.join(10)
    assert seen[-1].phase is Phase.SUCCEEDED


def test_apply_conflict_with_another_manager_rereads_and_accepts_our_run(cluster):
    fake, kubeconfig = cluster
    run, manifests = make_run()
    job = manifests[-1]
    # Another controller (say, a queue) already wrote this run's Job and owns backoffLimit.
    theirs = {**job, "spec": {**job["spec"], "backoffLimit": 9}}
    fake.create(theirs, manager="kueue")
    b = backend(kubeconfig)
    state = b.submit(run)
    assert state.phase is Phase.PENDING
    job_path = f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}"
    calls = [(r["method"], r["path"]) for r in fake.requests if r["path"] == job_path]
    assert calls[:2] == [("PATCH", job_path), ("GET", job_path)]  # 409 -> re-read
    assert fake.get("batch/v1", "Job", NS, job["metadata"]["name"])["spec"]["backoffLimit"] == 9  # not forced


def test_a_name_owned_by_another_run_is_refused(cluster):
    fake, kubeconfig = cluster
    run, manifests = make_run()
    job = manifests[-1]
    other = {**job, "metadata": {**job["metadata"], "labels": {**job["metadata"]["labels"], "ftops.dev/run-id": "aaaaaaaaaaaa"}},
             "spec": {**job["spec"], "backoffLimit": 9}}
    fake.create(other, manager="someone")
    with pytest.raises(PermanentError, match="belongs to run 'aaaaaaaaaaaa'"):
        backend(kubeconfig).submit(run)


def test_cancel_rereads_on_conflict_and_garbage_collects(cluster, kubelet):
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    name = job_name(manifests)
    b.submit(run)
    kubelet.start(NS, name)
    path = f"/apis/batch/v1/namespaces/{NS}/jobs/{name}"
    # The Job controller writes status between our read and our delete: the delete's
    # preconditions are stale (409), so the backend re-reads and deletes again.
    fake.before_next("DELETE", path + "$", lambda: fake.patch_status("batch/v1", "Job", NS, name, {"ready": 0}))
    state = b.cancel(run.run_id)
    assert state.phase is Phase.FAILED and state.reason == "Cancelled"
    deletes = [r for r in fake.requests if r["method"] == "DELETE" and r["path"] == path]
    assert len(deletes) == 2
    for kind, api in (("Job", "batch/v1"), ("ConfigMap", "v1"), ("PersistentVolumeClaim", "v1"), ("Pod", "v1")):
        assert fake.list(api, kind, NS)["items"] == [], kind
    with pytest.raises(RunNotFound):
        b.status(run.run_id)


def test_logs_come_from_the_trainer_pods(cluster, kubelet):
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    b.submit(run)
    kubelet.start(NS, job_name(manifests), log="step 1 loss 2.0\nstep 2 loss 1.5\n")
    assert b.logs(run.run_id) == "step 1 loss 2.0\nstep 2 loss 1.5\n"
    assert b.logs(run.run_id, tail=1) == "step 2 loss 1.5\n"
    log_calls = [r for r in fake.requests if r["path"].endswith("/log")]
    assert log_calls[-1]["query"]["container"] == "trainer"


def test_missing_tenant_namespace_is_a_clear_permanent_error(fake_kube, tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(fake_kube.kubeconfig())
    run, _ = make_run()
    with pytest.raises(PermanentError, match="namespace 'ftops-team-a' does not exist"):
        KubernetesBackend(kubeconfig=str(path)).submit(run)


@pytest.mark.parametrize("flavor,kind", [("pytorchjob", "PyTorchJob"), ("jobset", "JobSet")])
def test_crd_flavours_submit_and_map_states(cluster, flavor, kind):
    fake, kubeconfig = cluster
    op = operator(trainingFlavor=flavor)
    b = backend(kubeconfig, op)
    run, manifests = make_run(finetune(**{"spec.hardware.nodes": 2}), op)
    assert b.submit(run).phase is Phase.PENDING
    api = manifests[-1]["apiVersion"]
    name = job_name(manifests)
    done = {"PyTorchJob": "Succeeded", "JobSet": "Completed"}[kind]
    fake.patch_status(api, kind, NS, name, {"conditions": [{"type": done, "status": "True", "reason": "Done"}]})
    assert backend(kubeconfig).status(run.run_id).phase is Phase.SUCCEEDED


def test_in_cluster_config_is_used_inside_a_pod(monkeypatch):
    """With KUBERNETES_SERVICE_HOST set and no kubeconfig, the service account is used (here
    there is none, so the in-cluster loader itself complains)."""
    from kubernetes.config import ConfigException

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ConfigException, match="(?i)service|token"):
        load_api_client()
