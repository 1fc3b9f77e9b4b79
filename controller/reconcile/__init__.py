"""The reconciler as a package: one module per step, one result type, one place that records.

- `reconciler.py`: a pass (observe git, decide, run each spec's chain, prune deleted specs).
- `observe.py`, `data.py`, `train.py`, `evaluate.py`, `gate.py`, `deploy.py`, `prune.py`: the
  steps, each `run(ctx, deps) -> StepResult` (result.py), bound in registry.py to the chain in
  controller.status.STEPS.
- `outcome.py`: the only place that turns results into conditions, backoff, ledger records and
  the requeue time.
- `context.py`: what steps share (typed) and act through (`Deps`: the seams in controller.seams).
- `workspace.py`: the repo's files and data at a commit (git, DVC).
"""
from controller.reconcile.config import ControllerConfig
from controller.reconcile.reconciler import PassResult, Reconciler, crash_point, load_statuses

__all__ = ["ControllerConfig", "PassResult", "Reconciler", "crash_point", "load_statuses"]
