"""A fake "kubelet + Job controller": the test calls its steps to move a Job along, the way
the real controllers would write pods and status. It writes through the server's store, so
every step produces real resourceVersions and watch events."""
from __future__ import annotations

import copy
from datetime import datetime, timezone

from fakekube.server import FakeKube


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(type_: str, reason: str = "", message: str = "") -> dict:
    return {"type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": _now(), "lastTransitionTime": _now()}


class FakeKubelet:
    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        self._pod_seq = 0

    def job(self, namespace: str, name: str) -> dict:
        return self.fake.get("batch/v1", "Job", namespace, name)

    def _status(self, namespace: str, name: str, status: dict) -> dict:
        return self.fake.patch_status("batch/v1", "Job", namespace, name, status)

    def create_pod(self, namespace: str, job_name: str, ready: bool = True, log: str = "") -> dict:
        """A pod of the Job, labelled from its template and owned by it."""
        job = self.job(namespace, job_name)
        self._pod_seq += 1
        labels = dict(((job["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {})
        labels["batch.kubernetes.io/job-name"] = job_name
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{job_name}-{self._pod_seq}", "namespace": namespace, "labels": labels,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                                 "uid": job["metadata"]["uid"], "controller": True}]},
               "spec": copy.deepcopy(job["spec"]["template"]["spec"])}
        created = self.fake.create(pod, manager="kube-controller-manager")
        conds = [{"type": "Ready", "status": "True" if ready else "False"}]
        self.fake.patch_status("v1", "Pod", namespace, created["metadata"]["name"],
                               {"phase": "Running" if ready else "Pending", "conditions": conds})
        if log:
            self.fake.logs[(namespace, created["metadata"]["name"])] = log
        return created

    def start(self, namespace: str, name: str, log: str = "step 1 loss 2.0\n") -> dict:
        pod = self.create_pod(namespace, name, log=log)
        self._status(namespace, name, {"active": 1, "ready": 1, "startTime": _now()})
        return pod

    def succeed(self, namespace: str, name: str) -> dict:
        return self._status(namespace, name, {
            "active": 0, "ready": 0, "succeeded": 1, "completionTime": _now(),
            "conditions": [_cond("SuccessCriteriaMet", "CompletionsReached"), _cond("Complete", "CompletionsReached")]})

    def fail(self, namespace: str, name: str, reason: str = "BackoffLimitExceeded",
             message: str = "Job has reached the specified backoff limit") -> dict:
        return self._status(namespace, name, {
            "active": 0, "ready": 0, "failed": 1,
            "conditions": [_cond("FailureTarget", reason, message), _cond("Failed", reason, message)]})

    def preempt(self, namespace: str, pod_name: str, job_name: str) -> dict:
        """The scheduler preempts the pod: DisruptionTarget, then the pod fails; the Job's pod
        failure policy ignores it (no failed count) while a replacement waits for capacity."""
        self.fake.patch_status("v1", "Pod", namespace, pod_name, {
            "phase": "Failed",
            "conditions": [{"type": "Ready", "status": "False"},
                           _cond("DisruptionTarget", "PreemptionByScheduler", "Preempted by a higher priority pod")]})
        return self._status(namespace, job_name, {"active": 0, "ready": 0})
