"""observe: record that the spec was seen at this commit (who asked, in which commit), and
look at what serves it now, so later steps and the status know."""
from __future__ import annotations

from controller.reconcile.context import Deps, SpecContext
from controller.reconcile.result import Done, LedgerRecord, StepResult


def run(ctx: SpecContext, deps: Deps) -> StepResult:
    c = ctx.commit
    ctx.serving = deps.deployer.current(ctx.name) if deps.deployer is not None else None
    record = LedgerRecord(
        "spec.observed", None,
        {"commit": c.sha, "author": c.author, "email": c.email, "message": c.message, "time": c.time,
         "file": ctx.state.path, "blob": ctx.state.blob, "owner": ctx.spec.metadata.owner,
         "action": ctx.decision.action.value},
        key=f"{ctx.name}:{ctx.state.blob}:{c.sha}",
    )
    return Done(records=(record,))
