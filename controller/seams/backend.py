"""The Backend seam: how the reconciler starts, observes, stops and reads a training run,
whatever runs it (a local subprocess, a Kubernetes Job). The reconciler knows nothing else.

Run states are deliberately few, because each one drives a different reconciler decision:
pending (wait), running (wait), succeeded (evaluate), failed (stall or retry, per reason),
preempted (wait; `submit` again resumes it from its checkpoint where the backend needs that).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from controller.errors import PermanentError
from controller.runconfig import RunConfig
from controller.seams.json import JsonObject
from controller.spec.finetune import FineTune


class Phase(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PREEMPTED = "preempted"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class RunReason:
    """CamelCase reasons a backend gives for a run's state (DESIGN: reasons are constants)."""

    STARTING = "Starting"
    RUNNING = "Running"
    COMPLETE = "Complete"
    PREEMPTED = "Preempted"
    CONFIG_ERROR = "ConfigError"
    """Retrying cannot help: the trainer refused its input (the dedicated exit code)."""
    TEMPORARY_FAILURE = "TemporaryFailure"
    PROVIDER_FAILED = "ProviderFailed"
    """A managed fine-tuning job failed at its provider: the provider's reason is the message."""
    CANCELLED = "Cancelled"
    DEADLINE = "DeadlineExceeded"
    BACKOFF = "BackoffLimitExceeded"
    LOST = "ProcessLost"
    EXIT = "NonZeroExit"


PERMANENT_REASONS = frozenset({RunReason.CONFIG_ERROR, RunReason.PROVIDER_FAILED})
"""Failures that a new attempt of the same run cannot fix: the spec stalls until it changes."""


@dataclass(frozen=True)
class RunState:
    """What a backend knows about one run. `reason` is a RunReason constant, `message` prose."""

    run_id: str
    phase: Phase
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    handles: JsonObject = field(default_factory=dict)
    """What the backend knows the run by outside ftops (a provider's job and file ids), recorded
    in the ledger with the submission so an auditor can find it there."""

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    def to_dict(self) -> JsonObject:
        return {"runId": self.run_id, "phase": self.phase.value, "reason": self.reason, "message": self.message,
                "exitCode": self.exit_code, "startedAt": self.started_at, "finishedAt": self.finished_at,
                "handles": dict(self.handles)}


@dataclass(frozen=True)
class Lineage:
    """Where a run came from, stamped on everything made for it (labels, ledger, manifests)."""

    data_md5: str
    git_commit: str


@dataclass(frozen=True)
class Run:
    """One training run as handed to a backend: the run.json content (what the trainer reads),
    the spec it is for (a cluster backend renders its workload from it: GPUs, node pools,
    tenancy) and its lineage."""

    config: RunConfig
    finetune: FineTune
    lineage: Lineage

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def spec_name(self) -> str:
        return self.config.spec_name


class RunNotFound(PermanentError, LookupError):
    """The backend has no record of this run id (never submitted, or cleaned up)."""


@runtime_checkable
class Backend(Protocol):
    name: str

    def submit(self, run: Run) -> RunState:
        """Ensure the run exists: start it unless it does (same run id: nothing new), and start
        a preempted one again where the backend needs that to resume. Returns its state."""
        ...

    def status(self, run_id: str) -> RunState:
        """Current state; raises RunNotFound for an unknown run."""
        ...

    def cancel(self, run_id: str) -> RunState:
        """Stop the run (a no-op for a finished one). Returns the resulting state."""
        ...

    def logs(self, run_id: str, tail: int | None = None) -> str:
        """The trainer's output so far (last `tail` lines when given)."""
        ...
