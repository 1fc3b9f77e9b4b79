"""What a step returns: one closed type, and the ledger records it asks to be written.

A step never writes status, backoff state or the ledger itself. It returns one of:

- `Done`: its condition is True; the chain goes on.
- `Waiting`: not yet (a run is training, a rollout is in progress); look again `after` seconds.
- `Stalled`: retrying cannot help until the spec's inputs change (bad data, a failed gate).
- `Retry`: something temporary failed; retried with capped exponential backoff.

Each carries the ledger records the step observed (a run submitted, a report written), so the
facts are recorded even when the chain stops there. controller.reconcile.outcome is the one
place that turns results (and exceptions) into conditions, backoff, ledger records and requeue.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from controller.seams.json import JsonObject
from controller.status import Reason


@dataclass(frozen=True)
class LedgerRecord:
    """One fact for the audit ledger, written once per `key` (idempotent across crashes)."""

    kind: str
    run_id: str | None
    payload: JsonObject
    key: str


@dataclass(frozen=True)
class Done:
    message: str = ""
    reason: str = Reason.SUCCEEDED
    records: tuple[LedgerRecord, ...] = field(default=())


@dataclass(frozen=True)
class Waiting:
    after: float
    reason: str
    message: str
    records: tuple[LedgerRecord, ...] = field(default=())


@dataclass(frozen=True)
class Stalled:
    reason: str
    message: str
    records: tuple[LedgerRecord, ...] = field(default=())


@dataclass(frozen=True)
class Retry:
    message: str
    reason: str
    """The step condition's reason while it waits to be retried (e.g. TrainingFailed)."""
    after: float | None = None
    """A wait the step knows (None: the controller's exponential backoff)."""
    records: tuple[LedgerRecord, ...] = field(default=())


StepResult = Union[Done, Waiting, Stalled, Retry]
