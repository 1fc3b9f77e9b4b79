"""The Notifier seam: after a merge, the controller tells the forge what became of each spec.

A pull request's author sees the plan before merging; after it, they should see the outcome
without logging in anywhere: a commit status (or check run) per spec on the merged commit,
pending while the chain runs, then success (the run serves, with the gate summary) or failure
(why it stalled, metric by metric when a gate failed). The reconciler sends a `CommitReport`
when a spec's summary changes, from one place at the end of a pass (controller.reconcile.notify);
steps never notify.

Implementations: `GitHubNotifier` (REST commit statuses or check runs) and `WebhookNotifier`
(a signed JSON POST) in controller.notify; `FakeNotifier` in tests/fakes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from controller.seams.json import JsonObject

CommitState = Literal["pending", "success", "failure", "error"]
"""GitHub's commit status states: in progress, the run serves, it stalled, ftops itself failed."""

SUMMARY_LIMIT = 140
"""GitHub caps a commit status description at 140 characters; every summary fits in it."""


@dataclass(frozen=True)
class CommitReport:
    """What one spec's reconciliation of one commit came to, for the forge."""

    spec: str
    commit: str
    """The full sha of the commit the controller reconciled (the merge commit)."""
    state: CommitState
    summary: str
    """One line of at most SUMMARY_LIMIT characters: the phase and, when decided, the gate."""
    details: str
    """Markdown: every condition with its reason and message (a check run's output, a webhook's body)."""
    run_id: str | None = None

    @property
    def context(self) -> str:
        """The status context / check-run name: one per spec, so each spec has its own line."""
        return f"ftops/{self.spec}"

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two reports the same report (a changed summary is a new one)."""
        return (self.commit, self.state, self.summary)

    def to_json(self) -> JsonObject:
        return {"spec": self.spec, "commit": self.commit, "state": self.state, "summary": self.summary,
                "details": self.details, "runId": self.run_id, "context": self.context}

    @classmethod
    def from_json(cls, data: JsonObject) -> "CommitReport":
        state = str(data.get("state", "pending"))
        run_id = data.get("runId")
        return cls(str(data["spec"]), str(data["commit"]), _state(state), str(data.get("summary", "")),
                   str(data.get("details", "")), run_id if isinstance(run_id, str) else None)


def _state(value: str) -> CommitState:
    if value == "success":
        return "success"
    if value == "failure":
        return "failure"
    if value == "error":
        return "error"
    return "pending"


@runtime_checkable
class Notifier(Protocol):
    name: str

    def notify(self, report: CommitReport) -> None:
        """Publish `report` (idempotent: the same report twice shows once). Raises TemporaryError
        when the forge cannot take it now (a 5xx, a timeout, rate limiting: the reconciler
        retries with backoff) and PermanentError when it refuses it (a bad token, an unknown
        repository: retrying cannot help)."""
        ...
