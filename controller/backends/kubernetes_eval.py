"""The Evaluator seam on a cluster: one Kubernetes Job per evaluation id (GPU, the trainer's
image, the run's inputs), rendered from templates (controller.render.evaluation).

Where an evaluation stands is read from two places, the store first: the report and the marker
naming the evaluation id (`<run>/eval/ftops-eval.json`), which the evaluation Job puts into the
artifact store last, mean it is done, even after the Job was garbage-collected. Otherwise the
Job's conditions say it (controller.backends.kubernetes.job_state). `submit` publishes the
inputs (the split, the repository's files at the commit, a repository base model) as
content-addressed bundles and applies the ConfigMap and the Job; it creates nothing while the
Job lives, recreates one that failed for a retriable reason, and never one that failed on a
config error."""
from __future__ import annotations

import json
from pathlib import Path

from controller.backends.kubernetes import ApiError, KubernetesBackend, job_state
from controller.backends.logs import tail_lines
from controller.catalog import OperatorConfig
from controller.errors import TemporaryError
from controller.seams import ArtifactStore, EvalRequest, EvalState, Phase, RunReason

MARKER = "eval/ftops-eval.json"
REPORT = "eval/report.json"


class KubernetesEvaluator:
    name = "kubernetes"

    def __init__(self, kube: KubernetesBackend, store: ArtifactStore, operator: OperatorConfig) -> None:
        self.kube = kube
        self.store = store
        self.operator = operator

    # -- where things are

    def _namespace(self, request: EvalRequest) -> str:
        from controller.render import owner_namespace

        return owner_namespace(request.finetune, self.operator)

    def _names(self, request: EvalRequest) -> dict[str, str]:
        from controller.render import evaluation_names

        return evaluation_names(request.finetune.name, request.eval_id)

    def _job(self, request: EvalRequest) -> dict | None:
        try:
            return self.kube.get("batch/v1", "Job", self._namespace(request), self._names(request)["job"])
        except ApiError as err:
            if err.code == 404:
                return None
            raise TemporaryError(f"reading the evaluation Job of run {request.run_id}: {err}") from None

    def _pods(self, request: EvalRequest) -> list[dict]:
        selector = f"batch.kubernetes.io/job-name={self._names(request)['job']}"
        return list(self.kube.list("v1", "Pod", self._namespace(request), selector)["items"])

    def _finished(self, request: EvalRequest) -> EvalState | None:
        run_uri = request.config.run_uri
        try:
            marker = json.loads(self.store.get(self.store.join(run_uri, MARKER)))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # half a marker is no marker: the Job says where it stands
        report = self.store.join(run_uri, REPORT)
        if isinstance(marker, dict) and marker.get("evalId") == request.eval_id and self.store.exists(report):
            return EvalState(request.eval_id, Phase.SUCCEEDED, RunReason.COMPLETE, "", report)
        return None

    # -- the seam

    def status(self, request: EvalRequest) -> EvalState | None:
        finished = self._finished(request)
        if finished is not None:
            return finished
        job = self._job(request)
        if job is None:
            return None
        state = job_state(job, self._pods(request))
        if state.phase is Phase.SUCCEEDED:  # exited 0, but the store has no report for this evaluation id
            return EvalState(request.eval_id, Phase.FAILED, RunReason.CONFIG_ERROR,
                             f"the evaluation Job {job['metadata']['name']} completed without a report for "
                             f"{request.eval_id} in {request.config.run_uri}")
        if state.phase is Phase.FAILED:
            reason = RunReason.CONFIG_ERROR if state.reason == RunReason.CONFIG_ERROR else RunReason.TEMPORARY_FAILURE
            return EvalState(request.eval_id, Phase.FAILED, reason, f"{state.reason}: {state.message}")
        return EvalState(request.eval_id, state.phase, state.reason, state.message)

    def submit(self, request: EvalRequest) -> EvalState:
        state = self.status(request)
        if state is not None and not (state.phase is Phase.FAILED and state.reason != RunReason.CONFIG_ERROR):
            return state  # running, queued, preempted (its Job recreates the pod), finished, or a config error
        if state is not None:
            self._delete(request)
        manifests = self.manifests(request)
        namespace = self._namespace(request)
        self.kube.ensure_model_cache(namespace)
        job = next(m for m in manifests if m["kind"] == "Job")
        applied = self.kube.apply(job)
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": applied["metadata"]["name"],
                 "uid": applied["metadata"]["uid"], "blockOwnerDeletion": False, "controller": False}
        for m in manifests:
            if m is not job:
                owned = json.loads(json.dumps(m))
                owned["metadata"]["ownerReferences"] = [owner]
                self.kube.apply(owned)
        return EvalState(request.eval_id, Phase.PENDING, RunReason.STARTING, f"evaluation Job {applied['metadata']['name']} created")

    def manifests(self, request: EvalRequest) -> list[dict]:
        """Publish the evaluation's inputs and render its ConfigMap and Job."""
        from controller.artifacts import publish, publish_dir
        from controller.render import EvaluationInput, ModelSource, render_evaluation

        cfg = request.config
        files = {"test.jsonl": Path(cfg.data.test)}
        if cfg.data.train:
            files["train.jsonl"] = Path(cfg.data.train)
        data_uri = publish(self.store, files)
        repo_uri = publish_dir(self.store, Path(cfg.repo_root))
        bm = request.finetune.spec.base_model
        # A repository base model: the same content training published, so the same bundle and the
        # same cache entry as the run's (content-addressed), never a second download.
        model = ModelSource(publish_dir(self.store, Path(cfg.repo_root) / bm.uri)) if bm.kind == "path" else \
            ModelSource(bm.uri, bm.revision)
        serving = getattr(cfg, "serving", None)
        corpus = publish_dir(self.store, Path(serving.corpus)) if serving is not None and serving.corpus else None
        return render_evaluation(EvaluationInput(
            finetune=request.finetune, config=cfg, data_md5=request.lineage.data_md5, git_commit=request.lineage.git_commit,
            operator=self.operator, data_uri=data_uri, repo_uri=repo_uri, model=model, corpus_uri=corpus))

    def _delete(self, request: EvalRequest) -> None:
        job = self._job(request)
        if job is None:
            return
        meta = job["metadata"]
        try:
            self.kube.delete("batch/v1", "Job", meta["namespace"], meta["name"], uid=meta["uid"], propagation="Background")
        except ApiError as err:
            if err.code not in (404, 409):
                raise TemporaryError(f"deleting the evaluation Job {meta['name']}: {err}") from None

    def cancel(self, request: EvalRequest) -> EvalState:
        state = self.status(request)
        if state is None:
            return EvalState(request.eval_id, Phase.FAILED, RunReason.CANCELLED, "no such evaluation")
        if state.finished:
            return state
        self._delete(request)
        return EvalState(request.eval_id, Phase.FAILED, RunReason.CANCELLED, "cancelled by ftops")

    def logs(self, request: EvalRequest, tail: int | None = None) -> str:
        chunks = []
        for pod in sorted(self._pods(request), key=lambda p: p["metadata"]["name"]):
            meta = pod["metadata"]
            chunks.append(self.kube.pod_log(meta["namespace"], meta["name"], "evaluator", tail))
        return tail_lines("".join(chunks), tail)


__all__ = ["KubernetesEvaluator"]
