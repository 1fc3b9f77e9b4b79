"""A fake Deployment controller + kubelet for the fake API server (tests/fakekube has a Job
kubelet only). It plays what kube-controller-manager and the kubelets' readiness probes do:

* a Deployment whose pod template names a run in `failing` never gets a ready new pod: the old
  pods keep serving, and the rollout ends with Progressing=False / ProgressDeadlineExceeded;
* any other change rolls out completely (all replicas updated, ready, available).

`served[(namespace, name)]` is the run id whose pods answer requests, and `timeline` records every
change of it, so a test can check that something always answered during a rollout.
Writes go through the fake's status subresource, so they bump resourceVersions like the real thing.
"""
from __future__ import annotations

import threading

from fakekube.server import FakeKube


class FakeDeployments:
    def __init__(self, fake: FakeKube, interval: float = 0.02) -> None:
        self.fake = fake
        self.interval = interval
        self.failing: set[str] = set()
        self.served: dict[tuple[str, str], tuple[str | None, int]] = {}
        self.timeline: list[tuple[str, str | None, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "FakeDeployments":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for dep in self.fake.list("apps/v1", "Deployment")["items"]:
                self.step(dep)

    def step(self, dep: dict) -> None:
        meta, spec, status = dep["metadata"], dep["spec"], dep.get("status") or {}
        if status.get("observedGeneration") == meta["generation"]:
            return
        key = (meta["namespace"], meta["name"])
        run_id = (spec["template"]["metadata"].get("annotations") or {}).get("ftops.dev/run-id")
        want = int(spec.get("replicas", 1))
        old_run, old_ready = self.served.get(key, (None, 0))
        if want == 0:
            new = {"observedGeneration": meta["generation"], "replicas": 0, "updatedReplicas": 0, "readyReplicas": 0,
                   "availableReplicas": 0, "unavailableReplicas": 0,
                   "conditions": [_cond("Progressing", "True", "NewReplicaSetAvailable")]}
            served = (None, 0)
        elif run_id in self.failing:
            new = {"observedGeneration": meta["generation"], "replicas": old_ready + 1, "updatedReplicas": 1,
                   "readyReplicas": old_ready, "availableReplicas": old_ready, "unavailableReplicas": 1,
                   "conditions": [_cond("Available", "True" if old_ready else "False", "MinimumReplicasAvailable"),
                                  _cond("Progressing", "False", "ProgressDeadlineExceeded",
                                        f"ReplicaSet of run {run_id} has timed out progressing.")]}
            served = (old_run, old_ready)
        else:
            new = {"observedGeneration": meta["generation"], "replicas": want, "updatedReplicas": want,
                   "readyReplicas": want, "availableReplicas": want, "unavailableReplicas": 0,
                   "conditions": [_cond("Available", "True", "MinimumReplicasAvailable"),
                                  _cond("Progressing", "True", "NewReplicaSetAvailable")]}
            served = (run_id, want)
        self.fake.patch_status("apps/v1", "Deployment", meta["namespace"], meta["name"], new)
        if served != (old_run, old_ready):
            self.served[key] = served
            self.timeline.append((meta["name"], *served))


def _cond(type_: str, status: str, reason: str, message: str = "") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message}
