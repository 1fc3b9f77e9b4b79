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

On a GPU pool whose engine the operator set to vLLM (`gpus.<type>.engine: vllm`, with
`cluster.servingGpus` > 0; controller.render.vllm.serving_engine), a spec's run is not a
Deployment of its own but an adapter in a shared engine pool:

* the pool (controller.render.vllm.render_vllm: vLLM replicas, each with the adapter sidecar,
  behind a headless Service) is one per namespace, base model and chat template, shared by every
  spec whose runs have those in common; it is applied when a spec first needs it (and again when
  what it renders from changes: a larger LoRA rank, more replicas) and deleted only when the last
  spec leaves it. Its state is a record beside its desired set in the artifact store
  (`_engines/<namespace>/<pool>/adapters.json`: the adapters the sidecars keep loaded, whose spec
  each is, the member specs it renders from);
* promotion adds the run's adapter to the desired set (every replica's sidecar loads it), then
  rolls the spec's gateway (`<spec>-serve`, no model of its own, controller.render.vllm
  .render_gateway) to a route to that adapter. A new gateway pod is ready only once an engine
  replica reports the adapter loaded, and the old gateway pods answer until then
  (maxUnavailable 0), so the route switches only after the load. Then the previous run's
  adapter leaves the desired set (the sidecars unload it);
* a rollout that fails (the gateway never gets ready: the adapter cannot be loaded) routes back
  (the previous gateway's pods never stopped) and takes the new adapter out;
* `stop` removes the spec's gateway and its adapters, and the pool once no spec uses it.
The embedded engine's path above is unchanged. A spec whose GPU type changes engine rolls in
place (the gateway and the embedded server are the same `<spec>-serve` Deployment and Service):
onto a pool, the previous run's adapter joins it first; off a pool, the spec's adapters leave it
once the embedded server is ready, and a failed rollout routes the gateway back.
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
from controller.serve.rollout import Policy, RunStats, analyse, canary_weight, merge, parse_metrics
from controller.spec.finetune import FineTune
from controller.status import Reason

if TYPE_CHECKING:
    from controller.backends.kubernetes import KubernetesBackend
    from controller.catalog import OperatorConfig
    from controller.render import ModelSource

SERVING_KINDS = (("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"))
"""What a spec's serving renders to, and what `stop` removes (found by the spec's labels)."""
POOL_SELECTOR = f"{L.COMPONENT}=engine,{L.MANAGED_BY}=ftops"
"""Every engine pool's objects (each also labelled with its pool's name)."""


@dataclass
class PoolRecord:
    """An engine pool's state, kept beside (in the same file as) the desired adapter set its
    sidecars read: `adapters` (run id -> run URI: what every replica keeps loaded), whose spec
    each adapter is and its LoRA rank, the member specs as last promoted (what the pool renders
    from), and the base model and chat template that define the pool."""

    name: str
    namespace: str
    model: "ModelSource"
    chat_template: str
    adapters: dict[str, str]
    owners: dict[str, str]
    ranks: dict[str, int]
    members: dict[str, dict]

    def to_json(self) -> dict:
        return {"adapters": dict(sorted(self.adapters.items())), "owners": dict(sorted(self.owners.items())),
                "ranks": dict(sorted(self.ranks.items())), "members": dict(sorted(self.members.items())),
                "pool": {"name": self.name, "namespace": self.namespace, "chatTemplate": self.chat_template,
                         "model": {"uri": self.model.uri, "revision": self.model.revision}}}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "PoolRecord":
        from controller.render import ModelSource

        try:
            pool = data["pool"]
            return cls(str(pool["name"]), str(pool["namespace"]), ModelSource(str(pool["model"]["uri"]),
                                                                              pool["model"].get("revision")),
                       str(pool["chatTemplate"]), {str(k): str(v) for k, v in data["adapters"].items()},
                       {str(k): str(v) for k, v in data.get("owners", {}).items()},
                       {str(k): int(v) for k, v in data.get("ranks", {}).items()},
                       {str(k): dict(v) for k, v in data.get("members", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PermanentError(f"{where}: not an engine pool record ({type(exc).__name__}: {exc}); it is written "
                                 "only by the deployer: restore it from the artifact store's history") from None


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
                 clock: Clock = SYSTEM_CLOCK, policy: Policy | None = None) -> None:
        self.kube = kube
        self.operator = operator
        self.store = Path(state)
        self.artifacts = artifacts or open_store(str(self.store))
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.namespace = namespace
        self.clock = clock
        self.policy = policy
        """Canary analysis on an engine pool (default: watched for spec.serving.rollout.stableSeconds)."""
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
        the lineage recorded with it: its own server, or its gateway when it served on an engine
        pool (the spec's engine changed since; its adapter stays in the pool until this rollout
        is done)."""
        if prev.get("engine") == "vllm" and prev.get("pool"):
            run = str(prev["servingRunId"])
            state = {"pools": {run: prev["pool"]}, "dataMd5": prev.get("dataMd5", ""),
                     "gitCommit": prev.get("gitCommit", ""), "lineage": {"corpusUri": prev.get("corpusUri")}}
            return self._gateway_manifests(finetune, ((run, 100),), state, replicas=replicas)
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
        if self.engine(finetune) == "vllm":
            return self._pool_step(finetune, run_id, data_md5, git_commit, timeout or self.ready_timeout, kind, reason,
                                   serving_config, prev)
        state = self._state(spec)
        if state is not None and state["runId"] != run_id:  # a newer run supersedes the rollout in progress
            self._undo(finetune, state, prev)
            state = None
        if state is not None:
            return self._advance(finetune, state, prev, timeout or self.ready_timeout)
        stable = self.manifests(finetune, run_id, data_md5, git_commit, "stable")
        stable_dep = self._deployment(stable)
        found = self._get(stable_dep)
        template = (((found or {}).get("spec") or {}).get("template") or {}).get("metadata") or {}
        on_pool = (template.get("annotations") or {}).get(L.ENGINE) == "vllm"  # the spec's engine changed
        if prev_id == run_id and not on_pool and deployment_state(found, serving.replicas, run_id).ready:
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
        # Served on an engine pool before (the operator moved the spec's GPU type to the embedded
        # engine): its adapters leave the pools now that its own server answers.
        retired = self._retire(spec, self._namespaces(spec), keep=set())
        msg = (f"run {run_id} serves on {serving.replicas} replica(s)" + (f" (was {prev_id})" if prev_id else "")
               + (f"; {retired}" if retired else ""))
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
        """Take a rollout in progress back: its canary scaled to 0, the previous run at full size
        (on an engine pool: the previous route, and the new adapter out of the pool)."""
        if state.get("engine") == "vllm":
            self._pool_undo(finetune, state, prev)
            return
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

    def _namespaces(self, spec: str) -> list[str]:
        """Every namespace the spec served in (per its history)."""
        return sorted({str(e["namespace"]) for e in history.read(self.store, spec) if e.get("namespace")})

    def stop(self, spec: str) -> DeployResult:
        """Delete the spec's serving objects (Deployments, Service, ConfigMaps: found by its labels in
        every namespace it was served in). Training workloads and artifacts are not touched."""
        from controller.backends.kubernetes import ApiError

        namespaces = self._namespaces(spec)
        current = history.serving_run(self.store, spec)
        selector = f"{L.SPEC}={spec},{L.COMPONENT}=serving,{L.MANAGED_SELECTOR}"
        deleted = 0
        for namespace in namespaces:
            for api_version, kind in SERVING_KINDS:
                try:
                    items = self.kube.list(api_version, kind, namespace, selector)["items"]
                    for item in items:
                        self.kube.delete(api_version, kind, namespace, item["metadata"]["name"])
                        deleted += 1
                except ApiError as err:
                    if err.code != 404:
                        raise TemporaryError(f"stopping spec {spec}: {kind}s in {namespace}: {err}") from None
        left = self._retire(spec, namespaces, keep=set())
        rollout = self._state(spec)
        if rollout is not None and rollout.get("engine") == "vllm":
            self._clear(spec)
        if current is None and deleted == 0 and not left:
            return DeployResult("stopped", None, (), message="nothing was serving")
        msg = f"deleted {deleted} serving object(s) of spec {spec}" + (f"; {left}" if left else "")
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

    # ---------------------------------------------------------------- engine pools (vllm)
    def engine(self, finetune: FineTune) -> str:
        """`vllm` where the operator chose it for the spec's GPU pool, else `embedded`."""
        from controller.render.vllm import serving_engine

        return serving_engine(finetune, self.operator)

    def _pool_uri(self, namespace: str, pool: str) -> str:
        from controller.render.vllm import desired_set_uri

        return desired_set_uri(self.artifacts.root, namespace, pool)

    def _read_pool(self, namespace: str, pool: str) -> PoolRecord | None:
        uri = self._pool_uri(namespace, pool)
        try:
            raw = self.artifacts.get(uri)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TemporaryError(f"reading engine pool {pool}'s record {uri}: {exc}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise PermanentError(f"{uri}: not valid JSON; it is written only by the deployer") from None
        return PoolRecord.from_json(data if isinstance(data, dict) else {}, uri)

    def _write_pool(self, record: PoolRecord) -> None:
        uri = self._pool_uri(record.namespace, record.name)
        try:
            self.artifacts.put(uri, (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:
            raise TemporaryError(f"writing engine pool {record.name}'s desired adapters {uri}: {exc}") from None

    def _pool_manifests(self, record: PoolRecord) -> list[dict]:
        from controller.render.vllm import EnginePoolInput, render_vllm

        finetunes = tuple(FineTune.model_validate(m) for _, m in sorted(record.members.items()))
        replicas = max(ft.spec.serving.replicas if ft.spec.serving else 1 for ft in finetunes)
        return render_vllm(EnginePoolInput(
            pool=record.name, finetunes=finetunes, model=record.model, chat_template=record.chat_template,
            namespace=record.namespace, operator=self.operator, desired_uri=self._pool_uri(record.namespace, record.name),
            replicas=replicas, gpu_type=finetunes[0].spec.hardware.gpu_type, gpus=self.operator.cluster.serving_gpus,
            adapter_ranks=tuple(record.ranks.values())))

    def _pools(self, namespace: str) -> list[str]:
        """The engine pools in `namespace` (found by their Deployments' labels)."""
        from controller.backends.kubernetes import ApiError

        try:
            items = self.kube.list("apps/v1", "Deployment", namespace, POOL_SELECTOR)["items"]
        except ApiError as err:
            if err.code == 404:
                return []
            raise TemporaryError(f"listing engine pools in {namespace}: {err}") from None
        return sorted({str(d["metadata"]["labels"][L.ENGINE_POOL]) for d in items
                       if (d["metadata"].get("labels") or {}).get(L.ENGINE_POOL)})

    def _run_pool(self, finetune: FineTune, run_id: str, model: "ModelSource", namespace: str) -> str:
        """The pool a run's adapter lives in: its base model and the chat template its manifest records."""
        from controller.render.vllm import pool_name

        return pool_name(model, self._chat_template(finetune.name, run_id))

    def _chat_template(self, spec: str, run_id: str) -> str:
        run_uri = self.artifacts.run_uri(spec, run_id)
        manifest = self.artifacts.manifest(run_uri)
        if manifest is None:
            raise PermanentError(f"run {run_id}: {run_uri} has no manifest; the run is not finished")
        provenance = manifest.data.get("provenance")
        template = provenance.get("chatTemplate") if isinstance(provenance, dict) else None
        if not isinstance(template, str) or not template:
            raise PermanentError(f"{run_uri}/manifest.json records no provenance.chatTemplate: vLLM would format "
                                 "prompts with another template than training did; retrain the run")
        return template

    def _join(self, finetune: FineTune, run_id: str, model: "ModelSource", namespace: str) -> PoolRecord:
        """The run's adapter in its pool's desired set, the spec among the pool's members, the pool
        applied (created when absent, rolled when what it renders from changed)."""
        from controller.render.vllm import pool_name
        from controller.spec.method import ApiMethod

        method = finetune.spec.method
        if method.type == "full" or isinstance(method, ApiMethod):
            raise PermanentError(f"spec '{finetune.name}': spec.method.type {method.type} on GPU type "
                                 f"'{finetune.spec.hardware.gpu_type}', whose engine is vllm: an engine pool serves "
                                 "LoRA adapters over a shared base; use lora or qlora, or set the GPU type's engine "
                                 "to embedded in the operator config")
        template = self._chat_template(finetune.name, run_id)
        name = pool_name(model, template)
        record = self._read_pool(namespace, name) or PoolRecord(name, namespace, model, template, {}, {}, {}, {})
        record.adapters[run_id] = self.artifacts.run_uri(finetune.name, run_id)
        record.owners[run_id] = finetune.name
        record.ranks[run_id] = int(getattr(method, "r", 0) or 0)
        record.members[finetune.name] = finetune.model_dump(mode="json", by_alias=True)
        self._write_pool(record)
        self._apply(self._pool_manifests(record))
        return record

    def _retire(self, spec: str, namespaces: list[str], keep: set[str]) -> str:
        """Take the spec's adapters other than `keep` out of every pool in `namespaces` (the
        sidecars unload them); a pool the spec no longer uses loses it as a member, and a pool
        left with no member is deleted. Says what it did ('' when nothing).

        A pool that keeps members is not re-rendered here: the shared replicas serving the other
        specs are not restarted because one left (a smaller max LoRA rank or replica count takes
        effect at the next join), and the operator config need not still allow a pool at all (a
        spec leaves because its GPU type moved to the embedded engine, or serving GPUs went to 0)."""
        done: list[str] = []
        for namespace in namespaces:
            for pool in self._pools(namespace):
                record = self._read_pool(namespace, pool)
                if record is None:
                    continue
                gone = sorted(r for r, owner in record.owners.items() if owner == spec and r not in keep)
                uses = any(owner == spec for r, owner in record.owners.items() if r not in gone)
                if not gone and (uses or spec not in record.members):
                    continue
                for run in gone:
                    record.adapters.pop(run, None)
                    record.owners.pop(run, None)
                    record.ranks.pop(run, None)
                if not uses:
                    record.members.pop(spec, None)
                self._write_pool(record)
                if record.members:
                    done.append(f"adapter(s) {', '.join(r[:12] for r in gone)} left engine pool {pool}")
                else:
                    n = self._delete_pool(namespace, pool)
                    done.append(f"engine pool {pool} deleted ({n} object(s)): no spec uses it")
        return "; ".join(done)

    def _delete_pool(self, namespace: str, pool: str) -> int:
        from controller.backends.kubernetes import ApiError

        deleted = 0
        for api_version, kind in SERVING_KINDS:
            try:
                items = self.kube.list(api_version, kind, namespace, f"{POOL_SELECTOR},{L.ENGINE_POOL}={pool}")["items"]
                for item in items:
                    self.kube.delete(api_version, kind, namespace, item["metadata"]["name"])
                    deleted += 1
            except ApiError as err:
                if err.code != 404:
                    raise TemporaryError(f"deleting engine pool {pool}: {kind}s in {namespace}: {err}") from None
        return deleted

    def _model(self, spec: str, run_id: str, recorded: dict | None) -> "ModelSource":
        """The base model of a run as its pods get it: what was published for this rollout, else
        what the rollout that served it recorded."""
        from controller.render import ModelSource

        model = self.inputs.get((spec, run_id), (None, None))[1]
        if model is not None:
            return model
        if isinstance(recorded, dict) and recorded.get("uri"):
            return ModelSource(str(recorded["uri"]), recorded.get("revision"))
        raise PermanentError(f"run {run_id} of spec '{spec}': no base model recorded for its engine pool; "
                             "promote it again (ftops reconcile) instead of rolling back to it")

    def _gateway_manifests(self, finetune: FineTune, routes: tuple[tuple[str, int], ...], state: dict[str, Any],
                           replicas: int | None = None) -> list[dict]:
        from controller.render import owner_namespace
        from controller.render.vllm import GatewayInput, pool_url, render_gateway

        namespace = owner_namespace(finetune, self.operator, self.namespace)
        pools = state["pools"]
        engines = tuple(sorted({pool_url(pools[run], namespace) for run, _ in routes}))
        return render_gateway(GatewayInput(
            finetune=finetune, routes=routes, engines=engines, data_md5=state["dataMd5"], git_commit=state["gitCommit"],
            operator=self.operator, namespace=namespace, corpus_uri=state["lineage"].get("corpusUri"),
            replicas=replicas))

    def _gateway_state(self, manifests: list[dict], replicas: int) -> RolloutState:
        """Is the spec's gateway running exactly these routes everywhere (and ready)?"""
        from controller.render.vllm import GATEWAY_CONFIG, primary_run

        want = self._deployment(manifests)
        digest = want["spec"]["template"]["metadata"]["annotations"][GATEWAY_CONFIG]
        found = self._get(want)
        routes = json.loads(next(m for m in manifests if m["kind"] == "ConfigMap")["data"]["gateway.json"])["routes"]
        st = deployment_state(found, replicas, primary_run(tuple((r["runId"], r["weight"]) for r in routes)))
        template = (((found or {}).get("spec") or {}).get("template") or {}).get("metadata") or {}
        if (template.get("annotations") or {}).get(GATEWAY_CONFIG) != digest:
            return RolloutState(False, st.failed, "the gateway Deployment does not hold these routes yet", st.ready_replicas)
        return st

    def _pool_status(self, state: dict[str, Any]) -> str:
        """What the pools of the rollout's runs say (for the waiting message)."""
        from controller.render import object_name

        parts = []
        for pool in sorted(set(state["pools"].values())):
            dep = self._get({"metadata": {"namespace": state["lineage"]["namespace"], "name": object_name(pool, None, "engine")}})
            st = (dep or {}).get("status") or {}
            parts.append(f"engine pool {pool}: {int(st.get('readyReplicas') or 0)}/{int(st.get('replicas') or 0)} "
                         "replica(s) ready")
        return "; ".join(parts)

    def _pool_step(self, finetune: FineTune, run_id: str, data_md5: str, git_commit: str, timeout: float, kind: str,
                   reason: str, serving_config: str | None, prev: dict[str, Any] | None) -> DeployResult:
        """One step of a rollout onto an engine pool (see the module docstring)."""
        from controller.render import owner_namespace

        spec = finetune.name
        serving = finetune.spec.serving
        assert serving is not None
        prev_id = prev["servingRunId"] if prev else None
        state = self._state(spec)
        if state is not None and state["runId"] != run_id:  # a newer run supersedes the rollout in progress
            self._undo(finetune, state, prev)
            state = None
        if state is not None:
            return self._pool_advance(finetune, state, prev, timeout)
        namespace = owner_namespace(finetune, self.operator, self.namespace)
        recorded = self._lineage(spec, run_id) or {}  # a rollback in a new process: what it served with
        model = self._model(spec, run_id, recorded.get("engineModel"))
        corpus_uri = self.inputs.get((spec, run_id), (None, None))[0] or recorded.get("corpusUri")
        pools = {run_id: self._run_pool(finetune, run_id, model, namespace)}
        prev_model = None
        if prev is not None and prev_id != run_id:
            # a previous run that served on the embedded engine recorded no engine model: its base
            # is the spec's, as this run's is (a new base is a new run on another pool)
            prev_model = self._model(spec, str(prev_id), prev.get("engineModel") or
                                     {"uri": model.uri, "revision": model.revision})
            pools[str(prev_id)] = self._run_pool(finetune, str(prev_id), prev_model, namespace)
        lineage: dict[str, Any] = {
                   "dataMd5": data_md5, "gitCommit": git_commit, "namespace": namespace,
                   "finetune": finetune.model_dump(mode="json", by_alias=True), "servingConfigSha256": serving_config,
                   "engine": "vllm", "engineModel": {"uri": model.uri, "revision": model.revision},
                   "corpusUri": corpus_uri, "pool": pools[run_id]}
        state = {"runId": run_id, "dataMd5": data_md5, "gitCommit": git_commit, "kind": kind, "reason": reason,
                 "since": self.clock.time(), "lineage": lineage, "engine": "vllm", "pools": pools}
        routes: tuple[tuple[str, int], ...] = ((run_id, 100),)
        if prev_id == run_id and self._gateway_state(self._gateway_manifests(finetune, routes, state),
                                                     serving.replicas).ready:
            record = self._read_pool(namespace, pools[run_id])
            if record is None or run_id not in record.adapters:  # level-triggered: the set lost it
                self._join(finetune, run_id, model, namespace)
            return DeployResult("unchanged", run_id, (), message="already serving")
        strategy = serving.rollout.strategy if prev is not None and prev_id != run_id else "rolling"
        started = self._record(spec, event("deploy.started", spec, run_id, self.name, prev_id, prev_id, Reason.ROLLING_OUT,
                                           f"{strategy} rollout of run {run_id} on engine pool {pools[run_id]}",
                                           strategy=strategy, **lineage))
        if prev_model is not None:
            # the previous run's adapter stays loaded until the switch is done: it is what a failed
            # rollout routes back to (and it may have served on the embedded engine until now)
            self._join(finetune, str(prev_id), prev_model, namespace)
        self._join(finetune, run_id, model, namespace)
        phase = "switch"
        if strategy == "canary":
            stable_w, canary_w = canary_weight(serving.rollout.canary_percent)
            routes, phase = ((str(prev_id), stable_w), (run_id, canary_w)), "canary"
        self._apply(self._gateway_manifests(finetune, routes, state))
        state.update(strategy=strategy, phase=phase, routes=[list(r) for r in routes])
        self._save(spec, state)
        what = (f"a canary of {canary_w}% of requests beside run {prev_id}" if phase == "canary" else "it")
        return DeployResult("rolling_out", prev_id, (started,), message=f"run {run_id}'s adapter is loading on engine "
                            f"pool {pools[run_id]}; the gateway routes {what} once a replica holds it",
                            after=self.poll_interval)

    def _pool_advance(self, finetune: FineTune, state: dict[str, Any], prev: dict[str, Any] | None,
                      timeout: float) -> DeployResult:
        spec, run_id = finetune.name, str(state["runId"])
        serving = finetune.spec.serving
        assert serving is not None
        prev_id = prev["servingRunId"] if prev else None
        routes = tuple((str(r), int(w)) for r, w in state["routes"])
        namespace = state["lineage"]["namespace"]
        if state["phase"] == "observing":
            return self._observe(finetune, state, prev)
        st = self._gateway_state(self._gateway_manifests(finetune, routes, state), serving.replicas)
        elapsed = self.clock.time() - float(state["since"])
        if state["phase"] == "revert" and (st.ready or elapsed >= timeout):
            # routed back (or as far as it goes): now the canary's adapter can leave the pool
            self._clear(spec)
            self._retire(spec, [namespace], keep={str(prev_id)})
            msg = f"canary of run {run_id} rolled back ({state['why']}); run {prev_id} serves"
            ev = self._record(spec, event("deploy.rolled_back", spec, run_id, self.name, prev_id, prev_id,
                                          Reason.ROLLED_BACK, msg, automatic=True, **state["lineage"]))
            return DeployResult("rolled_back", prev_id, (ev,), message=msg)
        if not st.ready and not st.failed and elapsed < timeout:
            return self._waiting(prev_id, f"rollout of run {run_id}: gateway {st.message}; {self._pool_status(state)}")
        if state["phase"] == "canary" and st.ready:
            self._save(spec, {**state, "phase": "observing", "observedAt": self.clock.time(),
                              "baseline": self._scrape(finetune, namespace)})
            return self._waiting(prev_id, f"canary of run {run_id} is routed ({routes[1][1]}% of requests); "
                                          "watching the gateway's metrics")
        self._clear(spec)
        if st.ready:
            retired = self._retire(spec, [namespace], keep={run_id})
            msg = (f"run {run_id} serves through the gateway on engine pool {state['pools'][run_id]} "
                   f"({serving.replicas} gateway replica(s))" + (f" (was {prev_id})" if prev_id and prev_id != run_id else "")
                   + (f"; {state['analysis']}" if state.get("analysis") else "") + (f"; {retired}" if retired else ""))
            kind, reason = str(state["kind"]), str(state["reason"])
            ev = self._record(spec, event(kind, spec, run_id, self.name, run_id, prev_id, reason, msg, **state["lineage"]))
            return DeployResult("promoted" if kind == "deploy.promoted" else "rolled_back", run_id, (ev,), message=msg)
        why = st.message if st.failed else f"the gateway was not ready on it after {timeout:.0f}s ({st.message}; " \
                                           f"{self._pool_status(state)})"
        serving_now = self._route_back(finetune, state, prev)
        msg = (f"run {run_id} failed to serve ({why}); "
               f"{'run ' + serving_now + ' serves again' if serving_now else 'nothing serves'}")
        ev = self._record(spec, event("deploy.rolled_back", spec, run_id, self.name, serving_now, prev_id,
                                      Reason.ROLLED_BACK, msg, automatic=True, **state["lineage"]))
        return DeployResult("rolled_back", serving_now, (ev,), message=msg)

    def _observe(self, finetune: FineTune, state: dict[str, Any], prev: dict[str, Any] | None) -> DeployResult:
        """A routed canary, judged on the gateway's own metrics (controller.serve.rollout.analyse):
        keep watching, promote (route everything to it) or roll back (route everything back,
        then take its adapter out)."""
        spec, run_id = finetune.name, str(state["runId"])
        serving = finetune.spec.serving
        assert serving is not None
        prev_id = str(prev["servingRunId"]) if prev else str(state["routes"][0][0])
        policy = self.policy or Policy(window_seconds=serving.rollout.stable_seconds)
        baseline = {run: RunStats.from_json(v) for run, v in (state.get("baseline") or {}).items()}
        now = {run: RunStats.from_json(v) for run, v in self._scrape(finetune, state["lineage"]["namespace"]).items()}
        elapsed = self.clock.time() - float(state["observedAt"])
        verdict = analyse(baseline, now, run_id, prev_id, elapsed, policy)
        if verdict.decision == "wait":
            return self._waiting(prev_id, verdict.message, max(0.5, min(self.poll_interval, policy.window_seconds - elapsed)))
        if verdict.decision == "promote":
            routes: tuple[tuple[str, int], ...] = ((run_id, 100),)
            update = {"phase": "switch", "analysis": verdict.message}
        else:
            routes = ((prev_id, 100),)
            update = {"phase": "revert", "why": f"the canary's analysis failed: {verdict.message}"}
        self._apply(self._gateway_manifests(finetune, routes, state))
        self._save(spec, {**state, **update, "routes": [list(r) for r in routes], "since": self.clock.time()})
        return self._waiting(prev_id, f"canary of run {run_id}: {verdict.message}; routing "
                                      f"{'to it' if verdict.decision == 'promote' else 'back to run ' + prev_id}")

    def _scrape(self, finetune: FineTune, namespace: str) -> dict[str, dict[str, float]]:
        """Every ready gateway pod's per-run counters, summed (its /metrics, read through the API
        server's pod proxy: the controller need not be inside the pod network). A pod that does not
        answer is left out of this reading."""
        from controller.backends.kubernetes import ApiError
        from controller.render.vllm import GATEWAY_PORT

        selector = f"{L.SPEC}={finetune.name},{L.COMPONENT}=serving,{L.MANAGED_SELECTOR}"
        try:
            pods = self.kube.list("v1", "Pod", namespace, selector)["items"]
        except ApiError as err:
            raise TemporaryError(f"listing the gateway pods of spec {finetune.name}: {err}") from None
        snapshots = []
        for pod in pods:
            conditions = (pod.get("status") or {}).get("conditions") or []
            if pod["metadata"].get("deletionTimestamp") or not any(
                    c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                continue
            try:
                page = self.kube.pod_proxy_get(namespace, pod["metadata"]["name"], GATEWAY_PORT, "metrics")
            except (ApiError, TemporaryError):
                continue
            snapshots.append(parse_metrics(page))
        return {run: stats.to_json() for run, stats in merge(*snapshots).items()}

    def _route_back(self, finetune: FineTune, state: dict[str, Any], prev: dict[str, Any] | None) -> str | None:
        """The gateway on the previous run again (its old pods never stopped: the new ones were
        never ready), then the new adapter out of the pool; with nothing before, the gateway at 0.
        The same run moving onto the pool from the embedded engine gets its own server back (a
        previous run that served there joined the pool first, so the gateway routes back to it)."""
        spec, run_id = finetune.name, str(state["runId"])
        namespace = state["lineage"]["namespace"]
        prev_id = str(prev["servingRunId"]) if prev else None
        if prev is not None and prev_id == run_id and prev.get("engine") != "vllm":
            self._apply(self._previous_manifests(finetune, prev))
            self._retire(spec, [namespace], keep=set())
            return prev_id
        if prev_id is not None and prev_id != run_id and prev_id in state["pools"]:
            self._apply(self._gateway_manifests(finetune, ((prev_id, 100),), state))
            self._retire(spec, [namespace], keep={prev_id})
            return prev_id
        self._apply(self._gateway_manifests(finetune, ((run_id, 100),), state, replicas=0))
        self._retire(spec, [namespace], keep=set())
        return None

    def _pool_undo(self, finetune: FineTune, state: dict[str, Any], prev: dict[str, Any] | None) -> None:
        self._route_back(finetune, state, prev)
        self._clear(finetune.name)
