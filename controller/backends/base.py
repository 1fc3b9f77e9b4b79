"""The Backend seam: how the reconciler starts, observes, stops and reads a training run,
whatever runs it (a local subprocess, a Kubernetes Job). The reconciler knows nothing else.

Run states are deliberately few, because each one drives a different reconciler decision:
pending (wait), running (wait), succeeded (evaluate), failed (stall or retry, per reason),
preempted (wait: the run resumes from its checkpoint when capacity returns).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from controller.errors import PermanentError
from controller.runconfig import RunConfig


class Phase(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PREEMPTED = "preempted"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED})

# CamelCase reasons (DESIGN: conditions use CamelCase constants).
REASON_CONFIG_ERROR = "ConfigError"
REASON_CANCELLED = "Cancelled"
REASON_DEADLINE = "DeadlineExceeded"
REASON_BACKOFF = "BackoffLimitExceeded"
REASON_LOST = "ProcessLost"
REASON_EXIT = "NonZeroExit"


@dataclass(frozen=True)
class RunState:
    """What a backend knows about one run. `reason` is a CamelCase constant, `message` prose."""

    run_id: str
    phase: Phase
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {"runId": self.run_id, "phase": self.phase.value, "reason": self.reason, "message": self.message,
                "exitCode": self.exit_code, "startedAt": self.started_at, "finishedAt": self.finished_at}


@dataclass(frozen=True)
class Run:
    """One training run as handed to a backend: the run.json content, plus the rendered
    manifests for backends that apply them (the kubernetes backend; `local` ignores them)."""

    config: RunConfig
    manifests: tuple[dict, ...] = field(default=())

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
        """Start the run unless it already exists (same run id: nothing new). Returns its state."""

    def status(self, run_id: str) -> RunState:
        """Current state; raises RunNotFound for an unknown run."""

    def cancel(self, run_id: str) -> RunState:
        """Stop the run (a no-op for a finished one). Returns the resulting state."""

    def logs(self, run_id: str, tail: int | None = None) -> str:
        """The trainer's output so far (last `tail` lines when given)."""


def tail_lines(text: str, tail: int | None) -> str:
    if tail is None:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[-tail:]) if tail > 0 else ""
