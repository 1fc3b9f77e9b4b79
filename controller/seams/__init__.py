"""The seams: every side effect the reconciler causes goes through one of these typed protocols.

Each has a local implementation (this machine: subprocesses, a directory) and a cluster one
(Kubernetes objects, object storage), and one conformance suite in tests/seams runs the same
cases against every implementation. The reconciler (controller.reconcile) imports only these
types, never an implementation, so each step can be tested alone with the in-memory fakes in
tests/fakes.

- `Backend` (backend.py): submit / status / cancel / logs of a training run.
- `ArtifactStore` (store.py): a run's files by URI, verified against its manifest.
- `Evaluator` (evaluator.py): evaluates a finished run, writes its report to the store.
- `Deployer` (deployer.py): current / promote / stop / rollback of what serves a spec.
- `Notifier` (notifier.py): tells the forge what became of each spec of a merged commit.
"""
from controller.seams.backend import PERMANENT_REASONS, Backend, Lineage, Phase, Run, RunNotFound, RunReason, RunState
from controller.seams.deployer import Deployer, DeployEvent, DeployOutcome, DeployRequest, DeployResult, Serving
from controller.seams.evaluator import EvalRequest, EvalState, Evaluator
from controller.seams.json import JsonObject, JsonValue
from controller.seams.notifier import CommitReport, CommitState, Notifier
from controller.seams.store import ArtifactStore, ManifestError, RunManifest

__all__ = [
    "PERMANENT_REASONS",
    "ArtifactStore",
    "Backend",
    "CommitReport",
    "CommitState",
    "DeployEvent",
    "DeployOutcome",
    "DeployRequest",
    "DeployResult",
    "Deployer",
    "EvalRequest",
    "EvalState",
    "Evaluator",
    "JsonObject",
    "JsonValue",
    "Lineage",
    "ManifestError",
    "Notifier",
    "Phase",
    "Run",
    "RunManifest",
    "RunNotFound",
    "RunReason",
    "RunState",
    "Serving",
]
