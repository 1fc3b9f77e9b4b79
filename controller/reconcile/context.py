"""What one spec's steps share during one pass (`SpecContext`) and what they act through
(`Deps`). Every field is typed: a step reads the facts earlier steps established (prepared
data, the run's manifest, the evaluation report, what serves) from here, never from a dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from controller.catalog import OperatorConfig
from controller.clock import Clock
from controller.desired import Decision, Identities
from controller.home import Home
from controller.seams import ArtifactStore, Backend, Deployer, Evaluator, JsonObject, Lineage, Notifier, RunManifest, Serving
from controller.source import CommitInfo, SpecAtRev
from controller.spec.finetune import FineTune
from controller.status import SpecStatus

if TYPE_CHECKING:
    from controller.data.pipeline import DataReady
    from controller.data.prepare import Prepared
    from controller.data.review import ReviewStatus
    from controller.ledger import Ledger
    from controller.reconcile.config import ControllerConfig


@dataclass(frozen=True)
class PreparedData:
    """The data step's outcome: the prepared split, the expert review and DataReady."""

    prepared: "Prepared"
    review: "ReviewStatus"
    ready: "DataReady"


@dataclass(frozen=True)
class EvalReport:
    """The evaluation report as read back from the store (its sha256 is what the gate vouches for)."""

    uri: str
    data: JsonObject
    sha256: str


class DataPreparer(Protocol):
    """Pull the spec's dataset at the commit, clean and split it, read its reviews."""

    def prepare(self, commit: str, finetune: FineTune) -> PreparedData:
        ...


class RepoFiles(Protocol):
    """The repository's files at a commit, materialised on this machine (git only, no DVC)."""

    def checkout(self, commit: str) -> Path:
        """Every file of the commit (paths a spec names: bias sets, schemas, suites)."""
        ...

    def folder(self, commit: str, rel: str, field: str) -> Path:
        """One folder of the commit, content-addressed by its tree hash; PermanentError naming
        `field` when `rel` is not a folder there."""
        ...

    def corpus_version(self, commit: str, rel: str) -> str | None:
        """The version of a corpus folder: its .dvc md5 or its git tree hash."""
        ...


@dataclass(frozen=True)
class Deps:
    """Everything a step acts through. The reconciler builds it once; tests pass fakes."""

    config: "ControllerConfig"
    operator: OperatorConfig
    home: Home
    ledger: "Ledger"
    backend: Backend
    evaluator: Evaluator
    store: ArtifactStore
    deployer: Deployer | None
    repo: RepoFiles
    data: DataPreparer
    clock: Clock
    template_version: str
    notifier: Notifier | None = None
    """Where the end of a pass reports each spec's outcome (controller.reconcile.notify); never a step."""


@dataclass
class SpecContext:
    """One spec in one pass. The identity fields are fixed at the start; the fact fields are
    filled by the steps that establish them."""

    state: SpecAtRev
    spec: FineTune
    commit: CommitInfo
    want: Identities
    decision: Decision
    corpus_version: str | None
    previous: SpecStatus | None
    run_uri: str
    # facts, in the order the steps establish them
    data: PreparedData | None = None
    manifest: RunManifest | None = None
    report: EvalReport | None = None
    serving: Serving | None = None
    """What serves the spec now (observed first, updated by the deploy step)."""

    @property
    def name(self) -> str:
        return self.spec.metadata.name

    @property
    def run_id(self) -> str:
        assert self.want.run is not None
        return self.want.run

    @property
    def eval_id(self) -> str:
        assert self.want.evaluation is not None
        return self.want.evaluation

    @property
    def serving_id(self) -> str:
        assert self.want.serving is not None
        return self.want.serving

    @property
    def lineage(self) -> Lineage:
        return Lineage(self.state.data.md5 if self.state.data and self.state.data.md5 else "", self.commit.sha)

    def prepared(self) -> "PreparedData":
        """The data step's outcome (the chain runs it before any step that asks)."""
        assert self.data is not None, "the data step runs before this one"
        return self.data
