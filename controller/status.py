"""Kubernetes-style status conditions for a FineTune (pure data, no I/O).

Each spec's status is a set of conditions — DataReady, Trained, Evaluated, GatePassed, Deployed,
summarised as Ready, with Stalled for errors that retrying will not fix — each with a CamelCase
reason, a message for people, the git revision it was observed at, and when it last changed.
The same shape is printed by `ftops status`, written to the FineTune CR's status subresource,
and read by Argo CD / Flux health checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Literal

ConditionStatus = Literal["True", "False", "Unknown"]

DATA_READY = "DataReady"
TRAINED = "Trained"
EVALUATED = "Evaluated"
GATE_PASSED = "GatePassed"
DEPLOYED = "Deployed"
READY = "Ready"
STALLED = "Stalled"

SOURCE_AVAILABLE = "SourceAvailable"


class Reason:
    """CamelCase reasons. One constant per situation, so dashboards and alerts can match on them.
    Every condition ftops writes carries one of these (a test holds the reconciler to it)."""

    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SPEC_INVALID = "SpecInvalid"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    UNSIGNED_COMMIT = "UnsignedCommit"
    DELETE_ALL_REFUSED = "DeleteAllRefused"
    DATA_READY = "DataReady"
    DATA_INVALID = "DataInvalid"
    TOO_FEW_EXAMPLES = "TooFewExamples"
    ENOUGH_EXAMPLES = "EnoughExamples"
    LEAK_DETECTED = "LeakDetected"
    REVIEW_PENDING = "ReviewPending"
    REVIEW_REJECTED = "ReviewRejected"
    REVIEWED = "Reviewed"
    DATA_UNAVAILABLE = "DataUnavailable"
    QUEUED = "Queued"
    RUNNING = "Running"
    PREEMPTED = "Preempted"
    TRAINING_FAILED = "TrainingFailed"
    EVAL_FAILED = "EvaluationFailed"
    GATE_FAILED = "GateFailed"
    ROLLING_OUT = "RollingOut"
    ROLLED_BACK = "RolledBack"
    DEPLOY_FAILED = "DeployFailed"
    PREVIOUS_RUN_SERVING = "PreviousRunServing"
    SERVING_CONFIG_CHANGED = "ServingConfigChanged"
    REQUESTED = "Requested"
    NOT_SERVED = "NotServed"
    ALL_READY = "AllReady"
    RETRYING = "Retrying"
    INTERNAL_ERROR = "InternalError"

    @classmethod
    def all(cls) -> frozenset[str]:
        return frozenset(v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str))


@dataclass(frozen=True)
class Step:
    """One step of the chain, as every reader of the chain names it: the reconciler runs
    `name`, `ftops status` shows `condition`, `ftops plan` says `verb`."""

    name: str
    condition: str | None
    """The condition this step owns (observe owns none)."""
    verb: str | None
    """What `ftops plan` calls it."""
    failure_reason: str
    """The Stalled reason when the step fails permanently in a way it did not classify itself."""


STEPS: tuple[Step, ...] = (
    Step("observe", None, None, "PermanentError"),
    Step("data", DATA_READY, "PrepareData", Reason.DATA_INVALID),
    Step("train", TRAINED, "Train", Reason.TRAINING_FAILED),
    Step("evaluate", EVALUATED, "Evaluate", Reason.EVAL_FAILED),
    Step("gate", GATE_PASSED, "Gate", Reason.GATE_FAILED),
    Step("deploy", DEPLOYED, "Deploy", Reason.DEPLOY_FAILED),
)
"""The step chain in pipeline order: the one registry the reconciler, status and plan read."""
PRUNE = Step("prune", None, "Prune", Reason.FAILED)
"""The chain of a deleted spec."""

CHAIN = tuple(s.condition for s in STEPS if s.condition)
"""The step conditions in pipeline order. Ready is True when all that apply are True."""


def step(name: str) -> Step:
    return next(s for s in (*STEPS, PRUNE) if s.name == name)


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    observed_revision: str | None = None
    last_transition_time: str = field(default_factory=now)

    def to_dict(self) -> dict:
        """The Kubernetes wire shape (camelCase keys)."""
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "observedRevision": self.observed_revision,
            "lastTransitionTime": self.last_transition_time,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Condition":
        return cls(
            type=data["type"],
            status=data["status"],
            reason=data["reason"],
            message=data.get("message", ""),
            observed_revision=data.get("observedRevision"),
            last_transition_time=data.get("lastTransitionTime") or now(),
        )


@dataclass(frozen=True)
class SpecStatus:
    """Everything `ftops status` shows for one spec."""

    name: str
    conditions: tuple[Condition, ...] = ()
    observed_revision: str | None = None
    run_id: str | None = None
    serving_run_id: str | None = None
    message: str = ""
    eval_id: str | None = None
    """The evaluation identity the spec wants (run + gates): what `ftops plan` compares."""
    serving_id: str | None = None
    """The serving identity the spec wants (run + serving block + corpus version)."""
    ledger_head: tuple[int, str] | None = None
    """(seq, hash) of the ledger's last record when this status was written: an anchor kept
    outside the ledger, so `ftops audit verify` notices records cut off its tail."""

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def is_true(self, type_: str) -> bool:
        found = self.condition(type_)
        return found is not None and found.status == "True"

    @property
    def phase(self) -> str:
        """One word for tables: Stalled, Ready, or the first step that is not done yet."""
        if self.is_true(STALLED):
            return STALLED
        if self.is_true(READY):
            return READY
        for type_ in CHAIN:
            found = self.condition(type_)
            if found is not None and found.status != "True":
                return found.reason
        return "Pending"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "phase": self.phase,
            "observedRevision": self.observed_revision,
            "runId": self.run_id,
            "servingRunId": self.serving_run_id,
            "evaluationId": self.eval_id,
            "servingId": self.serving_id,
            "message": self.message,
            "conditions": [c.to_dict() for c in self.conditions],
            **({"ledgerHead": {"seq": self.ledger_head[0], "hash": self.ledger_head[1]}} if self.ledger_head else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SpecStatus":
        return cls(
            name=data["name"],
            conditions=tuple(Condition.from_dict(c) for c in data.get("conditions", ())),
            observed_revision=data.get("observedRevision"),
            run_id=data.get("runId"),
            serving_run_id=data.get("servingRunId"),
            message=data.get("message", ""),
            eval_id=data.get("evaluationId"),
            serving_id=data.get("servingId"),
            ledger_head=(int(data["ledgerHead"]["seq"]), str(data["ledgerHead"]["hash"])) if data.get("ledgerHead") else None,
        )


def set_condition(conditions: tuple[Condition, ...], new: Condition) -> tuple[Condition, ...]:
    """Replace the condition of the same type. lastTransitionTime only moves when the status
    changes, as in Kubernetes, so a steady state does not churn."""
    out = []
    replaced = False
    for existing in conditions:
        if existing.type == new.type:
            replaced = True
            if existing.status == new.status:
                new = replace(new, last_transition_time=existing.last_transition_time)
            out.append(new)
        else:
            out.append(existing)
    if not replaced:
        out.append(new)
    return tuple(out)


def summarize(conditions: tuple[Condition, ...], serving_expected: bool, revision: str | None) -> tuple[Condition, ...]:
    """Derive Ready from the step conditions: True when every applicable step is True."""
    steps = [t for t in CHAIN if t != DEPLOYED or serving_expected]
    pending = [t for t in steps if not any(c.type == t and c.status == "True" for c in conditions)]
    if not pending:
        ready = Condition(READY, "True", Reason.ALL_READY, "every step is done", revision)
    else:
        ready = Condition(READY, "False", Reason.PENDING, f"waiting for {pending[0]}", revision)
    return set_condition(conditions, ready)


__all__ = [
    "CHAIN",
    "Condition",
    "DATA_READY",
    "DEPLOYED",
    "EVALUATED",
    "GATE_PASSED",
    "READY",
    "Reason",
    "STALLED",
    "PRUNE",
    "SOURCE_AVAILABLE",
    "STEPS",
    "SpecStatus",
    "Step",
    "TRAINED",
    "set_condition",
    "summarize",
]

