"""data: the spec's dataset at the commit, pulled (DVC), cleaned, split, reviewed. DataReady
only when there are enough examples and the expert review approved at least its threshold."""
from __future__ import annotations

from controller.reconcile.context import Deps, SpecContext
from controller.reconcile.result import Done, LedgerRecord, Stalled, StepResult


def run(ctx: SpecContext, deps: Deps) -> StepResult:
    data = deps.data.prepare(ctx.commit.sha, ctx.spec)
    ctx.data = data
    version = ctx.state.data
    assert version is not None
    manifest = data.prepared.manifest
    review = data.review
    record = LedgerRecord(
        "data.versioned", None,
        {"path": ctx.spec.spec.dataset.path, "md5": version.md5, "size": version.size, "source": version.source,
         "commit": ctx.commit.sha, "counts": manifest.get("counts"),
         "splits": {k: v.get("sha256") for k, v in manifest.get("splits", {}).items()},
         "review": review.to_dict()},
        key=f"{ctx.name}:{version.md5}:{ctx.spec.spec.dataset.review.model_dump_json()}:{review.reviewed}:{review.approved}",
    )
    if not data.ready.status:
        return Stalled(data.ready.reason, f"data not ready: {data.ready.message}", records=(record,))
    return Done(data.ready.message, data.ready.reason, records=(record,))
