"""The one place that turns what a step did into what the world is told (as Flux's
`ComputeReconcileResult` does): conditions, backoff state, ledger records and the requeue time.

`compute` is pure: a step's result (or the exception it raised), the conditions so far, the
spec's persisted retry state and the clock's time in; an `Outcome` out. `apply` performs the
outcome's writes (ledger records, retry state). Steps never write status themselves.

Exceptions are classified here too: a TemporaryError is a `Retry` (capped exponential
backoff), a PermanentError a `Stalled` with the step's failure reason, and anything else a bug:
retried with backoff and reported as InternalError, so one spec's bug never stops the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from controller.errors import PermanentError, TemporaryError
from controller.reconcile.config import ControllerConfig
from controller.reconcile.result import Done, LedgerRecord, Retry, Stalled, StepResult, Waiting
from controller.seams import JsonObject
from controller.status import (
    DEPLOYED,
    STALLED,
    Condition,
    ConditionStatus,
    Reason,
    Step,
    set_condition,
    summarize,
)

STALL_HINT = "fix the spec or data; the controller retries when they change"
WAITING_FOR_PEOPLE = {Reason.REVIEW_PENDING: "waiting for a reviewer; the controller continues when the reviews change"}
"""Stalls that wait for a person, not for a fix: the spec is parked the same way (nothing is
retried until its inputs change), but the hint says who acts, so `ftops status` and `describe`
show a review as waiting, not as an error."""


@dataclass(frozen=True)
class SpecState:
    """What the controller remembers about a spec between passes (home/state/<spec>.json):
    a settled spec's content key (the no-op fast path), a stalled one's (nothing is retried
    until the content changes), or the backoff of a temporary failure."""

    settled_key: str | None = None
    settled_at: float | None = None
    run_id: str | None = None
    retry_key: str | None = None
    failures: int = 0
    retry_at: float | None = None
    stalled_key: str | None = None
    reason: str | None = None
    last_error: str | None = None

    def to_dict(self) -> JsonObject:
        out: JsonObject = {"settledKey": self.settled_key, "settledAt": self.settled_at, "runId": self.run_id,
                           "retryKey": self.retry_key, "failures": self.failures or None, "retryAt": self.retry_at,
                           "stalledKey": self.stalled_key, "reason": self.reason, "lastError": self.last_error}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: JsonObject) -> "SpecState":
        def num(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        failures = data.get("failures")
        return cls(text("settledKey"), num("settledAt"), text("runId"), text("retryKey"),
                   failures if isinstance(failures, int) else 0, num("retryAt"), text("stalledKey"), text("reason"),
                   text("lastError"))


@dataclass(frozen=True)
class Outcome:
    conditions: tuple[Condition, ...]
    proceed: bool
    """Go on to the next step."""
    requeue_after: float | None
    state: SpecState | None
    """The spec's new persisted state; None keeps what is there."""
    records: tuple[LedgerRecord, ...] = field(default=())


def compute(step: Step, result: StepResult | BaseException, conditions: tuple[Condition, ...], *,
            spec: str, run_id: str | None, revision: str, content_key: str, state: SpecState, now: float,
            config: ControllerConfig) -> Outcome:
    """What one step's result means for the spec (pure)."""
    if isinstance(result, TemporaryError):
        result = Retry(str(result), reason="", after=_asked_wait(result, state, content_key, config))
    elif isinstance(result, PermanentError):
        result = Stalled(step.failure_reason, str(result))
    elif isinstance(result, BaseException):
        failures = state.failures + 1 if state.retry_key == content_key else 1
        wait = config.backoff(failures)
        message = (f"unexpected error in step {step.name} (a bug in ftops; retry {failures} in {wait:.0f}s): "
                   f"{type(result).__name__}: {result}")
        conditions = set_condition(conditions, Condition(STALLED, "False", Reason.INTERNAL_ERROR, message, revision))
        return Outcome(conditions, False, wait,
                       SpecState(retry_key=content_key, failures=failures, retry_at=now + wait, last_error=message))

    def own(status: ConditionStatus, reason: str, message: str) -> tuple[Condition, ...]:
        if step.condition is None or not reason:
            return conditions
        return set_condition(conditions, Condition(step.condition, status, reason, message, revision))

    if isinstance(result, Done):
        return Outcome(own("True", result.reason, result.message), True, None, None, result.records)
    if isinstance(result, Waiting):
        return Outcome(own("False", result.reason, result.message), False, result.after, None, result.records)
    if isinstance(result, Stalled):
        stalled = set_condition(own("False", result.reason, result.message),
                                Condition(STALLED, "True", result.reason,
                                          f"{result.message} ({WAITING_FOR_PEOPLE.get(result.reason, STALL_HINT)})",
                                          revision))
        record = LedgerRecord("spec.stalled", run_id, {"commit": revision, "reason": result.reason, "error": result.message},
                              key=f"{spec}:{content_key}")
        return Outcome(stalled, False, None,
                       SpecState(stalled_key=content_key, reason=result.reason, last_error=result.message),
                       result.records + (record,))
    failures = state.failures + 1 if state.retry_key == content_key else 1
    wait = result.after if result.after is not None else config.backoff(failures)
    retrying = set_condition(own("False", result.reason, result.message),
                             Condition(STALLED, "False", Reason.RETRYING,
                                       f"temporary error, retry {failures} in {wait:.0f}s: {result.message}", revision))
    return Outcome(retrying, False, wait,
                   SpecState(retry_key=content_key, failures=failures, retry_at=now + wait, last_error=result.message),
                   result.records)


def _asked_wait(error: TemporaryError, state: SpecState, content_key: str, config: ControllerConfig) -> float | None:
    """A remote that said how long to wait (429 Retry-After) is waited at least that long; the
    controller's own backoff still grows with each failure (None: just the backoff)."""
    if error.retry_after is None:
        return None
    failures = state.failures + 1 if state.retry_key == content_key else 1
    return max(error.retry_after, config.backoff(failures))


def finish(conditions: tuple[Condition, ...], *, serving_expected: bool, revision: str, run_id: str,
           serving_run_id: str | None, stopped_at: Step | None) -> tuple[Condition, ...]:
    """The pass's last word on the conditions: Ready from the chain, and Deployed telling the
    truth when the chain stopped before deploying and an earlier run keeps serving."""
    if stopped_at is not None and stopped_at.condition != DEPLOYED and serving_run_id and serving_run_id != run_id:
        why = next((c.message for c in conditions if c.type == stopped_at.condition), "")
        conditions = set_condition(conditions, Condition(
            DEPLOYED, "True", Reason.PREVIOUS_RUN_SERVING,
            f"run {serving_run_id} keeps serving while run {run_id} is not ready ({stopped_at.name}: {why})"[:1000],
            revision))
    return summarize(conditions, serving_expected, revision)


def settled(content_key: str, now: float, run_id: str) -> SpecState:
    """A spec that reached Ready: nothing is done for it until its content changes or it is
    resynced (the no-op fast path)."""
    return SpecState(settled_key=content_key, settled_at=now, run_id=run_id)
