"""The Deployer seam: what serves a spec, and how that changes.

`current / promote / stop / rollback`. The gateway (ours: OpenAI-compatible API, retrieval,
prompt, citations) routes to a model engine: server processes on one machine, Deployments in a
cluster. Promotion is refused unless the exact run's gate passed on the configuration that will
serve; the previous version serves until the new one is ready, and a new one that never gets
ready is rolled back automatically. Every transition comes back as an event for the ledger.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from controller.seams.backend import Lineage
from controller.seams.json import JsonObject
from controller.spec.finetune import FineTune

DeployOutcome = Literal["promoted", "unchanged", "refused", "rolled_back", "failed", "stopped", "rolling_out"]
"""`rolling_out`: a rollout is under way (a new version starting, a canary being analysed); the
call returned without waiting for it, and the next call advances it (`DeployResult.after` says
when to look again). What served before keeps serving meanwhile."""
DeployEvent = JsonObject
"""`{kind, spec, runId, servingRunId, previousRunId, backend, time, reason, message, ...}`;
kinds deploy.refused, deploy.started, deploy.canary_ready, deploy.promoted, deploy.rolled_back,
deploy.stopped. Appended to the spec's deployment history and, by the reconciler, the ledger."""


@dataclass(frozen=True)
class DeployRequest:
    """Serve `run_id` of `finetune` with the spec's serving block."""

    finetune: FineTune
    run_id: str
    run_uri: str
    """The run's place in the artifact store."""
    serving_id: str
    """Identity of what is served (run + serving settings + corpus version)."""
    lineage: Lineage
    base_model: str
    """The base model as the engine loads it: a directory on this machine, or the spec's URI."""
    serving_config_sha256: str
    """Hash of the serving configuration this request serves (controller.identity.serving_config:
    corpus version, retriever, topK, prompt version, generation limits). A deployer promotes only
    a run whose report evaluated this same configuration, and only when it matches the request's
    own serving block and corpus version."""
    base_revision: str | None = None
    corpus_dir: str | None = None
    """The RAG corpus folder at the commit (None when the spec serves without retrieval)."""
    corpus_version: str | None = None
    device: str = "cpu"

    @property
    def spec(self) -> str:
        return self.finetune.metadata.name


@dataclass(frozen=True)
class Serving:
    """What serves a spec now."""

    spec: str
    run_id: str
    healthy: bool
    url: str | None = None
    message: str = ""
    serving_id: str | None = None


@dataclass(frozen=True)
class DeployResult:
    """What a call did. `serving_run_id` is what serves afterwards; `events` go to the ledger."""

    outcome: DeployOutcome
    serving_run_id: str | None
    events: tuple[DeployEvent, ...] = field(default=())
    url: str | None = None
    message: str = ""
    after: float | None = None
    """With `rolling_out`: seconds until the rollout is worth looking at again."""

    def to_dict(self) -> JsonObject:
        return {"outcome": self.outcome, "servingRunId": self.serving_run_id, "url": self.url,
                "message": self.message, "events": list(self.events), "after": self.after}


@runtime_checkable
class Deployer(Protocol):
    name: str

    def current(self, spec: str) -> Serving | None:
        """What serves `spec` now (None when nothing does), and whether it is healthy."""
        ...

    def promote(self, request: DeployRequest) -> DeployResult:
        """Make the request's run serve; `unchanged` when it already does with the same serving id.
        Returns promptly: a rollout that takes time comes back `rolling_out`, and calling again
        with the same request advances it (never blocks on readiness or a canary's analysis)."""
        ...

    def stop(self, spec: str) -> DeployResult:
        """Stop serving `spec` (its spec or serving block was deleted). Nothing else is touched."""
        ...

    def rollback(self, spec: str, to: str | None = None) -> DeployResult:
        """Serve `to` (or the run that served before the current one) again, as it served then
        (from the deployer's own history); it must still pass its gate."""
        ...
