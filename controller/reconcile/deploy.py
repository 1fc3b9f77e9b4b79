"""deploy: promote the run (only with its own passed gate); the previous version serves until
the new one is ready, and a new one that never gets ready is rolled back. A spec whose serving
block was removed stops serving."""
from __future__ import annotations

from controller.reconcile.context import Deps, SpecContext
from controller.reconcile.evaluate import config_sha256, corpus_folder
from controller.reconcile.result import Done, LedgerRecord, Retry, StepResult, Waiting
from controller.reconcile.train import base_model
from controller.seams import DeployEvent, DeployRequest, DeployResult, Serving
from controller.status import Reason


ROLLOUT_POLL_SECONDS = 5.0
"""How soon a pass looks at a rollout again when the deployer names no time."""


def request(ctx: SpecContext, deps: Deps) -> DeployRequest:
    """The corpus and the serving-configuration hash are the evaluate step's, so the deployer
    promotes only when the run's report evaluated exactly this configuration."""
    config = config_sha256(ctx)
    assert config is not None, "a served spec has a serving configuration"
    corpus = corpus_folder(ctx, deps)
    return DeployRequest(
        finetune=ctx.spec, run_id=ctx.run_id, run_uri=ctx.run_uri, serving_id=ctx.serving_id, lineage=ctx.lineage,
        base_model=base_model(ctx, deps), serving_config_sha256=config, base_revision=ctx.spec.spec.base_model.revision,
        corpus_dir=str(corpus) if corpus else None, corpus_version=ctx.corpus_version, device=deps.config.device,
    )


def run(ctx: SpecContext, deps: Deps) -> StepResult:
    if deps.deployer is None:
        return Done("no deployer configured")
    if ctx.spec.spec.serving is None:
        if ctx.serving is None:
            return Done("the spec is not served")
        result = deps.deployer.stop(ctx.name)
        ctx.serving = None
        return Done("the serving block was removed: stopped", Reason.NOT_SERVED, records=records(ctx.name, result))
    result = deps.deployer.promote(request(ctx, deps))
    if result.serving_run_id is not None:
        ctx.serving = Serving(ctx.name, result.serving_run_id, result.outcome in ("promoted", "unchanged", "rolling_out"), result.url,
                              result.message, ctx.serving_id if result.serving_run_id == ctx.run_id else None)
    else:
        ctx.serving = None
    if result.outcome in ("promoted", "unchanged"):
        return Done(result.message or f"run {ctx.run_id} is serving", records=records(ctx.name, result))
    if result.outcome == "rolling_out":  # the deployer never blocks; the next pass advances it
        return Waiting(result.after if result.after is not None else ROLLOUT_POLL_SECONDS, Reason.ROLLING_OUT,
                       result.message or f"rolling out run {ctx.run_id}", records=records(ctx.name, result))
    reason = Reason.ROLLED_BACK if result.outcome == "rolled_back" else Reason.DEPLOY_FAILED
    return Retry(f"deploy of run {ctx.run_id}: {result.message}", reason, records=records(ctx.name, result))


def records(spec: str, result: DeployResult) -> tuple[LedgerRecord, ...]:
    return tuple(_record(spec, event) for event in result.events)


def _record(spec: str, event: DeployEvent) -> LedgerRecord:
    kind, run_id = str(event["kind"]), event.get("runId")
    return LedgerRecord(kind, run_id if isinstance(run_id, str) else None, event,
                        key=f"{spec}:{kind}:{run_id}:{event.get('time')}")
