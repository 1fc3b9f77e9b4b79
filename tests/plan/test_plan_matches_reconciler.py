"""What `ftops plan` says a merge will do is what the reconciler does: every change in the plan
tests' git history (a new spec, new data, serving only, gates only, the corpus only, labels
only, a deleted spec) is planned, then reconciled from the settled base commit with the seams
faked, and the reconciler's first pass at head takes exactly the planned action: it trains a new
run only when the plan says Train, re-evaluates only on Evaluate, redeploys only on Redeploy,
touches nothing on Update, and prunes on Prune."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for fakes
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_plan_git's history

from fakes import FakeBackend, FakeClock, FakeData, FakeDeployer, FakeEvaluator, MemoryStore  # noqa: E402
from test_plan_git import history, plan_between  # noqa: E402,F401

from controller.backends.local import LocalBackend  # noqa: E402,F401  (the same import the CLI pays)
from controller.ledger import Ledger  # noqa: E402
from controller.reconcile import ControllerConfig, Reconciler  # noqa: E402

PAIRS = [("empty", "added"), ("added", "data"), ("data", "serving"), ("serving", "gate"), ("gate", "corpus"),
         ("corpus", "labels"), ("labels", "deleted")]


class World:
    def __init__(self, root: Path, repo: Path) -> None:
        self.store = MemoryStore()
        self.backend = FakeBackend(self.store, instant=True)
        self.evaluator = FakeEvaluator(self.store, instant=True)
        self.deployer = FakeDeployer(self.store)
        self.data = FakeData(root / "data")
        self.clock = FakeClock()
        self.root, self.repo = root, repo

    def reconciler(self, rev: str, **config: bool) -> Reconciler:
        home = self.root / "home"
        config = ControllerConfig(repo=str(self.repo), home=home, rev=rev, resync_seconds=0, **config)
        return Reconciler(config, self.backend, ledger=Ledger(home / "ledger.db"), deployer=self.deployer,
                          evaluator=self.evaluator, store=self.store, data=self.data, clock=self.clock)

    def counts(self) -> tuple[int, int, int]:
        return len(self.backend.submitted), len(self.evaluator.submitted), len(self.deployer.requests)


@pytest.mark.parametrize("base,head", PAIRS, ids=[f"{b}->{h}" for b, h in PAIRS])
def test_the_reconcilers_first_pass_takes_the_action_the_plan_predicted(history, tmp_path, base, head):
    repo, shas = history
    plan = plan_between(repo, shas[base] if base != "empty" else None, shas[head])
    spec_plan = next(p for p in plan.changed())
    verbs = [a.kind for a in spec_plan.actions]

    world = World(tmp_path, repo.root)
    if base != "empty":
        settled = world.reconciler(shas[base]).reconcile_once()
        assert settled.statuses["triage"].phase == "Ready", settled.statuses["triage"].to_dict()
    before = world.counts()
    if verbs == ["Prune"]:
        # The history deletes its only spec: the plan warns about the delete-all guard, and the
        # reconciler keeps it until it is told to prune everything.
        assert "--allow-delete-all" in spec_plan.actions[0].reason
        refused = world.reconciler(shas[head]).reconcile_once()
        assert refused.statuses["triage"].condition("Stalled").reason == "DeleteAllRefused"
        assert world.deployer.current("triage") is not None
        result = world.reconciler(shas[head], allow_delete_all=True).reconcile_once()
        assert "triage" not in result.statuses and world.deployer.current("triage") is None
        assert world.counts()[:2] == before[:2]  # nothing trained or evaluated
        return
    result = world.reconciler(shas[head]).reconcile_once()
    trained, evaluated, deployed = (after - b for after, b in zip(world.counts(), before))
    decision = result.decisions["triage"]
    assert list(decision.steps) == [v if v != "Redeploy" else "Deploy" for v in verbs] or verbs == ["Update"]
    status = result.statuses["triage"]
    assert status.run_id == spec_plan.run_head  # the same run identity on both sides
    if verbs[:2] == ["PrepareData", "Train"]:
        assert trained == 1 and world.backend.submitted[-1].run_id == spec_plan.run_head
        assert evaluated == 1 and deployed == 1
    elif verbs[0] == "Evaluate":
        assert trained == 0 and evaluated == 1 and deployed == 1
        assert world.evaluator.submitted[-1].eval_id == status.eval_id != world.evaluator.submitted[0].eval_id
    elif verbs == ["Redeploy"]:
        assert (trained, evaluated, deployed) == (0, 0, 1)
        assert world.deployer.requests[-1].serving_id == status.serving_id
    else:
        assert verbs == ["Update"]
        assert (trained, evaluated) == (0, 0) and deployed in (0, 1)
        assert deployed == 0 or world.deployer.requests[-1].serving_id == world.deployer.requests[-2].serving_id
    assert status.phase == "Ready", status.to_dict()
