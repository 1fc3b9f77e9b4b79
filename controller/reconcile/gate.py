"""gate: the pure decision on the report against the spec's thresholds, metric by metric. The
decision is written beside the report (eval/gate.json, the only thing serving trusts) and
recorded in the ledger. A failed gate stalls the spec; whatever served before keeps serving. A
report that evaluated another serving configuration than the one this commit serves fails."""
from __future__ import annotations

from controller.gate import decide
from controller.reconcile.context import Deps, SpecContext
from controller.reconcile.evaluate import config_sha256
from controller.reconcile.result import Done, LedgerRecord, Stalled, StepResult
from controller.status import Reason


def run(ctx: SpecContext, deps: Deps) -> StepResult:
    from controller.evaluate.report import record_gate

    report = ctx.report
    assert report is not None, "the evaluate step runs before the gate"
    decision = decide(report.data, ctx.spec, ctx.run_id, report_sha256=report.sha256, serving_config=config_sha256(ctx))
    gate = decision.to_dict()
    gate_uri = deps.store.join(ctx.run_uri, "eval/gate.json")
    try:
        current = deps.store.get(gate_uri)
    except FileNotFoundError:
        current = None
    import json

    if current is None or json.loads(current) != gate:
        serving = ctx.serving.run_id if ctx.serving is not None and ctx.serving.run_id != ctx.run_id else None
        record_gate(deps.store, ctx.run_uri, report.data, gate,  # the chart puts the serving run beside this one
                    serving_run_uri=deps.store.run_uri(ctx.name, serving) if serving else None)
    record = LedgerRecord("gate.decided", ctx.run_id, {"evalId": ctx.eval_id, **gate}, key=f"{ctx.run_id}:{ctx.eval_id}")
    if decision.passed:
        return Done(f"run {ctx.run_id}: {decision.message()}", records=(record,))
    return Stalled(Reason.GATE_FAILED, f"run {ctx.run_id} failed its gate: {decision.message()}", records=(record,))
