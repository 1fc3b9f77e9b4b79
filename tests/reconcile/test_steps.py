"""Each step alone, against the fakes: given its inputs and what the world does, the result it
returns (type, reason, message) and the ledger records it asks for. Failures included."""
from __future__ import annotations

import json

import pytest

from controller.errors import PermanentError, TemporaryError
from controller.reconcile import data, deploy, evaluate, gate, observe, prune, train
from controller.reconcile.context import EvalReport
from controller.reconcile.registry import FUNCTIONS, chain
from controller.reconcile.result import Done, Retry, Stalled, Waiting
from controller.seams import Phase, RunReason, Serving
from controller.status import STEPS, Reason

from world import SPEC
from fakes import passing_report


def kinds(result) -> list[str]:
    return [r.kind for r in result.records]


def recorded(world, result):
    """Write the result's records as the reconciler does (steps never write the ledger)."""
    for r in result.records:
        world.ledger.append_once(r.kind, "triage", r.run_id, r.payload, key=r.key)
    return result


def test_the_registry_binds_every_step_of_the_one_chain_in_order():
    assert [step.name for step, _ in chain()] == [s.name for s in STEPS] == list(FUNCTIONS)


# -- observe ---------------------------------------------------------------------------------


def test_observe_records_who_asked_and_sees_what_serves(world):
    world.deployer.serving["triage"] = Serving("triage", "aaaa11112222", True, "http://x")
    ctx = world.context()
    result = observe.run(ctx, world.deps)
    assert isinstance(result, Done) and kinds(result) == ["spec.observed"]
    payload = result.records[0].payload
    assert payload["author"] == "Ada" and payload["commit"] == "c" * 40 and payload["action"] == "Train"
    assert ctx.serving is not None and ctx.serving.run_id == "aaaa11112222"


# -- data ------------------------------------------------------------------------------------


def test_data_ready_is_done_with_the_counts(world):
    ctx = world.context()
    result = data.run(ctx, world.deps)
    assert isinstance(result, Done) and result.reason == Reason.DATA_READY and "340 train" in result.message
    assert kinds(result) == ["data.versioned"] and result.records[0].payload["md5"] == ctx.lineage.data_md5
    assert ctx.data is not None


@pytest.mark.parametrize("reason", [Reason.REVIEW_PENDING, Reason.REVIEW_REJECTED, Reason.TOO_FEW_EXAMPLES])
def test_data_not_ready_stalls_with_its_reason_and_still_records_the_version(world, reason):
    world.data.ready, world.data.reason, world.data.message = False, reason, "12 of 400 reviewed"
    result = data.run(world.context(), world.deps)
    assert isinstance(result, Stalled) and result.reason == reason and "12 of 400" in result.message
    assert kinds(result) == ["data.versioned"]


def test_data_errors_propagate_for_the_outcome_to_classify(world):
    world.data.error = TemporaryError("DVC remote unreachable")
    with pytest.raises(TemporaryError):
        data.run(world.context(), world.deps)


# -- train -----------------------------------------------------------------------------------


def _prepared(world, **facts):
    ctx = world.context(**facts)
    data.run(ctx, world.deps)
    return ctx


def test_train_submits_once_and_waits(world):
    ctx = _prepared(world)
    first = train.run(ctx, world.deps)
    assert isinstance(first, Waiting) and first.reason == Reason.PENDING and kinds(first) == ["run.submitted"]
    again = train.run(ctx, world.deps)
    assert isinstance(again, Waiting) and len(world.backend.submitted) == 1
    run = world.backend.submitted[0]
    assert run.run_id == ctx.run_id and run.finetune == ctx.spec and run.lineage.git_commit == "c" * 40
    assert run.config.output_dir == ctx.run_uri  # the store's place for the run


def test_train_running_then_finished_records_the_manifest(world):
    ctx = _prepared(world)
    recorded(world, train.run(ctx, world.deps))
    world.backend.set(ctx.run_id, Phase.RUNNING, RunReason.RUNNING)
    assert train.run(ctx, world.deps).reason == Reason.RUNNING
    world.backend.finish(world.backend.submitted[0])
    done = train.run(ctx, world.deps)
    assert isinstance(done, Done) and "finished" in done.message
    assert kinds(done) == ["run.finished"]  # submitted was recorded when it was submitted
    assert done.records[0].payload["manifestSha256"] == ctx.manifest.sha256


def test_a_submission_lost_to_a_crash_is_recorded_once_the_run_is_found_finished(world):
    ctx = _prepared(world)
    train.run(ctx, world.deps)  # submitted, but killed before its record was written
    world.backend.finish(world.backend.submitted[0])
    assert kinds(train.run(ctx, world.deps)) == ["run.submitted", "run.finished"]


def test_a_finished_run_is_found_in_the_store_without_asking_the_backend_to_run_it(world):
    ctx = _prepared(world)
    world.store.write_run(ctx.run_uri, ctx.run_id)
    done = train.run(ctx, world.deps)
    assert isinstance(done, Done) and world.backend.submitted == []
    assert kinds(done) == ["run.finished"]


def test_train_waits_at_the_concurrency_limit(world):
    ctx = _prepared(world)
    for i in range(world.deps.config.max_concurrent_runs):
        other = f"{i:012x}"
        world.ledger.append_once("run.submitted", "other", other, {"owner": "someone"}, key=other)
        world.backend.set(other, Phase.RUNNING)
    result = train.run(ctx, world.deps)
    assert isinstance(result, Waiting) and result.reason == Reason.QUEUED and "limit is 2" in result.message
    assert world.backend.submitted == []


def test_preempted_run_is_submitted_again_to_resume(world):
    ctx = _prepared(world)
    train.run(ctx, world.deps)
    world.backend.set(ctx.run_id, Phase.PREEMPTED, RunReason.PREEMPTED)
    result = train.run(ctx, world.deps)
    assert isinstance(result, Waiting) and result.reason == Reason.PREEMPTED
    assert len(world.backend.submitted) == 2  # the same run id again: it resumes


def test_config_error_stalls_with_the_last_log_lines(world):
    ctx = _prepared(world)
    train.run(ctx, world.deps)
    world.backend.set(ctx.run_id, Phase.FAILED, RunReason.CONFIG_ERROR, "exit 78")
    world.backend.log[ctx.run_id] = "loading\nerror: run.json: data.train: file not found\n"
    result = train.run(ctx, world.deps)
    assert isinstance(result, Stalled) and result.reason == Reason.TRAINING_FAILED
    assert "data.train: file not found" in result.message


def test_other_failures_start_the_run_again_and_retry(world):
    ctx = _prepared(world)
    train.run(ctx, world.deps)
    world.backend.set(ctx.run_id, Phase.FAILED, RunReason.BACKOFF, "a worker was lost")
    result = train.run(ctx, world.deps)
    assert isinstance(result, Retry) and result.reason == Reason.TRAINING_FAILED and "worker was lost" in result.message
    assert len(world.backend.submitted) == 2


def test_succeeded_without_a_manifest_is_not_finished(world):
    ctx = _prepared(world)
    train.run(ctx, world.deps)
    world.backend.set(ctx.run_id, Phase.SUCCEEDED, RunReason.COMPLETE)
    result = train.run(ctx, world.deps)
    assert isinstance(result, Stalled) and "without a manifest" in result.message


# -- evaluate --------------------------------------------------------------------------------


def _trained(world):
    ctx = _prepared(world)
    world.store.write_run(ctx.run_uri, ctx.run_id)
    train.run(ctx, world.deps)
    return ctx


def test_evaluate_submits_once_waits_and_reads_the_report_back(world):
    ctx = _trained(world)
    first = evaluate.run(ctx, world.deps)
    assert isinstance(first, Waiting) and first.reason == Reason.IN_PROGRESS
    evaluate.run(ctx, world.deps)
    assert len(world.evaluator.submitted) == 1
    request = world.evaluator.submitted[0]
    assert request.eval_id == ctx.eval_id and request.config.finetune == ctx.spec
    assert request.config.run_uri == ctx.run_uri and request.config.data.test.endswith("test.jsonl")
    world.evaluator.complete(request, passing_report(ctx.run_id, ctx.spec))
    done = evaluate.run(ctx, world.deps)
    assert isinstance(done, Done) and kinds(done) == ["eval.reported"]
    assert ctx.report is not None and ctx.report.data["status"] == "completed"
    assert done.records[0].payload["reportSha256"] == ctx.report.sha256


def test_a_crashed_evaluation_stalls_with_its_error(world):
    ctx = _trained(world)
    evaluate.run(ctx, world.deps)
    world.evaluator.complete(world.evaluator.submitted[0],
                             {"runId": ctx.run_id, "status": "crashed", "error": "bias/missing.jsonl: not found"})
    result = evaluate.run(ctx, world.deps)
    assert isinstance(result, Stalled) and result.reason == Reason.EVAL_FAILED and "bias/missing.jsonl" in result.message
    assert kinds(result) == ["eval.reported"]


def test_a_temporary_evaluation_failure_starts_it_again_and_retries(world):
    ctx = _trained(world)
    evaluate.run(ctx, world.deps)
    world.evaluator.fail(world.evaluator.submitted[0])
    result = evaluate.run(ctx, world.deps)
    assert isinstance(result, Retry) and result.reason == Reason.EVAL_FAILED
    assert len(world.evaluator.submitted) == 2


def test_an_evaluation_config_error_stalls(world):
    ctx = _trained(world)
    evaluate.run(ctx, world.deps)
    world.evaluator.fail(world.evaluator.submitted[0], RunReason.CONFIG_ERROR, "eval.json invalid")
    assert isinstance(evaluate.run(ctx, world.deps), Stalled)


# -- gate ------------------------------------------------------------------------------------


def _evaluated(world, **metrics):
    ctx = _trained(world)
    evaluate.run(ctx, world.deps)
    world.evaluator.complete(world.evaluator.submitted[0], passing_report(ctx.run_id, ctx.spec, **metrics))
    evaluate.run(ctx, world.deps)
    return ctx


def test_a_passing_gate_writes_its_decision_beside_the_report(world):
    ctx = _evaluated(world)
    result = gate.run(ctx, world.deps)
    assert isinstance(result, Done) and "gates passed" in result.message
    assert kinds(result) == ["gate.decided"] and result.records[0].payload["passed"] is True
    decision = json.loads(world.store.get(f"{ctx.run_uri}/eval/gate.json"))
    assert decision["runId"] == ctx.run_id and decision["reportSha256"] == ctx.report.sha256
    manifest = world.store.manifest(ctx.run_uri)
    assert "eval/gate.json" in manifest.files and manifest.data["evaluation"]["gate"]["passed"] is True


def test_a_failing_gate_stalls_metric_by_metric(world):
    ctx = _evaluated(world, **{"task.exact_match": 0.5})
    result = gate.run(ctx, world.deps)
    assert isinstance(result, Stalled) and result.reason == Reason.GATE_FAILED
    assert "task accuracy (exact_match) 0.5000 < min 0.9000" in result.message
    assert result.records[0].payload["passed"] is False


def test_a_report_for_another_run_never_passes(world):
    ctx = _evaluated(world)
    ctx.report = EvalReport(ctx.report.uri, {**ctx.report.data, "runId": "ffffffffffff"}, ctx.report.sha256)
    result = gate.run(ctx, world.deps)
    assert isinstance(result, Stalled) and "never vouches for another run" in result.message


# -- deploy ----------------------------------------------------------------------------------


def _gated(world, **metrics):
    ctx = _evaluated(world, **metrics)
    gate.run(ctx, world.deps)
    return ctx


def test_deploy_promotes_a_passed_run_with_the_materialised_corpus(world):
    ctx = _gated(world)
    result = deploy.run(ctx, world.deps)
    assert isinstance(result, Done) and kinds(result) == ["deploy.started", "deploy.promoted"]
    request = world.deployer.requests[0]
    assert request.run_id == ctx.run_id and request.serving_id == ctx.serving_id and request.corpus_dir.endswith("corpora/kb")
    assert ctx.serving is not None and ctx.serving.run_id == ctx.run_id
    assert isinstance(deploy.run(ctx, world.deps), Done)  # unchanged the second time
    assert kinds(deploy.run(ctx, world.deps)) == []


def test_a_rollout_that_never_gets_ready_is_retried_and_the_old_run_keeps_serving(world):
    world.deployer.serving["triage"] = Serving("triage", "aaaa11112222", True)
    ctx = _gated(world)
    world.deployer.failing.add(ctx.run_id)
    result = deploy.run(ctx, world.deps)
    assert isinstance(result, Retry) and result.reason == Reason.ROLLED_BACK
    assert ctx.serving is not None and ctx.serving.run_id == "aaaa11112222"
    assert kinds(result) == ["deploy.started", "deploy.rolled_back"]


def test_a_rollout_in_progress_waits_without_blocking_and_the_old_run_serves_meanwhile(world):
    """The deployer returns `rolling_out` (a process starting, a canary under analysis): the step
    waits for the time the deployer names, the old run stays the serving one, and a later pass
    finishes the rollout. Each transition is recorded once."""
    world.deployer.serving["triage"] = Serving("triage", "aaaa11112222", True)
    ctx = _gated(world)
    world.deployer.rolling[ctx.run_id] = 2
    first = deploy.run(ctx, world.deps)
    assert isinstance(first, Waiting) and first.reason == Reason.ROLLING_OUT and first.after == 2.0
    assert kinds(first) == ["deploy.started"]
    assert ctx.serving is not None and ctx.serving.run_id == "aaaa11112222" and ctx.serving.healthy
    second = deploy.run(ctx, world.deps)
    assert isinstance(second, Waiting) and kinds(second) == []
    third = deploy.run(ctx, world.deps)
    assert isinstance(third, Done) and kinds(third) == ["deploy.promoted"]
    assert ctx.serving.run_id == ctx.run_id


def test_a_deployer_refusal_is_retried_not_served(world):
    ctx = _evaluated(world)  # no gate decision written
    result = deploy.run(ctx, world.deps)
    assert isinstance(result, Retry) and result.reason == Reason.DEPLOY_FAILED and "refused" not in world.deployer.serving


def test_a_removed_serving_block_stops_serving(world):
    world.deployer.serving["triage"] = Serving("triage", "aaaa11112222", True)
    text = SPEC.replace("  serving: {corpus: corpora/kb, retriever: bm25, topK: 2}\n", "")
    ctx = world.context(text)
    ctx.serving = world.deployer.current("triage")
    result = deploy.run(ctx, world.deps)
    assert isinstance(result, Done) and result.reason == Reason.NOT_SERVED and kinds(result) == ["deploy.stopped"]
    assert world.deployer.current("triage") is None


def test_a_dvc_tracked_corpus_is_refused_clearly(world):
    """Refused when the evaluation is asked for (it runs the served corpus), before any model runs."""
    world.repo.corpus_versions["corpora/kb"] = "0123456789abcdef0123456789abcdef"
    ctx = _trained(world)
    with pytest.raises(PermanentError, match="tracked by DVC"):
        evaluate.run(ctx, world.deps)
    assert world.evaluator.submitted == []
    with pytest.raises(PermanentError, match="tracked by DVC"):
        deploy.run(ctx, world.deps)


# -- prune -----------------------------------------------------------------------------------


def test_prune_cancels_running_work_stops_serving_and_keeps_the_rest(world):
    ctx = _prepared(world)
    train.run(ctx, world.deps)
    world.backend.set(ctx.run_id, Phase.RUNNING)
    world.ledger.append_once("run.submitted", "triage", ctx.run_id, {"owner": "support"}, key=ctx.run_id)
    world.deployer.serving["triage"] = Serving("triage", "aaaa11112222", True)
    world.store.write_run(world.store.run_uri("triage", "aaaa11112222"), "aaaa11112222")
    result = prune.run(prune.PruneContext("triage", "d" * 40), world.deps)
    assert isinstance(result, Done) and kinds(result) == ["deploy.stopped", "spec.pruned"]
    assert world.backend.cancelled == [ctx.run_id] and world.deployer.current("triage") is None
    assert world.store.manifest(world.store.run_uri("triage", "aaaa11112222")) is not None  # artifacts stay
