"""prune: a deleted spec. Stop what ftops owns for it (its running training and evaluation,
its serving objects); artifacts, checkpoints and the ledger stay, so the trail stays whole."""
from __future__ import annotations

from dataclasses import dataclass

from controller.reconcile.context import Deps
from controller.reconcile.deploy import records as deploy_records
from controller.reconcile.result import Done, LedgerRecord, StepResult
from controller.seams import RunNotFound


@dataclass(frozen=True)
class PruneContext:
    name: str
    commit: str


def run(ctx: PruneContext, deps: Deps) -> StepResult:
    cancelled: list[str] = []
    for event in deps.ledger.events(spec=ctx.name, kind="run.submitted"):
        if event.run_id is None:
            continue
        try:
            if not deps.backend.status(event.run_id).finished:
                deps.backend.cancel(event.run_id)
                cancelled.append(event.run_id)
        except RunNotFound:
            continue
    stopped: tuple[LedgerRecord, ...] = ()
    if deps.deployer is not None:
        stopped = deploy_records(ctx.name, deps.deployer.stop(ctx.name))
    record = LedgerRecord("spec.pruned", None, {"commit": ctx.commit, "cancelledRuns": list(cancelled)},
                          key=f"{ctx.name}:{ctx.commit}")
    return Done(f"pruned at {ctx.commit[:12]}", records=(*stopped, record))
