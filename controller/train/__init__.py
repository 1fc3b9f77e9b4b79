"""The trainer that runs inside a Job (Kubernetes) or as a subprocess (local backend):
`python -m controller.train --config run.json`. It reads only run.json (`controller.runconfig`).

Exit codes (the backends map them to step results):

- `EXIT_OK` (0): finished; `<outputDir>/manifest.json` exists. Also returned at once when the
  output already holds this run's manifest (a restarted Job must not retrain a finished run).
- `EXIT_FAILED` (1): permanent error (bad run.json, missing or invalid data, a pickle-only or
  unsupported model, QLoRA unsupported on the device). Retrying will not help; the message says
  which file/field and what to do.
- `EXIT_TEMPORARY` (75, EX_TEMPFAIL): a retry may help (hub unreachable, ...).
- `EXIT_PREEMPTED` (143 = 128 + SIGTERM): SIGTERM arrived; a checkpoint of the last finished
  step was written, so a restart resumes from it. Same code Kubernetes shows for a SIGTERMed pod.

Environment: `FTOPS_TOKENIZED_CACHE` (where tokenized data is cached; default
`<checkpointDir>/tokenized`, which survives preemption on a PVC), `FTOPS_GIT_COMMIT` (code
version recorded in the manifest when the image has no git), and `FTOPS_TEST_KILL_IN_CHECKPOINT`
(tests only, see controller.train.checkpoint).

This module stays import-light (no torch) so backends can import the constants cheaply.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TEMPORARY = 75
EXIT_PREEMPTED = 143

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_TEMPORARY", "EXIT_PREEMPTED"]
