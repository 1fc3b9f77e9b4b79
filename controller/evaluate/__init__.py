"""Evaluation of a finished run: task accuracy, format compliance, regression, A/B comparison,
bias and contamination -> eval/report.json, report.md, chart.png (see docs/evaluation.md).

Import-light: torch and transformers load inside the functions that generate, so importing this
package (as `ftops eval` registration and the reconciler do) costs nothing."""
from __future__ import annotations

from typing import Any


def run_evaluation(*args: Any, **kwargs: Any):
    """See controller.evaluate.run.run_evaluation."""
    from controller.evaluate.run import run_evaluation as _run

    return _run(*args, **kwargs)


__all__ = ["run_evaluation"]
