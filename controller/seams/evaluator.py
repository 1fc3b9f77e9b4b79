"""The Evaluator seam: evaluate a finished run and leave its report in the artifact store.

A subprocess on this machine, a GPU Job in a cluster: the same eval.json (controller.evalconfig)
drives `python -m controller.evaluate --config eval.json` on both, and the report lands at
`<run>/eval/report.json` in the store, keyed by the evaluation id (the run plus every gate and
serving setting it was evaluated with). The controller itself only gates (pure) and promotes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from controller.evalconfig import EvalConfig
from controller.seams.backend import Lineage, Phase
from controller.spec.finetune import FineTune


@dataclass(frozen=True)
class EvalRequest:
    config: EvalConfig
    """What the evaluation process reads (eval.json)."""
    finetune: FineTune
    """The spec (a cluster evaluator renders its Job from it: GPUs, node pools, tenancy)."""
    lineage: Lineage

    @property
    def eval_id(self) -> str:
        return self.config.eval_id

    @property
    def run_id(self) -> str:
        return self.config.run_id


@dataclass(frozen=True)
class EvalState:
    """Where one evaluation stands. `report_uri` is set once the report is in the store."""

    eval_id: str
    phase: Phase
    reason: str = ""
    message: str = ""
    report_uri: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.SUCCEEDED, Phase.FAILED)


@runtime_checkable
class Evaluator(Protocol):
    """The same shape as the Backend: `status` to look, `submit` to (re)start."""

    name: str

    def status(self, request: EvalRequest) -> EvalState | None:
        """Where this evaluation stands: SUCCEEDED with `report_uri` once this eval id's report is in
        the store; None when it was never started. A failed one says why (reason ConfigError
        when retrying cannot help)."""
        ...

    def submit(self, request: EvalRequest) -> EvalState:
        """Ensure the evaluation runs: start it unless it is running or finished; a failed
        (not for a config error) or preempted one starts again."""
        ...

    def cancel(self, request: EvalRequest) -> EvalState:
        """Stop a running evaluation (a no-op for a finished or unknown one)."""
        ...

    def logs(self, request: EvalRequest, tail: int | None = None) -> str:
        """The evaluation's output so far."""
        ...
