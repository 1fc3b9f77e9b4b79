"""The kubernetes backend: applies a run's rendered manifests with the official client and
watches the workload (a Job, a JobSet or a Kubeflow Trainer v2 TrainJob) until it finishes.

Inputs: before the workload, `submit` publishes the run's prepared split (and a base model kept
in the repository) to the artifact store as content-addressed bundles, and applies the
namespace's model cache claim; the pods fetch both, verified (controller.podinputs).

Failure semantics: while the workload lives, `submit` creates nothing (a preempted run waits
for the Job controller to recreate its pods and resumes from its checkpoint). A workload that
FAILED for a retriable reason is deleted and created again; its checkpoint claim is not owned by
it, so the new attempt resumes where the last one stopped. A config error is never retried.

How it stays correct under crashes, restarts and other writers:

* Server-side apply with our field manager. The manifests' names are derived from the run id
  (controller.render.object_name), so applying the same run twice changes nothing: submit is
  idempotent, and a controller that crashed half-way simply applies again.
* 409 Conflict is never an error to retry blindly: it means somebody else changed the object,
  so we re-read it. An apply conflict on an object that carries our run-id label is our run
  (another manager, e.g. Kueue, owns a field) and is accepted; an object of that name that
  belongs to another run is a PermanentError. A delete whose preconditions went stale re-reads
  and deletes the object as it now is.
* Watches resume from the last resourceVersion seen; on 410 Gone (history compacted) the
  watcher relists and continues from the list's resourceVersion, never missing a final state.
* Job conditions map to run states (see `job_state`): Complete -> succeeded, Failed -> failed
  with the Job's reason (BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy: ConfigError),
  Suspended by a queue or a pod with a DisruptionTarget condition -> preempted.

This is the only module that imports `kubernetes`, and only inside functions, so the CLI's
light commands never pay for it.
"""
from __future__ import annotations

import builtins
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import urlencode

from controller import labels as L
from controller.backends.logs import tail_lines
from controller.errors import PermanentError, TemporaryError
from controller.seams import Phase, Run, RunNotFound, RunReason, RunState
from controller.render import CONFIG_ERROR_EXIT_CODES, ModelSource, run_label

if TYPE_CHECKING:
    from controller.catalog import OperatorConfig
    from controller.seams import ArtifactStore, DeployRequest

FIELD_MANAGER = "ftops-controller"
RUN_LABEL = L.RUN_ID
MANAGED_SELECTOR = L.MANAGED_SELECTOR

# apiVersion, kind -> plural (the resources ftops renders).
PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Pod"): "pods",
    ("v1", "Secret"): "secrets",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobsets",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjobs",
    # the cluster plumbing (kubernetes_lease.py, kubernetes_crd.py)
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("v1", "Event"): "events",
    ("ftops.dev/v1alpha1", "FineTune"): "finetunes",
}
JOB = ("batch/v1", "Job")
JOBSET = ("jobset.x-k8s.io/v1alpha2", "JobSet")
TRAINJOB = ("trainer.kubeflow.org/v1alpha1", "TrainJob")
WORKLOADS = (JOB, JOBSET, TRAINJOB)
TRAINING_SELECTOR = f"{L.COMPONENT}=training"
"""Training workloads only: an evaluation Job of the same run carries the run's label too."""


def workloads_for(flavor: str) -> tuple[tuple[str, str], ...]:
    """The kinds a flavour creates, and so the only kinds listed and watched: a cluster whose
    RBAC (or CRDs) do not cover the others is not asked about them (no 403 loop)."""
    return {"job": (JOB,), "jobset": (JOB, JOBSET), "trainjob": (TRAINJOB,)}[flavor]


class ApiError(Exception):
    """A non-2xx answer from the API server, with the Status fields."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message


def watch_events(resp: Any) -> Iterator[dict]:
    """The events of a streaming watch response, one JSON object per line, releasing the
    connection when the stream ends or the caller stops reading."""
    try:
        buffer = b""
        for chunk in resp.stream(amt=None, decode_content=False):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)
    finally:
        resp.release_conn()


def load_api_client(kubeconfig: str | None = None, context: str | None = None):
    """In-cluster config when running in a pod (and no kubeconfig was given), else kubeconfig
    (the given file, $KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    return client.ApiClient(configuration)


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str = "") -> str:
    plural = PLURALS.get((api_version, kind))
    if plural is None:
        raise PermanentError(f"ftops does not manage {api_version} {kind}")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


# ----------------------------------------------------------------------------- state mapping (pure)


def _true_conditions(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def _disrupted(pods: Iterable[dict]) -> dict | None:
    for pod in pods:
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
                return c
    return None


def _ready_pods(pods: Iterable[dict]) -> int:
    n = 0
    for pod in pods:
        st = pod.get("status") or {}
        disrupted = any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in st.get("conditions") or [])
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        n += int(ready and not disrupted)
    return n


def job_state(job: dict, pods: Sequence[dict] = ()) -> RunState:
    """A batch/v1 Job (and its pods) as a RunState."""
    meta = job.get("metadata") or {}
    run_id = (meta.get("annotations") or {}).get(RUN_LABEL) or (meta.get("labels") or {}).get(RUN_LABEL, "")
    status = job.get("status") or {}
    started, finished = status.get("startTime"), status.get("completionTime")
    conds = _true_conditions(job)
    if "Complete" in conds or ("SuccessCriteriaMet" in conds and "Failed" not in conds):
        done = conds["Complete"] if "Complete" in conds else conds["SuccessCriteriaMet"]
        return RunState(run_id, Phase.SUCCEEDED, "Complete", done.get("message", ""),
                        0, started, finished or conds.get("Complete", {}).get("lastTransitionTime"))
    failed = conds.get("Failed") or conds.get("FailureTarget")
    if failed is not None:
        reason = failed.get("reason") or "Failed"
        message = failed.get("message") or ""
        exit_code = None
        m = re.search(r"exit code (\d+)", message)
        if m:
            exit_code = int(m.group(1))
        if reason == "PodFailurePolicy" and exit_code in CONFIG_ERROR_EXIT_CODES:
            reason = RunReason.CONFIG_ERROR
        return RunState(run_id, Phase.FAILED, reason, message, exit_code, started, failed.get("lastTransitionTime"))
    suspended = conds.get("Suspended")
    if suspended is not None or (job.get("spec") or {}).get("suspend"):
        text = f"{(suspended or {}).get('reason', '')} {(suspended or {}).get('message', '')}"
        if re.search(r"preempt|evict", text, re.I):
            return RunState(run_id, Phase.PREEMPTED, "Preempted", text.strip(), None, started)
        return RunState(run_id, Phase.PENDING, "Queued", text.strip() or "the Job is suspended until admitted", None, started)
    ready = status.get("ready")
    ready = _ready_pods(pods) if pods else (ready or 0)
    if ready > 0:
        return RunState(run_id, Phase.RUNNING, "Running", f"{ready} pod(s) ready", None, started)
    disruption = _disrupted(pods)
    if disruption is not None:
        return RunState(run_id, Phase.PREEMPTED, disruption.get("reason") or "DisruptionTarget",
                        disruption.get("message") or "a pod of the run was disrupted; it resumes from its checkpoint", None, started)
    if status.get("active"):
        return RunState(run_id, Phase.PENDING, "PodsStarting", "pods are scheduled but not ready", None, started)
    return RunState(run_id, Phase.PENDING, "Created", "waiting for the Job controller", None, started)


def jobset_state(obj: dict, pods: Sequence[dict] = ()) -> RunState:
    meta = obj.get("metadata") or {}
    run_id = (meta.get("annotations") or {}).get(RUN_LABEL, "")
    conds = _true_conditions(obj)
    if "Completed" in conds:
        return RunState(run_id, Phase.SUCCEEDED, "Complete", conds["Completed"].get("message", ""), 0)
    if "Failed" in conds:
        c = conds["Failed"]
        return RunState(run_id, Phase.FAILED, c.get("reason") or "Failed", c.get("message", ""))
    if "Suspended" in conds:
        return RunState(run_id, Phase.PENDING, "Queued", conds["Suspended"].get("message", ""))
    ready = sum(int(r.get("ready") or 0) for r in (obj.get("status") or {}).get("replicatedJobsStatus") or [])
    if ready or _ready_pods(pods):
        return RunState(run_id, Phase.RUNNING, "Running", "")
    if _disrupted(pods):
        return RunState(run_id, Phase.PREEMPTED, "DisruptionTarget", "a pod of the run was disrupted")
    return RunState(run_id, Phase.PENDING, "Created", "")


def trainjob_state(obj: dict, pods: Sequence[dict] = ()) -> RunState:
    """A Trainer v2 TrainJob: Complete / Failed conditions (its JobSet's), Suspended while queued."""
    meta = obj.get("metadata") or {}
    run_id = (meta.get("annotations") or {}).get(RUN_LABEL, "")
    conds = _true_conditions(obj)
    if "Complete" in conds:
        return RunState(run_id, Phase.SUCCEEDED, "Complete", conds["Complete"].get("message", ""), 0)
    if "Failed" in conds:
        c = conds["Failed"]
        return RunState(run_id, Phase.FAILED, c.get("reason") or "Failed", c.get("message", ""))
    if "Suspended" in conds or (obj.get("spec") or {}).get("suspend"):
        return RunState(run_id, Phase.PENDING, "Queued", (conds.get("Suspended") or {}).get("message", ""))
    if _ready_pods(pods):
        return RunState(run_id, Phase.RUNNING, "Running", "")
    if _disrupted(pods):
        return RunState(run_id, Phase.PREEMPTED, "DisruptionTarget", "a pod of the run was disrupted")
    return RunState(run_id, Phase.PENDING, "Created", "")


STATE_MAPPERS: dict[str, Callable[[dict, Sequence[dict]], RunState]] = {
    "Job": job_state, "JobSet": jobset_state, "TrainJob": trainjob_state,
}


def workload_state(obj: dict, pods: Sequence[dict] = ()) -> RunState:
    return STATE_MAPPERS[obj.get("kind", "Job")](obj, pods)


# ----------------------------------------------------------------------------- backend


@dataclass
class _Watched:
    api_version: str
    kind: str
    rv: str | None = None


class KubernetesBackend:
    """Backend protocol over a Kubernetes cluster. `namespaces`: where to look for runs (the
    tenants' namespaces from the operator config); None looks cluster-wide."""

    name = "kubernetes"

    def __init__(self, api_client: Any = None, *, kubeconfig: str | None = None, context: str | None = None,
                 namespaces: Sequence[str] | None = None, field_manager: str = FIELD_MANAGER,
                 request_timeout: float = 30, workloads: Sequence[tuple[str, str]] | None = None,
                 fence: Callable[[], None] | None = None, operator: "OperatorConfig | None" = None,
                 store: "ArtifactStore | None" = None) -> None:
        self.api = api_client if api_client is not None else load_api_client(kubeconfig, context)
        self.operator = operator
        self.store = store
        """Where the pods' inputs are published (None: the manifests name them, nothing is published)."""
        if workloads is None:
            workloads = workloads_for(operator.cluster.training_flavor) if operator is not None else WORKLOADS
        """The operator config a run's workload is rendered with (GPU catalog, tenancy, images)."""
        self.fence = fence
        """Called before every write (any method but GET); raising refuses the write. With leader
        election it is `LeaderElector.ensure_leader`, so a paused or deposed leader cannot write."""
        self.namespaces = list(namespaces) if namespaces else None
        self.field_manager = field_manager
        self.request_timeout = request_timeout
        self.workloads = tuple(workloads)
        self._served: dict[tuple[str, str], bool] = {}
        self._watched = [_Watched(a, k) for a, k in self.workloads]
        self.states: dict[str, RunState] = {}
        """Latest state per run id, kept by `poll`/`watch`."""
        self._lock = threading.Lock()
        self.relists = 0
        """How many times a watch had to relist after 410 Gone (observable for tests and metrics)."""

    # -- HTTP through the official client (auth, TLS, proxies from the kubeconfig)

    def _request(self, method: str, path: str, query: dict | None = None, body: Any = None,
                 content_type: str = "application/json", timeout: float | None = None, stream: bool = False):
        if method != "GET" and self.fence is not None:
            self.fence()
        query = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.api.configuration.host.rstrip("/") + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": f"{self.field_manager}/ftops"}
        if body is not None:
            headers["Content-Type"] = content_type
        self.api.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        for key, value in (self.api.default_headers or {}).items():
            headers.setdefault(key, value)
        # Bodies stay dicts: the client serialises JSON (and apply YAML, as JSON) itself.
        try:
            resp = self.api.call_api(method, url, header_params=headers, body=body,
                                     _request_timeout=timeout or self.request_timeout)
        except Exception as exc:  # urllib3 connection errors: the cluster may come back
            if isinstance(exc, (ApiError, PermanentError)):
                raise
            raise TemporaryError(f"kubernetes API at {self.api.configuration.host} unreachable: {exc}") from exc
        if stream and 200 <= resp.status < 300:
            return resp.response
        data = resp.read()
        if not 200 <= resp.status < 300:
            try:
                status = json.loads(data)
                raise ApiError(resp.status, status.get("reason", ""), status.get("message", data.decode(errors="replace")))
            except (ValueError, AttributeError):
                raise ApiError(resp.status, resp.reason or "", data.decode(errors="replace")) from None
        if path.endswith("/log"):
            return data.decode(errors="replace")
        return json.loads(data) if data else {}

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict:
        return self._request("GET", resource_path(api_version, kind, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None) -> dict:
        return self._request("GET", resource_path(api_version, kind, namespace), {"labelSelector": label_selector})

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str, *, uid: str | None = None,
               propagation: str | None = None) -> None:
        """Delete one object; with `uid`, only that incarnation of it (a precondition: 409 if the
        name now holds another). `propagation`: Background or Foreground for what it owns."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        if propagation is not None:
            options["propagationPolicy"] = propagation
        self._request("DELETE", resource_path(api_version, kind, namespace, name),
                      body=options if len(options) > 2 else None)

    def pod_log(self, namespace: str, pod: str, container: str, tail: int | None = None) -> str:
        """One container's log (its current instance), the last `tail` lines when given."""
        text = self._request("GET", resource_path("v1", "Pod", namespace, pod, "log"),
                             {"container": container, "tailLines": tail})
        return str(text)

    def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str, timeout: float = 10) -> str:
        """GET `path` on a pod's port through the API server's pod proxy (the caller need not be in
        the pod network). ApiError when the pod answers an error or cannot be reached through the
        proxy, TemporaryError when the API server cannot."""
        resp = self._request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/{path.lstrip('/')}",
                             stream=True, timeout=timeout)
        try:
            return resp.read().decode(errors="replace")
        finally:
            resp.release_conn()

    # -- apply

    def apply(self, manifest: dict, run_id: str | None = None) -> dict:
        """Server-side apply one manifest. A 409 (fields owned by another manager) or 422 on an
        immutable field re-reads the object: ours (same run) is accepted as it is."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        try:
            return self._request("PATCH", path, {"fieldManager": self.field_manager}, manifest,
                                 "application/apply-patch+yaml")
        except ApiError as err:
            if err.code == 404 and "namespaces" in err.message:
                raise PermanentError(
                    f"namespace '{meta.get('namespace')}' does not exist: the operator creates tenant namespaces "
                    f"(tenancy in the operator config); {err.message}") from None
            if err.code not in (409, 422):
                if err.code >= 500 or err.code == 429:
                    raise TemporaryError(f"applying {manifest['kind']}/{meta['name']}: {err}") from None
                raise PermanentError(f"applying {manifest['kind']}/{meta['name']}: {err}") from None
            current = self._request("GET", path)
            theirs = ((current.get("metadata") or {}).get("labels") or {}).get(RUN_LABEL)
            ours = (meta.get("labels") or {}).get(RUN_LABEL)
            if ours is not None and theirs == ours:
                return current
            raise PermanentError(
                f"{manifest['kind']}/{meta['name']} in {meta.get('namespace')} exists and belongs to run "
                f"'{theirs}', not '{ours}' ({err.reason}): ftops will not overwrite it") from None

    def manifests(self, run: Run, inputs: "tuple[str | None, ModelSource | None]" = (None, None)) -> builtins.list[dict]:
        """The run's workload and what it needs (ConfigMap, PVC, Service), rendered from its spec;
        `inputs` is (published split URI, base model source) when they were published."""
        from controller.catalog import load_operator_config
        from controller.render import RenderInput, render

        operator = self.operator or load_operator_config(None)
        return render(RenderInput(finetune=run.finetune, run_id=run.run_id, data_md5=run.lineage.data_md5,
                                  git_commit=run.lineage.git_commit, operator=operator, run_config=run.config,
                                  data_uri=inputs[0], model=inputs[1]))

    def publish_inputs(self, run: Run) -> "tuple[str | None, ModelSource | None]":
        """The run's split (and a base model from the repository) as bundles in the store."""
        if self.store is None:
            return None, None
        from pathlib import Path

        from controller.artifacts import publish, publish_dir
        from controller.render import ModelSource

        data = publish(self.store, {"train.jsonl": Path(run.config.data.train), "test.jsonl": Path(run.config.data.test)})
        bm = run.finetune.spec.base_model
        model = ModelSource(publish_dir(self.store, Path(run.config.base_model.uri))) if bm.kind == "path" else \
            ModelSource(bm.uri, bm.revision)
        return data, model

    def publish_serving_inputs(self, request: "DeployRequest") -> "tuple[str | None, ModelSource | None]":
        """For a serving rollout: the corpus version the gate passed and the base model (a
        repository path is published like training's), and the namespace's model cache claim."""
        from pathlib import Path

        from controller.catalog import load_operator_config
        from controller.render import ModelSource, owner_namespace

        operator = self.operator or load_operator_config(None)
        self.ensure_model_cache(owner_namespace(request.finetune, operator))
        if self.store is None:
            return None, None
        from controller.artifacts import publish_dir

        corpus = publish_dir(self.store, Path(request.corpus_dir)) if request.corpus_dir else None
        bm = request.finetune.spec.base_model
        if bm.kind == "path" and Path(request.base_model).is_dir():
            return corpus, ModelSource(publish_dir(self.store, Path(request.base_model)))
        return corpus, ModelSource(bm.uri, bm.revision)

    def ensure_model_cache(self, namespace: str) -> None:
        """The namespace's model cache claim (shared by every run there; owned by none)."""
        from controller.catalog import load_operator_config
        from controller.render import model_cache_claim

        self.apply(model_cache_claim(namespace, self.operator or load_operator_config(None)))

    def submit(self, run: Run) -> RunState:
        """Start the run unless its workload lives: a running, pending or preempted one is left to
        its controller (nothing new is created); a failed one (not a config error) is deleted and
        created again, resuming from its checkpoint claim. Fenced first, even where it would send
        nothing: a follower's answer about a run it does not own must not reach its reconciler."""
        if self.fence is not None:
            self.fence()
        existing = self.find(run.run_id)
        if existing is not None:
            state = self._state_of(existing)
            if not (state.phase is Phase.FAILED and state.reason != RunReason.CONFIG_ERROR):
                self.states[run.run_id] = state
                return state
            self._delete(existing, run.run_id)
        manifests = self.manifests(run, self.publish_inputs(run))
        workloads = [m for m in manifests if (m.get("apiVersion"), m.get("kind")) in WORKLOADS]
        if len(workloads) != 1:
            raise PermanentError(f"run {run.run_id}: expected exactly one Job/JobSet/TrainJob among the manifests, "
                                 f"got {len(workloads)}")
        label = run_label(run.run_id)
        for m in manifests:
            if ((m.get("metadata") or {}).get("labels") or {}).get(RUN_LABEL) != label:
                raise PermanentError(f"{m.get('kind')}/{m['metadata'].get('name')} is not labelled with run {run.run_id}")
        workload = workloads[0]
        others = [m for m in manifests if m is not workload]
        self.ensure_model_cache(workload["metadata"]["namespace"])
        # The workload first: its uid makes it the owner of the run's ConfigMap and Service, so
        # deleting it (cancel, ttlSecondsAfterFinished) garbage-collects them. The checkpoint
        # claim is not owned: it outlives a failed attempt (a retry resumes) and goes with cancel.
        # Its pods wait for the ConfigMap and PVC that follow (the kubelet retries the mounts).
        applied = self.apply(workload)
        owner = {"apiVersion": workload["apiVersion"], "kind": workload["kind"], "name": applied["metadata"]["name"],
                 "uid": applied["metadata"]["uid"], "blockOwnerDeletion": False, "controller": False}
        for m in others:
            owned = json.loads(json.dumps(m))
            if owned["kind"] != "PersistentVolumeClaim":
                owned["metadata"]["ownerReferences"] = [owner]
            self.apply(owned)
        state = self._state_of(applied)
        self.states[run.run_id] = state
        return state

    # -- observe

    def _pods_of(self, workload: dict) -> builtins.list[dict]:
        meta = workload["metadata"]
        label = (meta.get("labels") or {}).get(RUN_LABEL)
        if not label:
            return []
        return self.list("v1", "Pod", meta.get("namespace"), f"{RUN_LABEL}={label},{L.ROLE}=trainer")["items"]

    def _state_of(self, workload: dict) -> RunState:
        probe = workload_state(workload)
        if probe.phase in (Phase.PENDING, Phase.RUNNING) and workload.get("kind") == "Job":
            return workload_state(workload, self._pods_of(workload))
        return probe

    def _namespaces(self) -> builtins.list[str | None]:
        """The namespaces to look in; [None] is every namespace (one cluster-wide request)."""
        return builtins.list(self.namespaces) if self.namespaces else [None]

    def _served_kind(self, api_version: str, kind: str) -> bool:
        return self._served.get((api_version, kind), True)

    def find(self, run_id: str) -> dict | None:
        """The run's training workload, looked up by its run-id label."""
        selector = f"{RUN_LABEL}={run_label(run_id)},{TRAINING_SELECTOR}"
        for api_version, kind in self.workloads:
            if not self._served_kind(api_version, kind):
                continue
            for namespace in self._namespaces():
                try:
                    items = self.list(api_version, kind, namespace, selector)["items"]
                except ApiError as err:
                    if err.code == 404:  # the CRD is not installed in this cluster
                        self._served[(api_version, kind)] = False
                        break
                    if err.code == 403:
                        raise PermanentError(
                            f"listing {kind}s: {err.message}; the operator selected trainingFlavor "
                            f"'{self._flavor()}': give the controller's ServiceAccount access to {kind}s "
                            "(the chart's RBAC does for the flavour it installs)") from None
                    raise TemporaryError(f"listing {kind}s: {err}") from None
                for item in items:
                    annotated = (item["metadata"].get("annotations") or {}).get(RUN_LABEL, run_id)
                    if annotated == run_id:
                        item.setdefault("apiVersion", api_version)
                        item.setdefault("kind", kind)
                        return item
        return None

    def status(self, run_id: str) -> RunState:
        workload = self.find(run_id)
        if workload is None:
            raise RunNotFound(f"run {run_id}: no {' or '.join(k for _, k in self.workloads)} carries its label")
        state = self._state_of(workload)
        self.states[run_id] = state
        return state

    def _flavor(self) -> str:
        return self.operator.cluster.training_flavor if self.operator is not None else "job"

    def _delete(self, workload: dict, run_id: str) -> None:
        """Delete one workload object (its pods, ConfigMap and Service go with it). Preconditions
        pin the object we read; a 409 means it changed meanwhile, so re-read and try again."""
        for _ in range(5):
            meta = workload["metadata"]
            path = resource_path(workload["apiVersion"], workload["kind"], meta.get("namespace"), meta["name"])
            options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
                       "preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}}
            try:
                self._request("DELETE", path, body=options)
                return
            except ApiError as err:
                if err.code == 404:
                    return
                if err.code != 409:
                    raise TemporaryError(f"deleting {workload['kind']} of run {run_id}: {err}") from None
            again = self.find(run_id)  # changed since we read it: re-read
            if again is None:
                return
            workload = again
        raise TemporaryError(f"deleting run {run_id}: the workload kept changing; will retry")

    def cancel(self, run_id: str) -> RunState:
        """Delete the workload and the run's checkpoint claim."""
        workload = self.find(run_id)
        if workload is not None:
            self._delete(workload, run_id)
            namespace = workload["metadata"].get("namespace")
            claims = self.list("v1", "PersistentVolumeClaim", namespace, f"{RUN_LABEL}={run_label(run_id)}")["items"]
            for claim in claims:
                try:
                    self.delete("v1", "PersistentVolumeClaim", namespace, claim["metadata"]["name"])
                except ApiError as err:
                    if err.code != 404:
                        raise TemporaryError(f"deleting the checkpoints of run {run_id}: {err}") from None
        state = RunState(run_id, Phase.FAILED, RunReason.CANCELLED, "cancelled by ftops")
        self.states[run_id] = state
        return state

    def logs(self, run_id: str, tail: int | None = None) -> str:
        workload = self.find(run_id)
        if workload is None:
            raise RunNotFound(f"run {run_id}: not found")
        pods = sorted(self._pods_of(workload), key=lambda p: p["metadata"]["name"])
        chunks = []
        for pod in pods:
            text = self.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"], "trainer", tail)
            chunks.append(text if len(pods) == 1 else f"==> {pod['metadata']['name']} <==\n{text}")
        return tail_lines("".join(chunks), tail) if len(pods) == 1 else "".join(chunks)

    # -- watch

    def _relist(self, w: _Watched, namespace: str | None) -> builtins.list[RunState]:
        listed = self.list(w.api_version, w.kind, namespace, f"{MANAGED_SELECTOR},{TRAINING_SELECTOR}")
        w.rv = listed["metadata"]["resourceVersion"]
        changes = []
        for item in listed["items"]:
            item.setdefault("apiVersion", w.api_version)
            item.setdefault("kind", w.kind)
            changes += self._observe(item)
        return changes

    def _observe(self, obj: dict, deleted: bool = False) -> builtins.list[RunState]:
        run_id = (obj["metadata"].get("annotations") or {}).get(RUN_LABEL)
        if not run_id or deleted:
            return []
        state = self._state_of(obj)
        with self._lock:
            if self.states.get(run_id) != state:
                self.states[run_id] = state
                return [state]
        return []

    def poll(self, timeout_seconds: int = 5) -> builtins.list[RunState]:
        """One watch round per workload kind, concurrently (a quiet JobSet watch must not delay
        a Job's events): from the last resourceVersion seen (listing first when there is none),
        until the server ends the stream or `timeout_seconds` pass. On 410 Gone the history we
        needed is gone: relist and carry on from the list. Returns the state changes seen."""
        namespace = self.namespaces[0] if self.namespaces and len(self.namespaces) == 1 else None
        watched = [w for w in self._watched if self._served_kind(w.api_version, w.kind)]
        results: dict[int, builtins.list[RunState]] = {}
        errors: builtins.list[Exception] = []

        def one(i: int, w: _Watched) -> None:
            changes: builtins.list[RunState] = []
            try:
                if w.rv is None:
                    changes += self._relist(w, namespace)
                if self._watch_once(w, namespace, timeout_seconds, changes):
                    with self._lock:
                        self.relists += 1
                    changes += self._relist(w, namespace)
            except ApiError as err:
                if err.code == 404:
                    self._served[(w.api_version, w.kind)] = False
                else:
                    errors.append(TemporaryError(f"watching {w.kind}s: {err}"))
            except Exception as exc:  # surfaced below, in the caller's thread
                errors.append(exc)
            results[i] = changes

        threads = [threading.Thread(target=one, args=(i, w), daemon=True) for i, w in enumerate(watched)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return [state for i in sorted(results) for state in results[i]]

    def _watch_once(self, w: _Watched, namespace: str | None, timeout_seconds: int, changes: builtins.list[RunState]) -> bool:
        """Stream events into `changes`. True when the server answered 410 Gone."""
        path = resource_path(w.api_version, w.kind, namespace)
        resp = self._request("GET", path, {"watch": "1", "resourceVersion": w.rv,
                                           "labelSelector": f"{MANAGED_SELECTOR},{TRAINING_SELECTOR}",
                                           "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "true"},
                             timeout=timeout_seconds + 10, stream=True)
        for event in watch_events(resp):
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                if obj.get("code") == 410:
                    w.rv = None
                    return True
                raise ApiError(obj.get("code", 500), obj.get("reason", ""), obj.get("message", ""))
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                w.rv = rv
            if event.get("type") == "BOOKMARK":
                continue
            obj.setdefault("apiVersion", w.api_version)
            obj.setdefault("kind", w.kind)
            changes += self._observe(obj, deleted=event.get("type") == "DELETED")
        return False

    def watch(self, on_change: Callable[[RunState], None], stop: threading.Event, timeout_seconds: int = 30) -> None:
        """Call `on_change` for every run state change until `stop` is set (run it in a thread)."""
        while not stop.is_set():
            try:
                for state in self.poll(timeout_seconds):
                    on_change(state)
            except TemporaryError:
                stop.wait(2)
