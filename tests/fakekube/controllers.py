"""The controllers a real cluster runs around the kubelet, over the fake API server: the Job
controller (batch/v1), the JobSet controller (jobset.x-k8s.io/v1alpha2), and the Deployment and
ReplicaSet controllers (apps/v1). Each runs in a thread, wakes on every write to the store
(FakeKube.wait_for_change, an in-process watch) and on a short resync tick (for deadlines), and
reconciles level-triggered: it reads what is there and writes what should be, through the same
store operations the HTTP API uses, so every write has a resourceVersion and a watch event.

What follows the real controllers and what is simplified is listed in README.md. Messages and
reasons are the real ones (kube-controller-manager 1.31, JobSet 0.8), because the product reads
them (controller.backends.kubernetes.job_state parses "exit code N" out of a PodFailurePolicy
message).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

from fakekube.server import ApiError, FakeKube

MANAGER = "kube-controller-manager"
TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
TERMINAL = ("Succeeded", "Failed")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def _suffix() -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    raw = uuid.uuid4().int
    return "".join(alphabet[(raw >> (5 * i)) % len(alphabet)] for i in range(5))


def _conds(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def _true(obj: dict, type_: str) -> bool:
    return (_conds(obj).get(type_) or {}).get("status") == "True"


def _owned_by(obj: dict, uid: str) -> bool:
    return any(r.get("uid") == uid and r.get("controller") for r in obj["metadata"].get("ownerReferences") or [])


def _owner_ref(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _pod_ready(pod: dict) -> bool:
    return _true(pod, "Ready")


def _active(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") not in TERMINAL and not pod["metadata"].get("deletionTimestamp")


class Controller:
    """A reconcile loop in a thread."""

    name = "controller"

    def __init__(self, fake: FakeKube, resync: float = 0.2) -> None:
        self.fake = fake
        self.resync = resync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Controller":
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.fake.notify()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        rv = 0
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # keep reconciling; the test sees the effect
                sys.stderr.write(f"fakekube {self.name}: sync failed: {type(exc).__name__}: {exc}\n")
                traceback.print_exc()
            rv = self.fake.wait_for_change(rv, self.resync)

    def sync(self) -> None:
        raise NotImplementedError

    # -- store helpers

    def _patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict, sub: str = "") -> dict | None:
        r = self.fake.resource_for(api_version, kind)
        try:
            return self.fake._patch(r, namespace, name, "application/merge-patch+json", patch, self.name, sub)
        except ApiError:
            return None

    def _status(self, obj: dict, status: dict) -> None:
        """Write a status if it differs from what is there."""
        if {k: v for k, v in (obj.get("status") or {}).items()} == status:
            return
        meta = obj["metadata"]
        r = self.fake.resource_for(obj["apiVersion"], obj["kind"])
        try:
            self.fake._update(r, meta["namespace"], meta["name"], {**obj, "status": status,
                                                                   "metadata": {**meta, "resourceVersion": None}},
                              self.name, "status")
        except ApiError:
            pass

    def _delete(self, obj: dict, propagation: str = "Background") -> None:
        try:
            self.fake.delete(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"], propagation)
        except ApiError:
            pass

    def _event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        t = now_iso()
        try:
            self.fake.create({"apiVersion": "v1", "kind": "Event",
                              "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
                              "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                                                 "namespace": meta["namespace"], "uid": meta["uid"]},
                              "reason": reason, "message": message, "type": type_, "count": 1,
                              "source": {"component": self.name}, "firstTimestamp": t, "lastTimestamp": t}, manager=self.name)
        except ApiError:
            pass


def _condition(type_: str, reason: str, message: str, status: str = "True", probe: bool = True) -> dict:
    c = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_iso()}
    if probe:
        c["lastProbeTime"] = now_iso()
    return c


def _set_condition(conditions: list[dict], new: dict) -> list[dict]:
    """Replace the condition of new's type; keep lastTransitionTime when its status is unchanged."""
    out = []
    placed = False
    for c in conditions:
        if c.get("type") == new["type"]:
            if c.get("status") == new["status"] and c.get("reason") == new.get("reason") and c.get("message") == new.get("message"):
                out.append(c)
            else:
                if c.get("status") == new["status"]:
                    new = {**new, "lastTransitionTime": c.get("lastTransitionTime", new["lastTransitionTime"])}
                out.append(new)
            placed = True
        else:
            out.append(c)
    if not placed:
        out.append(new)
    return out


def _ranges(indexes: Iterable[int]) -> str:
    """Sorted indexes as the Job API writes completedIndexes: '0-2,5'."""
    out: list[str] = []
    items = sorted(set(indexes))
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)


def _parse_ranges(text: str | None) -> set[int]:
    out: set[int] = set()
    for part in (text or "").split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


# ----------------------------------------------------------------------------- Job


class JobController(Controller):
    """batch/v1 Jobs: pods from the template (NonIndexed or Indexed), the tracking finalizer,
    backoffLimit with exponential pod-recreation backoff, podFailurePolicy (FailJob / Ignore /
    Count on exit codes and pod conditions), activeDeadlineSeconds, suspend,
    ttlSecondsAfterFinished, and the 1.31 terminal sequence: FailureTarget / SuccessCriteriaMet
    first, active pods deleted, then Failed / Complete once no pod is left running."""

    name = MANAGER

    def __init__(self, fake: FakeKube, resync: float = 0.2, backoff: float = 10.0, max_backoff: float = 360.0) -> None:
        super().__init__(fake, resync)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._not_before: dict[str, float] = {}

    def sync(self) -> None:
        jobs = self.fake.list("batch/v1", "Job")["items"]
        pods = self.fake.list("v1", "Pod")["items"]
        by_owner: dict[str, list[dict]] = {}
        for pod in pods:
            for ref in pod["metadata"].get("ownerReferences") or []:
                if ref.get("kind") == "Job" and ref.get("controller"):
                    by_owner.setdefault(ref["uid"], []).append(pod)
        uids = {j["metadata"]["uid"] for j in jobs}
        for job in jobs:
            self._sync_job(job, by_owner.get(job["metadata"]["uid"], []))
        for uid, owned in by_owner.items():  # the Job is gone: let its finished pods go too
            if uid not in uids:
                for pod in owned:
                    if not _active(pod) and (pod.get("status") or {}).get("phase") in TERMINAL or \
                            (pod["metadata"].get("deletionTimestamp") and not (pod.get("spec") or {}).get("nodeName")):
                        self._drop_finalizer(pod)

    # -- pods

    def _drop_finalizer(self, pod: dict) -> None:
        fins = pod["metadata"].get("finalizers") or []
        if TRACKING_FINALIZER in fins:
            self._patch("v1", "Pod", pod["metadata"]["namespace"], pod["metadata"]["name"],
                        {"metadata": {"finalizers": [f for f in fins if f != TRACKING_FINALIZER] or None}})

    def _new_pod(self, job: dict, index: int | None) -> None:
        meta, tmpl = job["metadata"], copy.deepcopy(job["spec"]["template"])
        tmeta = tmpl.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        labels.update({"batch.kubernetes.io/controller-uid": meta["uid"], "batch.kubernetes.io/job-name": meta["name"],
                       "controller-uid": meta["uid"], "job-name": meta["name"]})
        annotations = dict(tmeta.get("annotations") or {})
        spec = tmpl.get("spec") or {}
        name = f"{meta['name']}-{_suffix()}"
        if index is not None:
            labels[INDEX_KEY] = str(index)
            annotations[INDEX_KEY] = str(index)
            name = f"{meta['name']}-{index}-{_suffix()}"
            spec["hostname"] = f"{meta['name']}-{index}"
            for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                env = c.setdefault("env", [])
                if not any(e.get("name") == "JOB_COMPLETION_INDEX" for e in env):
                    env.append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {
                        "fieldRef": {"apiVersion": "v1", "fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name[:63].rstrip("-"), "namespace": meta["namespace"], "labels": labels,
                            "annotations": annotations, "finalizers": [TRACKING_FINALIZER], "ownerReferences": [_owner_ref(job)]},
               "spec": spec}
        try:
            self.fake.create(pod, manager=self.name)
            self._event(job, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}")
        except ApiError as exc:
            self._event(job, "Warning", "FailedCreate", f"Error creating: {exc.message}")

    # -- pod failure policy

    @staticmethod
    def _terminated(pod: dict) -> list[tuple[str, int]]:
        st = pod.get("status") or {}
        out = []
        for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
            term = (cs.get("state") or {}).get("terminated")
            if term is not None:
                out.append((cs["name"], int(term.get("exitCode", 0))))
        return out

    def _policy(self, job: dict, pod: dict) -> tuple[str, str]:
        """(action, message) of the first matching podFailurePolicy rule, or ("Count", "")."""
        rules = ((job["spec"].get("podFailurePolicy") or {}).get("rules")) or []
        pmeta = pod["metadata"]
        for i, rule in enumerate(rules):
            on_codes = rule.get("onExitCodes")
            if on_codes:
                values = set(on_codes.get("values") or [])
                for cname, code in self._terminated(pod):
                    if on_codes.get("containerName") and on_codes["containerName"] != cname:
                        continue
                    hit = code in values if on_codes.get("operator") == "In" else (code != 0 and code not in values)
                    if hit:
                        return rule["action"], (f"Container {cname} for pod {pmeta['namespace']}/{pmeta['name']} failed with "
                                                f"exit code {code} matching {rule['action']} rule at index {i}")
            for pc in rule.get("onPodConditions") or []:
                if (_conds(pod).get(pc["type"]) or {}).get("status") == pc.get("status", "True"):
                    return rule["action"], (f"Pod {pmeta['namespace']}/{pmeta['name']} has condition {pc['type']} "
                                            f"matching {rule['action']} rule at index {i}")
        return "Count", ""

    # -- one Job

    def _sync_job(self, job: dict, pods: list[dict]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        status = copy.deepcopy(job.get("status") or {})
        conditions: list[dict] = list(status.get("conditions") or [])
        finished = _true(job, "Complete") or _true(job, "Failed")
        if finished:
            for pod in pods:
                if not _active(pod):
                    self._drop_finalizer(pod)
            ttl = spec.get("ttlSecondsAfterFinished")
            done_at = parse_time(status.get("completionTime")) or parse_time(
                (_conds(job).get("Failed") or {}).get("lastTransitionTime"))
            if ttl is not None and done_at is not None and time.time() >= done_at + int(ttl):
                self._delete(job)
            return
        completions = spec.get("completions", 1 if spec.get("parallelism") is None else spec.get("parallelism"))
        parallelism = spec.get("parallelism", 1)
        backoff_limit = spec.get("backoffLimit", 6)
        indexed = spec.get("completionMode") == "Indexed"
        replace_when_failed = bool(spec.get("podFailurePolicy")) or spec.get("podReplacementPolicy") == "Failed"

        if spec.get("suspend"):
            for pod in pods:
                if _active(pod):
                    self._delete(pod)
            conditions = _set_condition(conditions, _condition("Suspended", "JobSuspended", "Job suspended"))
            status.update({"conditions": conditions, "active": 0, "ready": 0})
            status.pop("startTime", None)
            self._status(job, status)
            return
        if _true(job, "Suspended"):
            conditions = _set_condition(conditions, _condition("Suspended", "JobResumed", "Job resumed", status="False"))
        status.setdefault("startTime", now_iso())

        # Count what finished since the last pass (pods still carrying our finalizer).
        succeeded, failed = int(status.get("succeeded", 0)), int(status.get("failed", 0))
        done_indexes = _parse_ranges(status.get("completedIndexes"))
        fail_job: str | None = None
        counted_failure = False
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase")
            if phase not in TERMINAL or TRACKING_FINALIZER not in (pod["metadata"].get("finalizers") or []):
                continue
            if phase == "Succeeded":
                succeeded += 1
                if indexed:
                    done_indexes.add(int(pod["metadata"]["annotations"].get(INDEX_KEY, -1)))
            else:
                action, message = self._policy(job, pod)
                if action == "FailJob":
                    failed += 1
                    fail_job = fail_job or message
                elif action != "Ignore":
                    failed += 1
                    counted_failure = True
            self._drop_finalizer(pod)
        if counted_failure:
            delay = min(self.backoff * 2 ** max(0, failed - 1), self.max_backoff)
            self._not_before[meta["uid"]] = time.monotonic() + delay
        if job["spec"].get("template", {}).get("spec", {}).get("restartPolicy") == "OnFailure":
            restarts = sum(int(cs.get("restartCount", 0)) for pod in pods if _active(pod)
                           for cs in (pod.get("status") or {}).get("containerStatuses") or [])
        else:
            restarts = 0

        active = [p for p in pods if _active(p)]
        terminating = [p for p in pods if p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") not in TERMINAL]
        status.update({"succeeded": succeeded, "failed": failed})
        if indexed:
            status["completedIndexes"] = _ranges(i for i in done_indexes if i >= 0)

        target = _conds(job).get("FailureTarget") if _true(job, "FailureTarget") else None
        success_met = _true(job, "SuccessCriteriaMet")
        if target is None and not success_met:
            reason = message = None
            if fail_job:
                reason, message = "PodFailurePolicy", fail_job
            elif failed + restarts > backoff_limit:
                reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            elif spec.get("activeDeadlineSeconds") is not None and \
                    time.time() >= (parse_time(status["startTime"]) or time.time()) + int(spec["activeDeadlineSeconds"]):
                reason, message = "DeadlineExceeded", "Job was active longer than specified deadline"
            if reason:
                target = _condition("FailureTarget", reason, message or "")
                conditions = _set_condition(conditions, target)
                self._event(job, "Warning", reason, message or "")
            elif (indexed and all(i in done_indexes for i in range(completions))) or (not indexed and succeeded >= completions):
                success_met = True
                conditions = _set_condition(conditions, _condition("SuccessCriteriaMet", "CompletionsReached",
                                                                   "Reached expected number of succeeded pods"))
        if target is not None or success_met:
            for pod in active:
                self._delete(pod)
            if not active and not terminating:
                if target is not None:
                    conditions = _set_condition(conditions, {**target, "type": "Failed", "lastTransitionTime": now_iso()})
                else:
                    conditions = _set_condition(conditions, _condition("Complete", "CompletionsReached",
                                                                       "Reached expected number of succeeded pods"))
                    status["completionTime"] = now_iso()
                    self._event(job, "Normal", "Completed", "Job completed")
            status.update({"conditions": conditions, "active": 0 if not active else len(active),
                           "ready": sum(1 for p in active if _pod_ready(p)), "terminating": len(terminating)})
            self._status(job, status)
            return

        # Create what is missing.
        busy = active + ([p for p in terminating] if replace_when_failed else [])
        if time.monotonic() >= self._not_before.get(meta["uid"], 0):
            if indexed:
                running = {int(p["metadata"]["annotations"].get(INDEX_KEY, -1)) for p in busy}
                for i in range(completions):
                    if len(running) >= parallelism:
                        break
                    if i not in done_indexes and i not in running:
                        self._new_pod(job, i)
                        running.add(i)
            else:
                want = min(parallelism, completions - succeeded)
                for _ in range(max(0, want - len(busy))):
                    self._new_pod(job, None)
        status.update({"conditions": conditions, "active": len(active), "ready": sum(1 for p in active if _pod_ready(p)),
                       "terminating": len(terminating)})
        self._status(job, status)


# ----------------------------------------------------------------------------- JobSet

JS = "jobset.sigs.k8s.io"


class JobSetController(Controller):
    """jobset.x-k8s.io/v1alpha2: replicatedJobs become child Jobs
    (<jobset>-<replicatedJob>-<index>), a headless Service for pod DNS, failurePolicy
    (maxRestarts; rules FailJobSet / RestartJobSet / RestartJobSetAndIgnoreMaxRestarts on
    onJobFailureReasons and targetReplicatedJobs) restarting the whole group by deleting and
    recreating every child Job, successPolicy (All / Any over targetReplicatedJobs), suspend, and
    the Completed / Failed conditions and status the real controller writes."""

    name = "jobset-controller"

    def sync(self) -> None:
        try:
            jobsets = self.fake.list("jobset.x-k8s.io/v1alpha2", "JobSet")["items"]
        except ApiError:
            return
        jobs = self.fake.list("batch/v1", "Job")["items"]
        services = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in self.fake.list("v1", "Service")["items"]}
        for js in jobsets:
            self._sync(js, [j for j in jobs if _owned_by(j, js["metadata"]["uid"])], services)

    def _child(self, js: dict, rj: dict, index: int, attempt: int, subdomain: str | None) -> dict:
        meta = js["metadata"]
        tmpl = copy.deepcopy(rj["template"])
        name = f"{meta['name']}-{rj['name']}-{index}"
        key = hashlib.sha1(f"{meta['namespace']}/{name}".encode()).hexdigest()
        ours = {f"{JS}/jobset-name": meta["name"], f"{JS}/replicatedjob-name": rj["name"],
                f"{JS}/replicatedjob-replicas": str(rj.get("replicas", 1)), f"{JS}/job-index": str(index),
                f"{JS}/restart-attempt": str(attempt), f"{JS}/job-key": key}
        jmeta = tmpl.setdefault("metadata", {})
        jmeta["labels"] = {**(jmeta.get("labels") or {}), **ours}
        jmeta["annotations"] = {**(jmeta.get("annotations") or {}), **ours}
        pod_tmpl = tmpl["spec"]["template"]
        pmeta = pod_tmpl.setdefault("metadata", {})
        pmeta["labels"] = {**(pmeta.get("labels") or {}), **ours}
        pmeta["annotations"] = {**(pmeta.get("annotations") or {}), **ours}
        if subdomain:
            pod_tmpl.setdefault("spec", {})["subdomain"] = subdomain
        if js["spec"].get("suspend"):
            tmpl["spec"]["suspend"] = True
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": meta["namespace"], "labels": jmeta["labels"],
                             "annotations": jmeta["annotations"], "ownerReferences": [_owner_ref(js)]},
                "spec": tmpl["spec"]}

    def _sync(self, js: dict, jobs: list[dict], services: set[tuple[str, str]]) -> None:
        meta, spec = js["metadata"], js.get("spec") or {}
        status = copy.deepcopy(js.get("status") or {})
        conditions = list(status.get("conditions") or [])
        restarts = int(status.get("restarts", 0))
        if _true(js, "Completed") or _true(js, "Failed"):
            ttl = spec.get("ttlSecondsAfterFinished")
            done = _conds(js).get("Completed") if _true(js, "Completed") else _conds(js).get("Failed")
            at = parse_time((done or {}).get("lastTransitionTime"))
            if ttl is not None and at is not None and time.time() >= at + int(ttl):
                self._delete(js)
            return
        network = spec.get("network") or {}
        subdomain = None
        if network.get("enableDNSHostnames", True):
            subdomain = network.get("subdomain") or meta["name"]
            if (meta["namespace"], subdomain) not in services:
                try:
                    self.fake.create({"apiVersion": "v1", "kind": "Service",
                                      "metadata": {"name": subdomain, "namespace": meta["namespace"],
                                                   "ownerReferences": [_owner_ref(js)]},
                                      "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                                               "selector": {f"{JS}/jobset-name": meta["name"]}}}, manager=self.name)
                except ApiError as exc:
                    self._event(js, "Warning", "HeadlessServiceCreationFailed", exc.message)
        current, stale = [], []
        for j in jobs:
            attempt = int((j["metadata"].get("labels") or {}).get(f"{JS}/restart-attempt", 0))
            (current if attempt == restarts else stale).append(j)
        for j in stale:
            if not j["metadata"].get("deletionTimestamp"):
                self._delete(j)
        names = {j["metadata"]["name"] for j in jobs}

        replicated = spec.get("replicatedJobs") or []
        failed = [j for j in current if _true(j, "Failed")]
        if failed:
            first = failed[0]
            reason = (_conds(first).get("Failed") or {}).get("reason", "")
            rj_name = (first["metadata"].get("labels") or {}).get(f"{JS}/replicatedjob-name", "")
            policy = spec.get("failurePolicy")
            action = "RestartJobSet"
            for rule in (policy or {}).get("rules") or []:
                if rule.get("onJobFailureReasons") and reason not in rule["onJobFailureReasons"]:
                    continue
                if rule.get("targetReplicatedJobs") and rj_name not in rule["targetReplicatedJobs"]:
                    continue
                action = rule["action"]
                break
            towards = int(status.get("restartsCountTowardsMax", 0))
            failure: tuple[str, str] | None = None
            if policy is None:
                failure = ("FailedJobs", "jobset failed due to one or more job failures")
            elif action == "FailJobSet":
                failure = ("FailJobSetFailurePolicyAction",
                           f"applying FailJobSet failure policy action (first failed job: {first['metadata']['name']})")
            elif action == "RestartJobSet" and towards >= int(policy.get("maxRestarts", 0)):
                failure = ("ReachedMaxRestarts", "jobset failed due to reaching max number of restarts")
            if failure:
                for j in current:
                    if not _true(j, "Complete") and not _true(j, "Failed"):
                        self._delete(j)
                conditions = _set_condition(conditions, _condition("Failed", failure[0], failure[1], probe=False))
                status.update({"conditions": conditions, "terminalState": "Failed"})
                self._event(js, "Warning", failure[0], failure[1])
            else:
                status["restarts"] = restarts + 1
                if action == "RestartJobSet":
                    status["restartsCountTowardsMax"] = towards + 1
                for j in current:
                    self._delete(j)
                self._event(js, "Warning", "Restarting", f"restarting jobset, attempt {restarts + 1}")
            status["replicatedJobsStatus"] = self._rj_status(replicated, current)
            self._status(js, status)
            return

        for rj in replicated:
            for i in range(int(rj.get("replicas", 1))):
                name = f"{meta['name']}-{rj['name']}-{i}"
                if name not in names:  # a stale Job of that name must be gone first
                    try:
                        self.fake.create(self._child(js, rj, i, restarts, subdomain), manager=self.name)
                    except ApiError as exc:
                        self._event(js, "Warning", "JobCreationFailed", exc.message)
        if spec.get("suspend"):
            for j in current:
                if not (j.get("spec") or {}).get("suspend"):
                    self._patch("batch/v1", "Job", meta["namespace"], j["metadata"]["name"], {"spec": {"suspend": True}})
            conditions = _set_condition(conditions, _condition("Suspended", "SuspendedJobs", "jobset is suspended", probe=False))
        elif _true(js, "Suspended"):
            for j in current:
                if (j.get("spec") or {}).get("suspend"):
                    self._patch("batch/v1", "Job", meta["namespace"], j["metadata"]["name"], {"spec": {"suspend": False}})
            conditions = _set_condition(conditions, _condition("Suspended", "ResumeJobs", "jobset is resumed", "False", probe=False))

        sp = spec.get("successPolicy") or {}
        targets = sp.get("targetReplicatedJobs") or [rj["name"] for rj in replicated]
        expected = [f"{meta['name']}-{rj['name']}-{i}" for rj in replicated if rj["name"] in targets
                    for i in range(int(rj.get("replicas", 1)))]
        complete = {j["metadata"]["name"] for j in current if _true(j, "Complete")}
        done = (any(n in complete for n in expected) if sp.get("operator") == "Any"
                else bool(expected) and all(n in complete for n in expected))
        if done:
            for j in current:
                if j["metadata"]["name"] not in complete and not _true(j, "Failed"):
                    self._delete(j)
            conditions = _set_condition(conditions, _condition("Completed", "AllJobsCompleted", "jobset completed successfully",
                                                               probe=False))
            status["terminalState"] = "Completed"
        status.update({"conditions": conditions, "restarts": restarts,
                       "replicatedJobsStatus": self._rj_status(replicated, current)})
        status.setdefault("restartsCountTowardsMax", 0)
        self._status(js, status)

    @staticmethod
    def _rj_status(replicated: list[dict], jobs: list[dict]) -> list[dict]:
        out = []
        for rj in replicated:
            mine = [j for j in jobs if (j["metadata"].get("labels") or {}).get(f"{JS}/replicatedjob-name") == rj["name"]]
            counts = {"name": rj["name"], "ready": 0, "succeeded": 0, "failed": 0, "active": 0, "suspended": 0}
            for j in mine:
                st = j.get("status") or {}
                if _true(j, "Complete"):
                    counts["succeeded"] += 1
                elif _true(j, "Failed"):
                    counts["failed"] += 1
                elif (j.get("spec") or {}).get("suspend"):
                    counts["suspended"] += 1
                else:
                    counts["active"] += 1
                    want = int((j.get("spec") or {}).get("parallelism", 1))
                    if int(st.get("ready", 0)) + int(st.get("succeeded", 0)) >= want:
                        counts["ready"] += 1
            out.append(counts)
        return out


# ----------------------------------------------------------------------------- ReplicaSet, Deployment


def pod_template_hash(template: dict) -> str:
    """A stable name-safe hash of a pod template (the real one is FNV-32a of the template,
    encoded with the same alphabet)."""
    data = json.dumps(template, sort_keys=True).encode()
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    out = ""
    while h:
        h, r = divmod(h, len(alphabet))
        out += alphabet[r]
    return out or "b"


class ReplicaSetController(Controller):
    """apps/v1 ReplicaSets: keep spec.replicas active pods (not terminal, not being deleted);
    scale down not-ready pods first, then the newest; status replicas / ready / available."""

    name = "replicaset-controller"

    def sync(self) -> None:
        rss = self.fake.list("apps/v1", "ReplicaSet")["items"]
        pods = self.fake.list("v1", "Pod")["items"]
        for rs in rss:
            mine = [p for p in pods if _owned_by(p, rs["metadata"]["uid"])]
            self._sync(rs, mine)

    def _sync(self, rs: dict, pods: list[dict]) -> None:
        meta, spec = rs["metadata"], rs.get("spec") or {}
        want = int(spec.get("replicas", 1))
        active = [p for p in pods if _active(p)]
        if len(active) < want:
            for _ in range(want - len(active)):
                tmpl = copy.deepcopy(spec["template"])
                tmeta = tmpl.get("metadata") or {}
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": f"{meta['name']}-{_suffix()}", "namespace": meta["namespace"],
                                    "labels": dict(tmeta.get("labels") or {}), "annotations": dict(tmeta.get("annotations") or {}),
                                    "ownerReferences": [_owner_ref(rs)]},
                       "spec": tmpl.get("spec") or {}}
                try:
                    self.fake.create(pod, manager=MANAGER)
                except ApiError as exc:
                    self._event(rs, "Warning", "FailedCreate", exc.message)
        elif len(active) > want:
            # not ready first; among equals the newest first
            ranked = sorted(active, key=lambda p: (_pod_ready(p), -(parse_time(p["metadata"].get("creationTimestamp")) or 0)))
            for pod in ranked[: len(active) - want]:
                self._delete(pod)
        ready = sum(1 for p in active if _pod_ready(p))
        status = {"replicas": len(active), "fullyLabeledReplicas": len(active), "readyReplicas": ready,
                  "availableReplicas": ready, "observedGeneration": meta.get("generation", 1)}
        self._status(rs, status)


def _resolve(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        x = total * int(value[:-1]) / 100
        return int(math.ceil(x) if round_up else math.floor(x))
    return int(value)


class DeploymentController(Controller):
    """apps/v1 Deployments: one ReplicaSet per pod template (pod-template-hash), RollingUpdate
    honouring maxSurge / maxUnavailable and readiness, Recreate, rollback by template (an old
    ReplicaSet with the same hash is scaled back up), revisionHistoryLimit, and the status and
    conditions of the real controller: Available, Progressing (NewReplicaSetCreated,
    ReplicaSetUpdated, NewReplicaSetAvailable; False/ProgressDeadlineExceeded after
    progressDeadlineSeconds without progress)."""

    name = "deployment-controller"

    def __init__(self, fake: FakeKube, resync: float = 0.2) -> None:
        super().__init__(fake, resync)
        self._progress: dict[str, tuple[tuple, float]] = {}  # uid -> (progress marker, when it last moved)

    def sync(self) -> None:
        deps = self.fake.list("apps/v1", "Deployment")["items"]
        rss = self.fake.list("apps/v1", "ReplicaSet")["items"]
        for d in deps:
            self._sync(d, [rs for rs in rss if _owned_by(rs, d["metadata"]["uid"])])

    def _scale(self, rs: dict, replicas: int) -> None:
        if int((rs.get("spec") or {}).get("replicas", 1)) != replicas:
            self._patch("apps/v1", "ReplicaSet", rs["metadata"]["namespace"], rs["metadata"]["name"],
                        {"spec": {"replicas": replicas}})
            rs.setdefault("spec", {})["replicas"] = replicas

    def _sync(self, d: dict, rss: list[dict]) -> None:
        meta, spec = d["metadata"], d.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        tmpl = spec.get("template") or {}
        h = pod_template_hash(tmpl)
        new_rs = next((rs for rs in rss if (rs["metadata"].get("labels") or {}).get("pod-template-hash") == h), None)
        old = [rs for rs in rss if rs is not new_rs]
        revisions = [int((rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0)) for rs in rss]
        created = False
        if new_rs is None:
            revision = max(revisions, default=0) + 1
            labels = {**((tmpl.get("metadata") or {}).get("labels") or {}), "pod-template-hash": h}
            rs_tmpl = copy.deepcopy(tmpl)
            rs_tmpl.setdefault("metadata", {})["labels"] = labels
            selector = copy.deepcopy(spec.get("selector") or {})
            selector.setdefault("matchLabels", {})["pod-template-hash"] = h
            body = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": f"{meta['name']}-{h}", "namespace": meta["namespace"], "labels": labels,
                                 "annotations": {"deployment.kubernetes.io/revision": str(revision),
                                                 "deployment.kubernetes.io/desired-replicas": str(replicas)},
                                 "ownerReferences": [_owner_ref(d)]},
                    "spec": {"replicas": 0, "selector": selector, "template": rs_tmpl,
                             "minReadySeconds": spec.get("minReadySeconds", 0)}}
            try:
                new_rs = self.fake.create(body, manager=MANAGER)
                created = True
                self._event(d, "Normal", "ScalingReplicaSet", f"Scaled up replica set {body['metadata']['name']} to 0")
            except ApiError:
                return
        else:
            cur = int((new_rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0))
            if old and cur < max(revisions):  # a rollback to this template: it becomes the newest revision
                self._patch("apps/v1", "ReplicaSet", meta["namespace"], new_rs["metadata"]["name"],
                            {"metadata": {"annotations": {"deployment.kubernetes.io/revision": str(max(revisions) + 1)}}})
        revision = (new_rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", "1")
        if (meta.get("annotations") or {}).get("deployment.kubernetes.io/revision") != revision:
            self._patch("apps/v1", "Deployment", meta["namespace"], meta["name"],
                        {"metadata": {"annotations": {"deployment.kubernetes.io/revision": revision}}})

        def available(rs: dict) -> int:
            return int((rs.get("status") or {}).get("availableReplicas", 0))

        def spec_replicas(rs: dict) -> int:
            return int((rs.get("spec") or {}).get("replicas", 0))

        strategy = spec.get("strategy") or {}
        if spec.get("paused"):
            pass
        elif strategy.get("type") == "Recreate":
            for rs in old:
                self._scale(rs, 0)
            if all(int((rs.get("status") or {}).get("replicas", 0)) == 0 for rs in old):
                self._scale(new_rs, replicas)
        else:
            ru = strategy.get("rollingUpdate") or {}
            surge = _resolve(ru.get("maxSurge", "25%"), replicas, True)
            unavailable = _resolve(ru.get("maxUnavailable", "25%"), replicas, False)
            if surge == 0 and unavailable == 0:
                unavailable = 1
            total = sum(spec_replicas(rs) for rs in rss if rs is not new_rs) + spec_replicas(new_rs)
            if spec_replicas(new_rs) > replicas:
                self._scale(new_rs, replicas)
            elif spec_replicas(new_rs) < replicas and total < replicas + surge:
                self._scale(new_rs, min(replicas, spec_replicas(new_rs) + replicas + surge - total))
            min_available = replicas - unavailable
            new_unavailable = max(0, spec_replicas(new_rs) - available(new_rs))
            all_pods = sum(spec_replicas(rs) for rs in old) + spec_replicas(new_rs)
            budget = all_pods - min_available - new_unavailable
            for rs in sorted(old, key=lambda r: r["metadata"].get("creationTimestamp", "")):
                if budget <= 0:
                    break
                # unhealthy old replicas go first, then healthy ones within the budget
                unhealthy = spec_replicas(rs) - available(rs)
                cut = min(budget, spec_replicas(rs), max(unhealthy, 0)) or min(budget, spec_replicas(rs))
                if cut > 0:
                    self._scale(rs, spec_replicas(rs) - cut)
                    budget -= cut
        limit = int(spec.get("revisionHistoryLimit", 10))
        idle = sorted((rs for rs in old if spec_replicas(rs) == 0 and int((rs.get("status") or {}).get("replicas", 0)) == 0),
                      key=lambda r: int((r["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0)))
        for rs in idle[: max(0, len(idle) - limit)]:
            self._delete(rs)

        # status
        all_rs = old + [new_rs]
        st_replicas = sum(int((rs.get("status") or {}).get("replicas", 0)) for rs in all_rs)
        updated = int((new_rs.get("status") or {}).get("replicas", 0))
        ready = sum(int((rs.get("status") or {}).get("readyReplicas", 0)) for rs in all_rs)
        avail = sum(available(rs) for rs in all_rs)
        ru = strategy.get("rollingUpdate") or {}
        max_unavailable = 0 if strategy.get("type") == "Recreate" else _resolve(ru.get("maxUnavailable", "25%"), replicas, False)
        conditions = list((d.get("status") or {}).get("conditions") or [])
        if avail >= replicas - max_unavailable:
            conditions = _set_condition(conditions, {**_condition("Available", "MinimumReplicasAvailable",
                                                                  "Deployment has minimum availability."),
                                                     "lastUpdateTime": now_iso()})
        else:
            conditions = _set_condition(conditions, {**_condition("Available", "MinimumReplicasUnavailable",
                                                                  "Deployment does not have minimum availability.", "False"),
                                                     "lastUpdateTime": now_iso()})
        rs_name = new_rs["metadata"]["name"]
        complete = (updated == replicas and st_replicas == replicas and avail == replicas
                    and available(new_rs) == replicas)
        marker = (rs_name, updated, available(new_rs), st_replicas, spec_replicas(new_rs))
        last = self._progress.get(meta["uid"])
        nowm = time.monotonic()
        if last is None or last[0] != marker:
            self._progress[meta["uid"]] = (marker, nowm)
            moved = True
        else:
            moved = False
        progressing = _conds(d).get("Progressing")
        deadline = spec.get("progressDeadlineSeconds", 600)
        if complete:
            new_cond = _condition("Progressing", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.')
        elif created:
            new_cond = _condition("Progressing", "NewReplicaSetCreated", f'Created new replica set "{rs_name}"')
        elif moved or progressing is None:
            new_cond = _condition("Progressing", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
        elif (progressing or {}).get("reason") == "ProgressDeadlineExceeded" or (
                deadline is not None and nowm - self._progress[meta["uid"]][1] > int(deadline)):
            new_cond = _condition("Progressing", "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.',
                                  "False")
        else:
            new_cond = dict(progressing)
        if progressing is None or (progressing.get("reason"), progressing.get("status"), progressing.get("message")) != (
                new_cond.get("reason"), new_cond.get("status"), new_cond.get("message")) or moved:
            new_cond = {**new_cond, "lastUpdateTime": now_iso()}
            new_cond.pop("lastProbeTime", None)
            conditions = _set_condition(conditions, new_cond)
            if new_cond["reason"] == "ProgressDeadlineExceeded":
                self._event(d, "Warning", "ProgressDeadlineExceeded", new_cond["message"])
        for c in conditions:
            c.pop("lastProbeTime", None)
        status = {"observedGeneration": meta.get("generation", 1), "replicas": st_replicas, "updatedReplicas": updated,
                  "readyReplicas": ready, "availableReplicas": avail,
                  "unavailableReplicas": max(0, sum(spec_replicas(rs) for rs in all_rs) - avail),
                  "conditions": conditions}
        status = {k: v for k, v in status.items() if v != 0 or k in ("observedGeneration",)}
        self._status(d, status)
