"""train: one run per run id. Finished when the run's manifest is in the artifact store;
otherwise the backend is asked for the run (submitted once, found again after any crash).

A preempted run waits for capacity and resumes from its checkpoint (`submit` again, which
starts it where the backend needs that); a config error stalls the spec with the trainer's last
lines; any other failure starts the run again from its checkpoint, and the controller backs off
(exponentially, capped) before it looks again.
"""
from __future__ import annotations

import os

from controller.reconcile.context import Deps, SpecContext
from controller.reconcile.result import Done, LedgerRecord, Retry, Stalled, StepResult, Waiting
from controller.runconfig import Distributed, RunBaseModel, RunConfig, RunData
from controller.seams import PERMANENT_REASONS, JsonValue, Phase, Run, RunManifest, RunNotFound, RunState
from controller.status import Reason


def run(ctx: SpecContext, deps: Deps) -> StepResult:
    manifest = deps.store.manifest(ctx.run_uri)
    if manifest is not None:
        ctx.manifest = manifest
        return Done(f"run {ctx.run_id} finished", records=(*_submitted_if_known(ctx, deps), _finished(ctx, manifest)))
    try:
        state = deps.backend.status(ctx.run_id)
    except RunNotFound:
        blocked = _concurrency_block(ctx, deps)
        if blocked:
            return Waiting(10, Reason.QUEUED, blocked)
        state = deps.backend.submit(training_run(ctx, deps))
    submitted = _submitted(ctx, deps, state)
    if state.phase in (Phase.PENDING, Phase.RUNNING):
        reason = Reason.RUNNING if state.phase is Phase.RUNNING else Reason.PENDING
        return Waiting(2, reason, f"run {ctx.run_id} {state.phase.value}", records=(submitted,))
    if state.phase is Phase.PREEMPTED:
        deps.backend.submit(training_run(ctx, deps))  # resumes from its checkpoint
        return Waiting(5, Reason.PREEMPTED, f"run {ctx.run_id} was preempted; it resumes from its last checkpoint",
                       records=(submitted,))
    if state.phase is Phase.SUCCEEDED:
        manifest = deps.store.manifest(ctx.run_uri)
        if manifest is None:
            return Stalled(Reason.TRAINING_FAILED,
                           f"run {ctx.run_id} exited 0 without a manifest in {ctx.run_uri}: not finished", records=(submitted,))
        ctx.manifest = manifest
        return Done(f"run {ctx.run_id} finished", records=(submitted, _finished(ctx, manifest)))
    message = f"{state.reason}: {state.message}"
    if state.reason in PERMANENT_REASONS:
        logs = deps.backend.logs(ctx.run_id, tail=15)
        return Stalled(Reason.TRAINING_FAILED,
                       f"run {ctx.run_id} failed permanently ({state.message}); last log lines:\n{logs}", records=(submitted,))
    deps.backend.submit(training_run(ctx, deps))  # the next attempt resumes from its last checkpoint
    return Retry(f"run {ctx.run_id} failed ({message}); started again from its last checkpoint", Reason.TRAINING_FAILED,
                 records=(submitted,))


def training_run(ctx: SpecContext, deps: Deps) -> Run:
    return Run(run_config(ctx, deps), ctx.spec, ctx.lineage)


def run_config(ctx: SpecContext, deps: Deps) -> RunConfig:
    s = ctx.spec.spec
    prepared = ctx.prepared().prepared
    splits = prepared.manifest.get("splits", {})
    out = deps.store.local_dir(ctx.run_uri)
    return RunConfig(
        run_id=ctx.run_id,
        spec_name=ctx.name,
        base_model=RunBaseModel(uri=base_model(ctx, deps), revision=s.base_model.revision),
        method=s.method,
        training=s.training,
        data=RunData(train=str(prepared.train_path), test=str(prepared.test_path), md5=ctx.lineage.data_md5,
                     train_sha256=splits.get("train", {}).get("sha256"), test_sha256=splits.get("test", {}).get("sha256")),
        output_dir=str(out) if out is not None else ctx.run_uri,
        checkpoint_dir=str(deps.home.checkpoints / ctx.name / ctx.run_id),
        distributed=Distributed(nodes=s.hardware.nodes, gpus_per_node=s.hardware.gpus_per_node),
        device=deps.config.device,
    )


def base_model(ctx: SpecContext, deps: Deps) -> str:
    """A repo path is materialised from git at the commit (content-addressed by tree hash)."""
    bm = ctx.spec.spec.base_model
    if bm.kind != "path":
        return bm.uri
    return str(deps.repo.folder(ctx.commit.sha, bm.uri, "spec.baseModel.uri"))


def _submitted(ctx: SpecContext, deps: Deps, state: RunState) -> LedgerRecord:
    """The submission as the backend knows it: its `handles` (a provider's job and file ids)
    name the run outside ftops; a managed fine-tune has no image or templates of ours."""
    from controller.render import object_name

    payload: dict[str, JsonValue] = {
        "commit": ctx.commit.sha, "dataMd5": ctx.lineage.data_md5, "backend": deps.backend.name,
        "job": object_name(ctx.name, ctx.run_id, "train"), "owner": ctx.spec.metadata.owner,
        "method": ctx.spec.spec.method.type, "baseModel": ctx.spec.spec.base_model.uri,
        "baseModelRevision": ctx.spec.spec.base_model.revision}
    if ctx.spec.spec.method.type != "api":
        payload.update({"image": os.environ.get("FTOPS_IMAGE", deps.operator.cluster.image),
                        "imageDigest": os.environ.get("FTOPS_IMAGE_DIGEST"), "templateVersion": deps.template_version})
    payload.update(state.handles)
    return LedgerRecord("run.submitted", ctx.run_id, payload, key=ctx.run_id)


def _submitted_if_known(ctx: SpecContext, deps: Deps) -> tuple[LedgerRecord, ...]:
    """The submission, when a crash right after `submit` kept it from being recorded and the
    run finished before the next pass (the backend still knows it)."""
    if deps.ledger.find_one("run.submitted", ctx.run_id) is not None:
        return ()
    try:
        state = deps.backend.status(ctx.run_id)
    except RunNotFound:
        return ()
    return (_submitted(ctx, deps, state),)


def _finished(ctx: SpecContext, manifest: RunManifest) -> LedgerRecord:
    """What the run left: its files by sha256, and for a managed fine-tune the provider's record
    (job id, file ids, the hosted model's id) from its manifest."""
    payload: dict[str, JsonValue] = {
        "outputDir": ctx.run_uri, "artifacts": dict(manifest.files), "dataMd5": ctx.lineage.data_md5,
        "commit": ctx.commit.sha, "manifestSha256": manifest.sha256}
    provider = manifest.data.get("provider")
    if isinstance(provider, dict):
        payload["provider"] = provider
    return LedgerRecord("run.finished", ctx.run_id, payload, key=ctx.run_id)


def _concurrency_block(ctx: SpecContext, deps: Deps) -> str | None:
    """A reason to wait, when the global or per-owner limit on concurrent runs is reached."""
    active: list[tuple[str, str]] = []
    finished = {e.run_id for e in deps.ledger.events(kind="run.finished")}
    for event in deps.ledger.events(kind="run.submitted"):
        if event.run_id in finished or event.run_id == ctx.run_id or event.run_id is None:
            continue
        try:
            if not deps.backend.status(event.run_id).finished:
                active.append((event.run_id, str(event.payload.get("owner", ""))))
        except RunNotFound:
            continue
    limit = deps.config.max_concurrent_runs
    if len(active) >= limit:
        return f"{len(active)} runs active, the limit is {limit}: queued"
    owner = ctx.spec.metadata.owner
    mine = sum(1 for _, o in active if o == owner)
    if mine >= deps.config.max_runs_per_owner:
        return f"owner {owner} has {mine} run(s) active, the per-owner limit is {deps.config.max_runs_per_owner}: queued"
    return None
