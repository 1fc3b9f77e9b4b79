"""Controller homes for the CLI tests, made by the real reconciler.

`build_home` runs `controller.reconcile.Reconciler` over a real git repository with the fakes of
tests/fakes standing for what would train, evaluate and serve (the reading commands only read
what the reconciler wrote: status files, the ledger, the artifact store), so no model is trained:
the first run passes its gate and serves, a second run (a retraining commit) fails its gate
metric by metric while the first keeps serving. A second spec waits for its expert review.

With `kube` (a KubernetesBackend on the fake API server) the training Jobs are real objects there,
and `sync` (ClusterSync) mirrors each pass into FineTune custom resources and their Events.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # fakes, fakekube

from fakes import FakeBackend, FakeClock, FakeData, FakeDeployer, FakeEvaluator, FakeRepoFiles, passing_report  # noqa: E402

from controller.artifacts import open_store  # noqa: E402
from controller.reconcile import ControllerConfig, Reconciler  # noqa: E402
from controller.seams import Phase, RunReason  # noqa: E402
from controller.source import GitSource, corpus_version  # noqa: E402

SPEC = """\
apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {{name: {name}, owner: support}}
spec:
  baseModel: {{uri: hf://org/base, revision: 0e9e39f249a16976918f6564b8830bc894c89659}}
  dataset: {{path: data/tickets.jsonl}}
  method: {{type: lora, r: 8}}
  training: {{epochs: {epochs}}}
  hardware: {{gpuType: a100-80gb}}
  evaluation:
    task: {{metric: exact_match, min: 0.9}}
    format: {{jsonSchema: {{type: object, required: [label]}}, min: 1.0}}
  serving: {{corpus: corpora/kb, retriever: bm25, topK: 2}}
"""
LOSSES = [2.31, 1.87, 1.42, 1.15, 0.98, 0.91, 0.86]


class ReviewAwareData(FakeData):
    """FakeData, except that specs named in `unreviewed` wait for their expert review."""

    unreviewed: set[str]

    def prepare(self, commit: str, finetune: Any) -> Any:
        from controller.data.pipeline import DataReady
        from controller.status import Reason

        prepared = super().prepare(commit, finetune)
        if finetune.metadata.name not in self.unreviewed:
            return prepared
        from controller.data.review import ReviewStatus
        from controller.reconcile.context import PreparedData

        review = ReviewStatus(examples=400, sample=40, reviewed=12, approved=12, sample_fraction=0.1, min_approval=0.95)
        return PreparedData(prepared.prepared, review, DataReady(False, Reason.REVIEW_PENDING, review.message))


@dataclass
class Built:
    root: Path
    home: Path
    repo: Any
    reconciler: Reconciler
    backend: Any
    evaluator: FakeEvaluator
    deployer: FakeDeployer
    first_run: str = ""
    second_run: str = ""
    namespace: str = "ftops-support"
    extra: dict = field(default_factory=dict)


def write_run(store: Any, run_uri: str, run_id: str) -> None:
    """What a trainer leaves in the store: weights, the per-step metrics, then the manifest."""
    metrics = "".join(json.dumps({"step": 10 * (i + 1), "loss": loss, "learningRate": 2e-4}) + "\n"
                      for i, loss in enumerate(LOSSES))
    files = {"model/adapter_model.safetensors": b"weights " + run_id.encode(), "metrics.jsonl": metrics.encode()}
    for rel, data in files.items():
        store.put(store.join(run_uri, rel), data)
    manifest = {"apiVersion": "ftops.dev/v1alpha1", "kind": "RunManifest", "runId": run_id,
                "files": {rel: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for rel, d in files.items()},
                "provenance": {"runId": run_id}}
    store.put(store.join(run_uri, "manifest.json"), json.dumps(manifest, sort_keys=True).encode())


def build_home(root: Path, git_repo_cls: Any, kube: Any = None, kubelet: Any = None, sync: Any = None) -> Built:
    repo = git_repo_cls(root / "repo")
    repo.write("specs/triage.yaml", SPEC.format(name="triage", epochs=1))
    repo.write("specs/intake.yaml", SPEC.format(name="intake", epochs=1))
    repo.write("data/tickets.jsonl", '{"messages": []}\n' * 3)
    repo.write("corpora/kb/refunds.md", "Refunds take 5 business days.\n")
    repo.commit("triage and intake bots")

    home = root / "home"
    store = open_store(str(home / "store"))
    backend = kube if kube is not None else FakeBackend()
    evaluator = FakeEvaluator(store)  # type: ignore[arg-type]
    deployer = FakeDeployer(store)  # type: ignore[arg-type]
    data = ReviewAwareData(root / "data")
    data.unreviewed = {"intake"}
    files = FakeRepoFiles(root / "files")
    with GitSource(str(repo.root)) as source:  # the corpus version git has, as the real repo files would say
        files.corpus_versions["corpora/kb"] = corpus_version(source, source.resolve("main"), "corpora/kb") or ""
    reconciler = Reconciler(ControllerConfig(repo=str(repo.root), home=home), backend, deployer=deployer,
                            evaluator=evaluator, store=store, data=data, repo=files, clock=FakeClock())
    built = Built(root, home, repo, reconciler, backend, evaluator, deployer)

    def reconcile() -> Any:
        result = reconciler.reconcile_once()
        if sync is not None:
            sync(reconciler, result)
        return result.statuses["triage"]

    def train_and_finish(status: Any) -> None:
        run = status.run_id
        write_run(store, store.run_uri("triage", run), run)
        if kube is None:
            backend.set(run, Phase.SUCCEEDED, RunReason.COMPLETE)
            backend.log[run] = "".join(f"step {10 * (i + 1)} loss {loss}\n" for i, loss in enumerate(LOSSES))
        else:
            job = kube.find(run)
            ns = job["metadata"]["namespace"]
            kubelet.start(ns, job["metadata"]["name"],
                          log="".join(f"step {10 * (i + 1)} loss {loss}\n" for i, loss in enumerate(LOSSES)))
            kubelet.succeed(ns, job["metadata"]["name"])
            built.namespace = ns

    first = reconcile()
    assert first.condition("Trained").reason == "Pending", first.to_dict()
    train_and_finish(first)
    reconcile()
    request = evaluator.submitted[-1]
    evaluator.complete(request, _report(request, **{"task.exact_match": 0.94}))
    ready = reconcile()
    assert ready.phase == "Ready", ready.to_dict()
    built.first_run = ready.run_id

    repo.write("specs/triage.yaml", SPEC.format(name="triage", epochs=2))
    repo.commit("train triage for two epochs")
    second = reconcile()
    train_and_finish(second)
    reconcile()
    request = evaluator.submitted[-1]
    evaluator.complete(request, _report(request, **{"task.exact_match": 0.41}))
    failed = reconcile()
    assert failed.condition("GatePassed").reason == "GateFailed", failed.to_dict()
    assert failed.serving_run_id == built.first_run
    built.second_run = failed.run_id
    return built


def _report(request: Any, **metrics: float) -> dict:
    report = passing_report(request.run_id, request.finetune, **metrics)
    report["specName"] = request.finetune.metadata.name
    return report
