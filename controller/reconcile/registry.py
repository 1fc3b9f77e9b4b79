"""The step functions, bound to the one chain in controller.status.STEPS (a test holds them
to the same names in the same order)."""
from __future__ import annotations

from typing import Callable

from controller.reconcile import data, deploy, evaluate, gate, observe, train
from controller.reconcile.context import Deps, SpecContext
from controller.reconcile.result import StepResult
from controller.status import STEPS, Step

StepFunction = Callable[[SpecContext, Deps], StepResult]

FUNCTIONS: dict[str, StepFunction] = {
    "observe": observe.run,
    "data": data.run,
    "train": train.run,
    "evaluate": evaluate.run,
    "gate": gate.run,
    "deploy": deploy.run,
}


def chain() -> tuple[tuple[Step, StepFunction], ...]:
    return tuple((step, FUNCTIONS[step.name]) for step in STEPS)
