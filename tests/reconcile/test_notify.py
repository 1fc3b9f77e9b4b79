"""After a merge the controller reports back: the reconciler, with the seams faked and a
FakeNotifier, sends one commit report per spec when its summary changes (pending while the
chain runs, success with the gate's summary, failure metric by metric), from the end of the pass;
a forge outage is retried with backoff and never breaks the pass, and nothing is sent twice,
not even after a restart. Runs on the plan tests' real git history."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for fakes
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plan"))  # test_plan_git's history

from fakes import (  # noqa: E402
    FakeBackend, FakeClock, FakeData, FakeDeployer, FakeEvaluator, FakeNotifier, MemoryStore, passing_report,
)
from test_plan_git import history  # noqa: E402,F401

from controller.errors import PermanentError, TemporaryError  # noqa: E402
from controller.ledger import Ledger  # noqa: E402
from controller.reconcile import ControllerConfig, Reconciler  # noqa: E402


class World:
    def __init__(self, root: Path, repo: Path, *, instant: bool = True) -> None:
        self.store = MemoryStore()
        self.backend = FakeBackend(self.store, instant=instant)
        self.evaluator = FakeEvaluator(self.store, instant=instant)
        self.deployer = FakeDeployer(self.store)
        self.data = FakeData(root / "data")
        self.clock = FakeClock()
        self.notifier = FakeNotifier()
        self.root, self.repo = root, repo

    def reconciler(self, rev: str) -> Reconciler:
        home = self.root / "home"
        config = ControllerConfig(repo=str(self.repo), home=home, rev=rev, resync_seconds=0)
        return Reconciler(config, self.backend, ledger=Ledger(home / "ledger.db"), deployer=self.deployer,
                          evaluator=self.evaluator, store=self.store, data=self.data, clock=self.clock,
                          notifier=self.notifier)


@pytest.fixture
def world(history, tmp_path):
    repo, shas = history
    return World(tmp_path, repo.root, instant=False), shas


def test_pending_while_training_then_success_with_the_gate_summary(world):
    w, shas = world
    reconciler = w.reconciler(shas["added"])
    reconciler.reconcile_once()
    pending = w.notifier.latest("triage")
    assert pending is not None and pending.state == "pending" and pending.commit == shas["added"]
    assert pending.context == "ftops/triage" and pending.run_id in pending.summary
    w.backend.finish(w.backend.submitted[-1])
    reconciler.reconcile_once()  # evaluation submitted: still pending, and the summary says so
    w.evaluator.complete(w.evaluator.submitted[-1], passing_report(pending.run_id, w.evaluator.submitted[-1].finetune))
    result = reconciler.reconcile_once()
    assert result.statuses["triage"].phase == "Ready"
    done = w.notifier.latest("triage")
    assert done is not None and done.state == "success" and done.summary.startswith(f"Ready: run {pending.run_id} serves")
    assert "gate passed" in done.summary and len(done.summary) <= 140
    assert [r.state for r in w.notifier.reports][0] == "pending" and w.notifier.reports[-1] == done
    assert "| GatePassed | True |" in done.details


def test_a_failing_gate_is_reported_as_failure_metric_by_metric(world):
    w, shas = world
    reconciler = w.reconciler(shas["added"])
    reconciler.reconcile_once()
    w.backend.finish(w.backend.submitted[-1])
    reconciler.reconcile_once()
    request = w.evaluator.submitted[-1]
    w.evaluator.complete(request, passing_report(request.run_id, request.finetune, **{"task.exact_match": 0.41}))
    reconciler.reconcile_once()
    failed = w.notifier.latest("triage")
    assert failed is not None and failed.state == "failure"
    assert failed.summary.startswith("gate failed:") and "0.41" in failed.summary


def test_a_forge_outage_is_retried_with_backoff_and_never_breaks_the_pass(history, tmp_path):
    repo, shas = history
    w = World(tmp_path, repo.root)
    w.notifier.failures = [TemporaryError("GitHub answered 502"), TemporaryError("GitHub answered 503")]
    reconciler = w.reconciler(shas["added"])
    result = reconciler.reconcile_once()
    assert result.statuses["triage"].phase == "Ready" and result.error is None  # the pass went on
    assert w.notifier.calls == 1 and w.notifier.reports == []
    assert result.requeue_after == pytest.approx(5.0)  # the controller's first backoff step
    reconciler.reconcile_once()
    assert w.notifier.calls == 1  # not due yet
    w.clock.advance(6)
    second = reconciler.reconcile_once()
    assert w.notifier.calls == 2 and second.requeue_after == pytest.approx(10.0)  # doubled
    w.clock.advance(11)
    reconciler.reconcile_once()
    assert w.notifier.calls == 3 and [r.state for r in w.notifier.reports] == ["success"]


def test_an_unchanged_summary_is_not_sent_again_even_after_a_restart(history, tmp_path):
    repo, shas = history
    w = World(tmp_path, repo.root)
    w.reconciler(shas["added"]).reconcile_once()
    assert [r.state for r in w.notifier.reports] == ["success"]
    w.clock.advance(60)
    w.reconciler(shas["added"]).reconcile_once()  # a fresh controller process, the same home
    assert w.notifier.calls == 1
    w.reconciler(shas["gate"]).reconcile_once()  # a new commit: a new report, on that commit
    assert w.notifier.latest("triage").commit == shas["gate"] and w.notifier.calls == 2


def test_a_refused_report_is_dropped_until_the_summary_changes(history, tmp_path):
    repo, shas = history
    w = World(tmp_path, repo.root)
    w.notifier.failures = [PermanentError("Bad credentials")]
    reconciler = w.reconciler(shas["added"])
    result = reconciler.reconcile_once()
    assert result.requeue_after is None and w.notifier.calls == 1
    reconciler.reconcile_once()
    assert w.notifier.calls == 1
