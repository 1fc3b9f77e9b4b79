"""evaluate: the run's evaluation, by the Evaluator (a subprocess here, a GPU Job in a cluster),
keyed by the evaluation id, so a changed gate re-evaluates without retraining and an unchanged
one is never evaluated twice. The report is read back from the artifact store.

The evaluation runs the served configuration: the corpus folder at the commit (materialised the
way the deploy step does), the spec's retriever, topK, prompt builder and generation limits, and
the hash of that configuration (controller.identity.serving_config) that the report must record
and the deploy step will present again when it promotes."""
from __future__ import annotations

import json
import math
from pathlib import Path

from controller.errors import PermanentError
from controller.evalconfig import EvalConfig, EvalData, EvalServing
from controller.identity import serving_config, serving_config_sha256
from controller.reconcile.context import Deps, EvalReport, SpecContext
from controller.reconcile.result import Done, LedgerRecord, Retry, Stalled, StepResult, Waiting
from controller.seams import EvalRequest, JsonValue, Phase, RunReason
from controller.status import Reason


def request(ctx: SpecContext, deps: Deps) -> EvalRequest:
    prepared = ctx.prepared().prepared
    config = EvalConfig(
        eval_id=ctx.eval_id, run_id=ctx.run_id, spec_name=ctx.name, run_uri=ctx.run_uri, finetune=ctx.spec,
        data=EvalData(test=str(prepared.test_path), train=str(prepared.train_path)),
        repo_root=str(deps.repo.checkout(ctx.commit.sha)), device=deps.config.device, serving=served(ctx, deps),
    )
    return EvalRequest(config, ctx.spec, ctx.lineage)


def served(ctx: SpecContext, deps: Deps) -> EvalServing | None:
    """The served configuration at this commit: what the deploy step will serve."""
    sha = config_sha256(ctx)
    if sha is None:
        return None
    corpus = corpus_folder(ctx, deps)
    return EvalServing(corpus=str(corpus) if corpus else None, corpus_version=ctx.corpus_version, config_sha256=sha)


def config_sha256(ctx: SpecContext) -> str | None:
    """The hash of the served configuration (None when the spec is not served)."""
    return serving_config_sha256(serving_config(ctx.spec, ctx.corpus_version))


def corpus_folder(ctx: SpecContext, deps: Deps) -> Path | None:
    """The spec's corpus folder as it is at the commit (content-addressed by its tree hash)."""
    serving = ctx.spec.spec.serving
    if serving is None or not serving.corpus:
        return None
    if ctx.corpus_version is not None and not ctx.corpus_version.startswith("git:"):
        raise PermanentError(f"serving.corpus {serving.corpus!r} is tracked by DVC as a folder; commit the documents "
                             "to git (DVC-tracked corpora are not pulled by the controller yet)")
    return deps.repo.folder(ctx.commit.sha, serving.corpus, "spec.serving.corpus")


def run(ctx: SpecContext, deps: Deps) -> StepResult:
    req = request(ctx, deps)
    state = deps.evaluator.status(req)
    if state is None:
        state = deps.evaluator.submit(req)
    if state.phase is Phase.PREEMPTED:
        state = deps.evaluator.submit(req)  # starts again when capacity returns
    if state.phase in (Phase.PENDING, Phase.RUNNING, Phase.PREEMPTED):
        return Waiting(2, Reason.IN_PROGRESS, f"evaluating run {ctx.run_id} ({state.phase.value})")
    if state.phase is Phase.FAILED:
        message = f"evaluation of run {ctx.run_id} failed ({state.reason}: {state.message})"
        if state.reason == RunReason.CONFIG_ERROR:
            return Stalled(Reason.EVAL_FAILED, message)
        deps.evaluator.submit(req)  # the next attempt; the controller backs off before it looks again
        return Retry(f"{message}; started again", Reason.EVAL_FAILED)
    assert state.report_uri is not None
    raw = deps.store.get(state.report_uri)
    data = json.loads(raw)
    import hashlib

    report = EvalReport(state.report_uri, data, hashlib.sha256(raw).hexdigest())
    ctx.report = report
    record = LedgerRecord(
        "eval.reported", ctx.run_id,
        {"evalId": ctx.eval_id, "reportSha256": report.sha256, "reportPath": report.uri,
         "status": data.get("status"), "metrics": finite(data.get("metrics") or {})},
        key=f"{ctx.run_id}:{ctx.eval_id}",
    )
    if data.get("status") != "completed":
        return Stalled(Reason.EVAL_FAILED, f"evaluation of run {ctx.run_id} crashed: {data.get('error', 'no error recorded')}",
                       records=(record,))
    return Done(f"report {report.uri}", records=(record,))


def finite(value: JsonValue) -> JsonValue:
    """Metrics as the ledger stores them: NaN and infinities become null (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
