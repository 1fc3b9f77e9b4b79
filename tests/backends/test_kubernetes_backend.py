"""The kubernetes backend against the fake API server over real HTTP: idempotent submit by
server-side apply, 409 -> re-read, watch with 410 relist, and Job conditions -> run states."""
from __future__ import annotations

import threading

import pytest

from controller.seams import Lineage, Phase, Run, RunNotFound, RunState
from controller.backends.kubernetes import FIELD_MANAGER, ApiError, KubernetesBackend, load_api_client
from controller.errors import PermanentError
from controller.render import render
from fakekube.server import Resource
from render_sample import finetune, operator, render_input

NS = "ftops-team-a"


@pytest.fixture
def cluster(fake_kube, tmp_path):
    """The fake API server with the tenant namespace, and a kubeconfig file pointing at it."""
    fake_kube.ensure_namespace(NS)
    fake_kube.register(Resource("trainer.kubeflow.org", "v1alpha1", "TrainJob", "trainjobs"))
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
    assert cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    # The checkpoint claim outlives any attempt of the Job (a retry resumes from it).
    assert "ownerReferences" not in pvc["metadata"]
    # The namespace's model cache claim exists, owned by no run.
    cache = fake.get("v1", "PersistentVolumeClaim", NS, "ftops-model-cache")
    assert "ownerReferences" not in cache["metadata"] and "ftops.dev/run-id" not in cache["metadata"]["labels"]
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
    fake.ensure_namespace("elsewhere")  # other writes move the store past what the watch saw
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
    assert b.submit(run).phase is Phase.PENDING  # the run's Job lives: submit leaves it be
    assert not [r for r in fake.requests if r["method"] == "PATCH" and r["path"].endswith("/jobs/" + job["metadata"]["name"])]
    b.apply(job, run.run_id)  # an apply all the same (a controller that crashed before recording)
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
        left = [m["metadata"]["name"] for m in fake.list(api, kind, NS)["items"]]
        assert left == (["ftops-model-cache"] if kind == "PersistentVolumeClaim" else []), kind  # the namespace's
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


@pytest.mark.parametrize("flavor,kind", [("trainjob", "TrainJob"), ("jobset", "JobSet")])
def test_crd_flavours_submit_and_map_states(cluster, flavor, kind):
    fake, kubeconfig = cluster
    op = operator(trainingFlavor=flavor)
    b = backend(kubeconfig, op)
    run, manifests = make_run(finetune(**{"spec.hardware.nodes": 2}), op)
    assert b.submit(run).phase is Phase.PENDING
    api = manifests[-1]["apiVersion"]
    name = job_name(manifests)
    done = {"TrainJob": "Complete", "JobSet": "Completed"}[kind]
    fake.patch_status(api, kind, NS, name, {"conditions": [{"type": done, "status": "True", "reason": "Done"}]})
    assert backend(kubeconfig, op).status(run.run_id).phase is Phase.SUCCEEDED


def test_preempted_run_is_left_to_the_job_controller(cluster, kubelet):
    """The reconciler calls submit again on PREEMPTED: nothing new is created while the Job lives
    (its controller recreates the pod, which resumes from the checkpoint claim)."""
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    name = job_name(manifests)
    b.submit(run)
    pod = kubelet.start(NS, name)
    kubelet.preempt(NS, pod["metadata"]["name"], name)
    uid = fake.get("batch/v1", "Job", NS, name)["metadata"]["uid"]
    writes = len([r for r in fake.requests if r["method"] != "GET"])
    assert b.submit(run).phase is Phase.PREEMPTED
    assert len([r for r in fake.requests if r["method"] != "GET"]) == writes  # not one write
    assert fake.get("batch/v1", "Job", NS, name)["metadata"]["uid"] == uid


def test_a_retriable_failure_is_recreated_on_submit_and_keeps_its_checkpoints(cluster, kubelet):
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    name = job_name(manifests)
    b.submit(run)
    claim = fake.get("v1", "PersistentVolumeClaim", NS, manifests[1]["metadata"]["name"])
    old = fake.get("batch/v1", "Job", NS, name)["metadata"]["uid"]
    kubelet.fail(NS, name, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    assert b.status(run.run_id).phase is Phase.FAILED
    assert b.submit(run).phase is Phase.PENDING
    new = fake.get("batch/v1", "Job", NS, name)
    assert new["metadata"]["uid"] != old and not (new.get("status") or {}).get("conditions")
    assert len(fake.list("batch/v1", "Job", NS)["items"]) == 1
    again = fake.get("v1", "PersistentVolumeClaim", NS, manifests[1]["metadata"]["name"])
    assert again["metadata"]["uid"] == claim["metadata"]["uid"]  # the same checkpoints


def test_a_config_error_is_never_recreated(cluster, kubelet):
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    name = job_name(manifests)
    b.submit(run)
    uid = fake.get("batch/v1", "Job", NS, name)["metadata"]["uid"]
    kubelet.fail(NS, name, "PodFailurePolicy",
                 "Container trainer for pod x failed with exit code 78 matching FailJob rule at index 1")
    state = b.submit(run)
    assert state.phase is Phase.FAILED and state.reason == "ConfigError"
    assert fake.get("batch/v1", "Job", NS, name)["metadata"]["uid"] == uid


def test_only_the_selected_workload_kind_is_listed_and_watched(cluster, kubelet):
    """A cluster whose RBAC covers Jobs only (flavour job) is never asked about JobSets or
    TrainJobs; a 403 on the selected kind is a PermanentError that names what to grant."""
    fake, kubeconfig = cluster
    b = backend(kubeconfig)
    run, manifests = make_run()
    b.submit(run)
    b.status(run.run_id)
    b.poll(timeout_seconds=1)
    paths = {r["path"] for r in fake.requests if r["method"] == "GET"}
    assert any("/jobs" in p for p in paths)
    assert not any("jobsets" in p or "trainjobs" in p for p in paths)
    tj = backend(kubeconfig, operator(trainingFlavor="trainjob"))
    assert tj.workloads == (("trainer.kubeflow.org/v1alpha1", "TrainJob"),)

    def forbidden(*args, **kwargs):
        raise ApiError(403, "Forbidden", 'trainjobs.trainer.kubeflow.org is forbidden: User "ftops" cannot list')

    tj.list = forbidden  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match="trainingFlavor 'trainjob'.*access to TrainJobs"):
        tj.status(run.run_id)


def test_in_cluster_config_is_used_inside_a_pod(monkeypatch):
    """With KUBERNETES_SERVICE_HOST set and no kubeconfig, the service account is used (here
    there is none, so the in-cluster loader itself complains)."""
    from kubernetes.config import ConfigException

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ConfigException, match="(?i)service|token"):
        load_api_client()
