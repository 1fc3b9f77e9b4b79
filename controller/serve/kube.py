"""The deploy step, kubernetes backend: the serving Deployment + Service rendered by
controller.render.render_serving (the run directory on the artifacts PVC mounted read-only at
/workspace/adapter, serve.json in an immutable per-run ConfigMap), applied and watched through
controller.backends.kubernetes (server-side apply, our field manager; this module never imports
the kubernetes client).

Rolling (default): one Deployment per spec; a new run changes its pod template, and Kubernetes'
RollingUpdate with maxUnavailable 0 keeps the old pods serving until new ones pass /readyz.
The rollout is complete when observedGeneration caught up and every replica is updated, ready
and available. If the Deployment reports ProgressDeadlineExceeded, or the rollout does not
complete in time, the previous run's manifests are applied again (automatic rollback); with no
previous run the failed version is scaled to 0 so it does not hold GPUs while crash-looping.

Canary: a second Deployment (`<spec>-canary`, track=canary) with canaryPercent of the replicas on
the new run, behind the same Service as the stable one. Once it is ready, the stable Deployment
(still the previous run) is scaled down by the canary's replicas, so the canary holds its share of
the replicas; once it stays ready for stableSeconds, the stable Deployment is rolled to the new run
at full size and the canary scaled to 0. A canary that never gets ready is scaled to 0 and the
stable one was never touched; one that stops being ready while observed is scaled to 0 and the
stable one scaled back to full size.

Asynchronous: `promote` never waits. Each call applies what the rollout's current phase needs,
reads the Deployments once and returns `rolling_out` (with when to look again) until the rollout
is done; the phase and its start time (from the injected clock) are kept in
`<state>/<spec>/serving/rollout.json`, so the reconcile loop is never blocked and a restarted
controller resumes the rollout. `rollout` (the CLI's rollback) repeats the steps until it settles.
Readiness is observed by re-reading the Deployment (a level-triggered read through the backend's
`get`), which sees the same final state a watch would and survives API-server restarts and
compaction without relist logic. Events and history are those of controller.serve.deploy.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller import labels as L
from controller.artifacts import open_store
from controller.clock import SYSTEM_CLOCK, Clock
from controller.errors import PermanentError, TemporaryError
from controller.seams import ArtifactStore, DeployEvent, DeployRequest, DeployResult, Serving
from controller.serve import history
from controller.serve.deploy import event, rollback_target
from controller.serve.gatecheck import GateNotPassed, gate_decision, requested_config
from controller.spec.finetune import FineTune
from controller.status import Reason

if TYPE_CHECKING:
    from controller.backends.kubernetes import KubernetesBackend
    from controller.catalog import OperatorConfig

SERVING_KINDS = (("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"))
"""What a spec's serving renders to, and what `stop` removes (found by the spec's labels)."""


@dataclass(frozen=True)
class RolloutState:
    ready: bool
    failed: bool
    message: str
    ready_replicas: int = 0


def deployment_state(dep: dict | None, replicas: int, run_id: str | None = None) -> RolloutState:
    """Is this Deployment's rollout complete (pure)? Failed on ProgressDeadlineExceeded."""
    if dep is None:
        return RolloutState(False, False, "the Deployment does not exist yet")
    meta, status = dep.get("metadata") or {}, dep.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False":
            return RolloutState(False, True, f"{cond.get('reason')}: {cond.get('message', '')}".strip(), ready)
    template = ((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}
    if run_id and (template.get("annotations") or {}).get(L.RUN_ID) != run_id:
        return RolloutState(False, False, "the Deployment does not hold this run's pod template", ready)
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return RolloutState(False, False, "the Deployment controller has not observed the change yet", ready)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    if replicas == 0:
        return RolloutState(total == 0, False, f"{total} replicas left", ready)
    done = updated >= replicas and ready >= replicas and available >= replicas and total == replicas
    return RolloutState(done, False, f"{updated}/{replicas} updated, {ready} ready, {available} available, {total} total", ready)


class KubernetesServing:
    """The Deployer on a cluster: rollouts of a spec's server through a
    controller.backends.kubernetes.KubernetesBackend. Its deployment history lives in `state`
    (the controller's home); gate decisions are read from the artifact store."""

    name = "kubernetes"

    def __init__(self, kube: "KubernetesBackend", operator: "OperatorConfig", state: str | Path, ready_timeout: float = 900,
                 poll_interval: float = 1.0, namespace: str | None = None, artifacts: ArtifactStore | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.kube = kube
        self.operator = operator
        self.store = Path(state)
        self.artifacts = artifacts or open_store(str(self.store))
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.namespace = namespace
        self.clock = clock
        self.inputs: dict[tuple[str, str], tuple[str | None, Any]] = {}
        """(spec, run id) -> (corpus bundle URI, base model source) published for its pods."""

    # ---------------------------------------------------------------- rendering
    def manifests(self, finetune: FineTune, run_id: str, data_md5: str, git_commit: str, track: str = "stable",
                  replicas: int | None = None) -> list[dict]:
        from controller.render import ServingInput, render_serving

        if self.operator.cluster.serving_flavor != "deployment":
            raise PermanentError(f"cluster.servingFlavor {self.operator.cluster.serving_flavor}: this deployer rolls out "
                                 "Deployments; apply the InferenceService `ftops render` prints with your GitOps tool")
        corpus_uri, model = self.inputs.get((finetune.name, run_id), (None, None))
        return render_serving(ServingInput(
            finetune=finetune, run_id=run_id, data_md5=data_md5, git_commit=git_commit, operator=self.operator,
            replicas=replicas, track=track, namespace=self.namespace,
            run_uri=self.artifacts.run_uri(finetune.name, run_id), corpus_uri=corpus_uri, model=model))

    def _previous_manifests(self, finetune: FineTune, prev: dict[str, Any], replicas: int | None = None) -> list[dict]:
        """The run that served before (`prev`: the event that made it serve), rendered again from
        the lineage recorded with it."""
        return self.manifests(finetune, str(prev["servingRunId"]), prev.get("dataMd5", ""), prev.get("gitCommit", ""),
                              "stable", replicas=replicas)

    @staticmethod
    def _deployment(manifests: list[dict]) -> dict:
        return next(m for m in manifests if m["kind"] == "Deployment")

    def _apply(self, manifests: list[dict]) -> None:
        # ConfigMap first (the pods mount it), then the Deployment, then the Service.
        order = {"ConfigMap": 0, "Deployment": 1, "Service": 2}
        for m in sorted(manifests, key=lambda m: order.get(m["kind"], 3)):
            self.kube.apply(m)

    def _get(self, dep: dict) -> dict | None:
        from controller.backends.kubernetes import ApiError

        meta = dep["metadata"]
        try:
            return self.kube.get("apps/v1", "Deployment", meta["namespace"], meta["name"])
        except ApiError as err:
            if err.code == 404:
                return None
            raise TemporaryError(f"reading Deployment {meta['name']}: {err}") from None

    # ---------------------------------------------------------------- transitions
    def _record(self, spec: str, ev: DeployEvent) -> DeployEvent:
        return history.append(self.store, spec, ev)

    def promote(self, request: DeployRequest) -> DeployResult:
        """The Deployer seam: roll the spec's server to the request's run."""
        self.inputs[(request.spec, request.run_id)] = self.kube.publish_serving_inputs(request)
        try:
            config = requested_config(request)
        except GateNotPassed as exc:
            prev = self._previous(request.spec)
            prev_id = prev["servingRunId"] if prev else None
            ev = event("deploy.refused", request.spec, request.run_id, self.name, prev_id, prev_id, Reason.GATE_FAILED,
                       str(exc))
            return DeployResult("refused", prev_id, (self._record(request.spec, ev),), message=str(exc))
        return self.step(request.finetune, request.run_id, request.lineage.data_md5, request.lineage.git_commit,
                         serving_config=config)

    def rollout(self, finetune: FineTune, run_id: str, data_md5: str, git_commit: str, timeout: float | None = None,
                kind: str = "deploy.promoted", reason: str = Reason.SUCCEEDED, *,
                serving_config: str | None) -> DeployResult:
        """Roll the spec's server to `run_id` and wait until the rollout settles (`ftops rollback`,
        tests): the steps of `promote`, repeated, with every step's events."""
        events: list[DeployEvent] = []
        while True:
            result = self.step(finetune, run_id, data_md5, git_commit, timeout, kind, reason, serving_config=serving_config)
            events.extend(result.events)
            if result.outcome != "rolling_out":
                return replace(result, events=tuple(events))
            self.clock.sleep(min(result.after or self.poll_interval, self.poll_interval))

    def _state_path(self, spec: str) -> Path:
        return self.store / spec / "serving" / "rollout.json"

    def _state(self, spec: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._state_path(spec).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _save(self, spec: str, state: dict[str, Any]) -> None:
        path = self._state_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, sort_keys=True) + "\n")
        tmp.replace(path)

    def _clear(self, spec: str) -> None:
        self._state_path(spec).unlink(missing_ok=True)

    def step(self, finetune: FineTune, run_id: str, data_md5: str, git_commit: str, timeout: float | None = None,
             kind: str = "deploy.promoted", reason: str = Reason.SUCCEEDED, *,
             serving_config: str | None) -> DeployResult:
        """Move the rollout of `run_id` one step (rolling or canary, per spec.serving.rollout) and
        return at once: `rolling_out` until it is done, never waiting on the Deployments. Only when
        that run's gate passed on `serving_config` (the hash of the serving configuration being
        deployed; None is never promoted); rolled back automatically when it does not become
        ready in `timeout`. The state between steps is `<state>/<spec>/serving/rollout.json`."""
        spec = finetune.name
        serving = finetune.spec.serving
        if serving is None:
            raise PermanentError(f"spec '{spec}' has no spec.serving block; there is nothing to deploy")
        prev = self._previous(spec)
        prev_id = prev["servingRunId"] if prev else None
        try:
            if serving_config is None:
                raise GateNotPassed(f"run {run_id}: no serving configuration recorded for this rollout, so no evaluation "
                                    "vouches for what it would serve")
            gate_decision(self.artifacts, self.artifacts.run_uri(spec, run_id), serving_config)
        except GateNotPassed as exc:
            ev = event("deploy.refused", spec, run_id, self.name, prev_id, prev_id, Reason.GATE_FAILED, str(exc))
            return DeployResult("refused", prev_id, (self._record(spec, ev),), message=str(exc))
        state = self._state(spec)
        if state is not None and state["runId"] != run_id:  # a newer run supersedes the rollout in progress
            self._undo(finetune, state, prev)
            state = None
        if state is not None:
            return self._advance(finetune, state, prev, timeout or self.ready_timeout)
        stable = self.manifests(finetune, run_id, data_md5, git_commit, "stable")
        stable_dep = self._deployment(stable)
        if prev_id == run_id and deployment_state(self._get(stable_dep), serving.replicas, run_id).ready:
            return DeployResult("unchanged", run_id, (), message="already serving")
        # What re-renders this version later (rollback by name): its lineage and the spec as it was.
        lineage = {"dataMd5": data_md5, "gitCommit": git_commit, "namespace": stable_dep["metadata"]["namespace"],
                   "finetune": finetune.model_dump(mode="json", by_alias=True), "servingConfigSha256": serving_config}
        strategy = serving.rollout.strategy if prev_id else "rolling"
        started = self._record(spec, event("deploy.started", spec, run_id, self.name, prev_id, prev_id, Reason.ROLLING_OUT,
                                           f"{strategy} rollout of run {run_id}", strategy=strategy, **lineage))
        state = {"runId": run_id, "dataMd5": data_md5, "gitCommit": git_commit, "kind": kind, "reason": reason,
                 "strategy": strategy, "since": self.clock.time(), "lineage": lineage}
        if strategy == "canary" and prev is not None:  # a canary needs a previous run (strategy above)
            n = min(serving.replicas - 1, max(1, math.ceil(serving.replicas * serving.rollout.canary_percent / 100)))
            self._apply(self.manifests(finetune, run_id, data_md5, git_commit, "canary", replicas=n))
            state.update(phase="canary", canaryReplicas=n)
        else:
            self._apply(stable)
            state.update(phase="stable")
        self._save(spec, state)
        return DeployResult("rolling_out", prev_id, (started,), message=f"{strategy} rollout of run {run_id} started",
                            after=self.poll_interval)

    def _advance(self, finetune: FineTune, state: dict[str, Any], prev: dict[str, Any] | None,
                 timeout: float) -> DeployResult:
        spec, run_id = finetune.name, str(state["runId"])
        serving = finetune.spec.serving
        assert serving is not None
        prev_id = prev["servingRunId"] if prev else None
        md5, commit, lineage = state["dataMd5"], state["gitCommit"], state["lineage"]
        elapsed = self.clock.time() - float(state["since"])
        if state["phase"] in ("canary", "observing"):
            n = int(state["canaryReplicas"])
            canary = self._deployment(self.manifests(finetune, run_id, md5, commit, "canary", replicas=n))
            st = deployment_state(self._get(canary), n, run_id)
            if state["phase"] == "canary":
                if not st.ready and not st.failed and elapsed < timeout:
                    return self._waiting(prev_id, f"canary of run {run_id}: {st.message}")
                if st.ready:
                    # The stable side gives up the canary's share, so the canary takes canaryPercent
                    # of the replicas (and of the traffic) while it is observed.
                    assert prev is not None
                    self._apply(self._previous_manifests(finetune, prev, replicas=serving.replicas - n))
                    self._save(spec, {**state, "phase": "observing", "observedAt": self.clock.time()})
                    return self._waiting(prev_id, f"canary of run {run_id} is ready; observing it")
                why = st.message if st.failed else f"not ready after {timeout:.0f}s ({st.message})"
                return self._canary_failed(finetune, state, prev, why)
            if not st.ready:
                return self._canary_failed(finetune, state, prev, st.message)
            watched = self.clock.time() - float(state["observedAt"])
            if watched < serving.rollout.stable_seconds:
                left = serving.rollout.stable_seconds - watched
                return self._waiting(prev_id, f"canary of run {run_id} ready for {watched:.0f}s of "
                                              f"{serving.rollout.stable_seconds}s", min(self.poll_interval, left))
            ready = self._record(spec, event("deploy.canary_ready", spec, run_id, self.name, prev_id, prev_id,
                                             Reason.ROLLING_OUT, f"{n} canary replica(s) stayed ready for "
                                             f"{serving.rollout.stable_seconds}s", canaryReplicas=n,
                                             stableReplicas=serving.replicas - n, **lineage))
            self._apply(self.manifests(finetune, run_id, md5, commit, "stable"))
            self._save(spec, {**state, "phase": "stable", "since": self.clock.time()})
            return DeployResult("rolling_out", prev_id, (ready,), message=f"rolling the stable replicas to run {run_id}",
                                after=self.poll_interval)
        stable = self._deployment(self.manifests(finetune, run_id, md5, commit, "stable"))
        st = deployment_state(self._get(stable), serving.replicas, run_id)
        if not st.ready and not st.failed and elapsed < timeout:
            return self._waiting(prev_id, f"rollout of run {run_id}: {st.message}")
        if state["strategy"] == "canary":
            self._scale_canary_down(finetune, run_id, md5, commit)
        self._clear(spec)
        if not st.ready:
            why = st.message if st.failed else f"rollout not complete after {timeout:.0f}s ({st.message})"
            if prev:
                # maxUnavailable 0: the previous pods kept serving while the new ones failed
                self._apply(self._previous_manifests(finetune, prev))
                serving_now = prev_id
            else:
                self._apply(self.manifests(finetune, run_id, md5, commit, "stable", replicas=0))
                serving_now = None
            msg = (f"run {run_id} failed readiness ({why}); "
                   f"{'run ' + serving_now + ' serves again' if serving_now else 'nothing serves'}")
            ev = self._record(spec, event("deploy.rolled_back", spec, run_id, self.name, serving_now, prev_id,
                                          Reason.ROLLED_BACK, msg, automatic=True, **lineage))
            return DeployResult("rolled_back", serving_now, (ev,), message=msg)
        kind, reason = str(state["kind"]), str(state["reason"])
        msg = f"run {run_id} serves on {serving.replicas} replica(s)" + (f" (was {prev_id})" if prev_id else "")
        ev = self._record(spec, event(kind, spec, run_id, self.name, run_id, prev_id, reason, msg, **lineage))
        return DeployResult("promoted" if kind == "deploy.promoted" else "rolled_back", run_id, (ev,), message=msg)

    def _waiting(self, prev_id: str | None, message: str, after: float | None = None) -> DeployResult:
        return DeployResult("rolling_out", prev_id, (), message=message, after=after or self.poll_interval)

    def _canary_failed(self, finetune: FineTune, state: dict[str, Any], prev: dict[str, Any] | None,
                       why: str) -> DeployResult:
        spec, run_id = finetune.name, str(state["runId"])
        prev_id = prev["servingRunId"] if prev else None
        self._undo(finetune, state, prev)
        msg = f"canary of run {run_id} failed ({why}); run {prev_id} keeps serving"
        ev = self._record(spec, event("deploy.rolled_back", spec, run_id, self.name, prev_id, prev_id,
                                      Reason.ROLLED_BACK, msg, automatic=True, **state["lineage"]))
        return DeployResult("rolled_back", prev_id, (ev,), message=msg)

    def _undo(self, finetune: FineTune, state: dict[str, Any], prev: dict[str, Any] | None) -> None:
        """Take a rollout in progress back: its canary scaled to 0, the previous run at full size."""
        if state.get("strategy") == "canary":
            self._scale_canary_down(finetune, str(state["runId"]), state["dataMd5"], state["gitCommit"])
        if prev is not None:
            self._apply(self._previous_manifests(finetune, prev))
        self._clear(finetune.name)

    def _scale_canary_down(self, finetune: FineTune, run_id: str, data_md5: str, git_commit: str) -> None:
        self._apply([self._deployment(self.manifests(finetune, run_id, data_md5, git_commit, "canary", replicas=0))])

    def _previous(self, spec: str) -> dict[str, Any] | None:
        """The last event that made a run serve (it carries the lineage needed to re-render it)."""
        current = history.serving_run(self.store, spec)
        if current is None:
            return None
        for ev in reversed(history.served_runs(self.store, spec)):
            if ev["servingRunId"] == current and ev.get("runId") == current:
                return ev
        for ev in reversed(history.read(self.store, spec)):
            if ev.get("runId") == current and "dataMd5" in ev:
                return {**ev, "servingRunId": current}
        return None

    def current(self, spec: str) -> Serving | None:
        """The serving run per the history, healthy when its stable Deployment is fully ready with it."""
        from controller.render import object_name

        run_id = history.serving_run(self.store, spec)
        if run_id is None:
            return None
        lineage = self._lineage(spec, run_id)
        if lineage is None:
            return Serving(spec, run_id, False, message="no namespace recorded for the serving run")
        dep = {"metadata": {"namespace": lineage["namespace"], "name": object_name(spec, None, "serve")}}
        found = self._get(dep)
        replicas = int(((found or {}).get("spec") or {}).get("replicas") or 0)
        state = deployment_state(found, replicas, run_id)
        healthy = state.ready and replicas > 0
        rollout = self._state(spec)
        if not healthy and rollout is not None and rollout["runId"] != run_id:
            # A rolling update to another run is under way: with maxUnavailable 0 this run's pods
            # keep serving until the new ones are ready.
            available = int(((found or {}).get("status") or {}).get("availableReplicas") or 0)
            healthy = replicas > 0 and available >= replicas
        return Serving(spec, run_id, healthy, message=state.message)

    def _lineage(self, spec: str, run_id: str) -> dict | None:
        return next((e for e in reversed(history.read(self.store, spec))
                     if e.get("runId") == run_id and e.get("namespace")), None)

    def stop(self, spec: str) -> DeployResult:
        """Delete the spec's serving objects (Deployments, Service, ConfigMaps: found by its labels in
        every namespace it was served in). Training workloads and artifacts are not touched."""
        from controller.backends.kubernetes import ApiError, resource_path

        namespaces = sorted({str(e["namespace"]) for e in history.read(self.store, spec) if e.get("namespace")})
        current = history.serving_run(self.store, spec)
        selector = f"{L.SPEC}={spec},{L.COMPONENT}=serving,{L.MANAGED_SELECTOR}"
        deleted = 0
        for namespace in namespaces:
            for api_version, kind in SERVING_KINDS:
                try:
                    items = self.kube.list(api_version, kind, namespace, selector)["items"]
                    for item in items:
                        self.kube._request("DELETE", resource_path(api_version, kind, namespace, item["metadata"]["name"]))
                        deleted += 1
                except ApiError as err:
                    if err.code != 404:
                        raise TemporaryError(f"stopping spec {spec}: {kind}s in {namespace}: {err}") from None
        if current is None and deleted == 0:
            return DeployResult("stopped", None, (), message="nothing was serving")
        msg = f"deleted {deleted} serving object(s) of spec {spec}"
        ev = event("deploy.stopped", spec, current, self.name, None, current, Reason.NOT_SERVED, msg)
        return DeployResult("stopped", None, (self._record(spec, ev),), message=msg)

    def rollback(self, spec: str, to: str | None = None, timeout: float | None = None) -> DeployResult:
        """Roll back to `to` or the previously served run (which must still pass its gate), as it
        served then: re-rendered from the spec and lineage recorded when it was promoted."""
        target = rollback_target(self.store, self.artifacts, spec, to)
        lineage = next((e for e in reversed(history.read(self.store, spec))
                        if e.get("runId") == target and "dataMd5" in e and e.get("finetune")), None)
        if lineage is None:
            raise PermanentError(f"rollback: the history has no lineage (spec, data md5, git commit) for run {target}")
        finetune = FineTune.model_validate_json(json.dumps(lineage["finetune"]))
        recorded = lineage.get("servingConfigSha256")
        return self.rollout(finetune, target, lineage["dataMd5"], lineage["gitCommit"], timeout,
                            kind="deploy.rolled_back", reason=Reason.REQUESTED,
                            serving_config=recorded if isinstance(recorded, str) else None)
