"""The one place that turns results into status: every result type and exception, as a table."""
from __future__ import annotations

import pytest

from controller.errors import PermanentError, TemporaryError
from controller.reconcile.config import ControllerConfig
from controller.reconcile.outcome import SpecState, compute, finish
from controller.reconcile.result import Done, LedgerRecord, Retry, Stalled, Waiting
from controller.status import DEPLOYED, GATE_PASSED, STALLED, TRAINED, Condition, Reason, step

CONFIG = ControllerConfig(repo="r", home="h", backoff_base_s=5, backoff_cap_s=60)
NOW = 1000.0
KEY = "k1"
RECORD = LedgerRecord("run.submitted", "run1", {"x": 1}, "run1")


def outcome(result, state=SpecState(), name="train", conditions=()):
    return compute(step(name), result, conditions, spec="s", run_id="run1", revision="rev", content_key=KEY,
                   state=state, now=NOW, config=CONFIG)


def conds(out) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in out.conditions}


CASES = [
    # result, step condition, Stalled, proceed, requeue, state written
    (Done("ok", records=(RECORD,)), ("True", Reason.SUCCEEDED), None, True, None, False),
    (Waiting(2, Reason.RUNNING, "run1 running"), ("False", Reason.RUNNING), None, False, 2, False),
    (Stalled(Reason.TRAINING_FAILED, "bad"), ("False", Reason.TRAINING_FAILED), ("True", Reason.TRAINING_FAILED), False,
     None, True),
    (Retry("lost a worker", Reason.TRAINING_FAILED), ("False", Reason.TRAINING_FAILED), ("False", Reason.RETRYING), False,
     5, True),
    (TemporaryError("remote down"), None, ("False", Reason.RETRYING), False, 5, True),
    (PermanentError("bad input"), ("False", Reason.TRAINING_FAILED), ("True", Reason.TRAINING_FAILED), False, None, True),
    (KeyError("oops"), None, ("False", Reason.INTERNAL_ERROR), False, 5, True),
]


@pytest.mark.parametrize("result,own,stalled,proceed,requeue,writes", CASES, ids=lambda v: type(v).__name__)
def test_each_result_maps_to_conditions_backoff_and_requeue(result, own, stalled, proceed, requeue, writes):
    out = outcome(result)
    c = conds(out)
    assert c.get(TRAINED) == own
    assert c.get(STALLED) == stalled
    assert out.proceed is proceed and out.requeue_after == requeue and (out.state is not None) is writes
    assert all(cond.observed_revision == "rev" for cond in out.conditions)
    assert all(cond.reason in Reason.all() for cond in out.conditions)


def test_records_travel_with_every_result_and_a_stall_adds_its_own():
    assert outcome(Done(records=(RECORD,))).records == (RECORD,)
    assert outcome(Waiting(1, Reason.RUNNING, "", records=(RECORD,))).records == (RECORD,)
    stalled = outcome(Stalled(Reason.GATE_FAILED, "task 0.5 < 0.9", records=(RECORD,)))
    assert [r.kind for r in stalled.records] == ["run.submitted", "spec.stalled"]
    assert stalled.records[1].key == f"s:{KEY}" and stalled.records[1].payload["reason"] == Reason.GATE_FAILED
    assert outcome(TemporaryError("x")).records == ()


def test_backoff_doubles_per_consecutive_failure_of_the_same_content_and_is_capped():
    state = SpecState()
    waits = []
    for _ in range(6):
        out = outcome(TemporaryError("down"), state)
        state = out.state
        waits.append(out.requeue_after)
    assert waits == [5, 10, 20, 40, 60, 60]
    assert state.failures == 6 and state.retry_at == NOW + 60 and state.retry_key == KEY
    assert "retry 6 in 60s: down" in next(c.message for c in out.conditions if c.type == STALLED)
    # new content (a fixed spec): the count starts again
    fresh = compute(step("data"), TemporaryError("down"), (), spec="s", run_id=None, revision="rev", content_key="k2",
                    state=state, now=NOW, config=CONFIG)
    assert fresh.state.failures == 1 and fresh.requeue_after == 5


def test_a_retry_with_its_own_wait_uses_it():
    assert outcome(Retry("busy", Reason.DEPLOY_FAILED, after=42)).requeue_after == 42


def test_a_stall_remembers_the_content_it_stalled_on():
    out = outcome(Stalled(Reason.GATE_FAILED, "task 0.5 < 0.9"))
    assert out.state == SpecState(stalled_key=KEY, reason=Reason.GATE_FAILED, last_error="task 0.5 < 0.9")
    message = next(c.message for c in out.conditions if c.type == STALLED)
    assert "retries when they change" in message


def test_a_stall_that_waits_for_a_reviewer_says_so_and_parks_the_same_way():
    out = outcome(Stalled(Reason.REVIEW_PENDING, "12 of 400 examples reviewed"), name="data")
    stalled = next(c for c in out.conditions if c.type == STALLED)
    assert stalled.message == "12 of 400 examples reviewed (waiting for a reviewer; the controller continues when the reviews change)"
    assert "fix the spec" not in stalled.message
    assert out.state == SpecState(stalled_key=KEY, reason=Reason.REVIEW_PENDING, last_error="12 of 400 examples reviewed")
    gate = next(c for c in outcome(Stalled(Reason.GATE_FAILED, "task 0.5 < 0.9")).conditions if c.type == STALLED)
    assert gate.message.endswith("(fix the spec or data; the controller retries when they change)")


def test_a_step_without_a_condition_only_sets_stalled():
    out = outcome(PermanentError("observe broke"), name="observe")
    assert set(conds(out)) == {STALLED}


def test_finish_tells_the_truth_about_what_serves_when_the_chain_stopped_early():
    stopped = (Condition(GATE_PASSED, "False", Reason.GATE_FAILED, "task 0.5 < 0.9", "rev"),)
    out = finish(stopped, serving_expected=True, revision="rev", run_id="new", serving_run_id="old",
                 stopped_at=step("gate"))
    deployed = next(c for c in out if c.type == DEPLOYED)
    assert deployed.status == "True" and deployed.reason == Reason.PREVIOUS_RUN_SERVING
    assert "run old keeps serving" in deployed.message and "task 0.5 < 0.9" in deployed.message
    ready = next(c for c in out if c.type == "Ready")
    assert ready.status == "False"
    # nothing served before: no Deployed claim
    out = finish(stopped, serving_expected=True, revision="rev", run_id="new", serving_run_id=None, stopped_at=step("gate"))
    assert all(c.type != DEPLOYED for c in out)


def test_spec_state_round_trips_through_its_file_shape():
    state = SpecState(retry_key="k", failures=3, retry_at=12.5, last_error="down")
    assert SpecState.from_dict(state.to_dict()) == state
    assert state.to_dict() == {"retryKey": "k", "failures": 3, "retryAt": 12.5, "lastError": "down"}
