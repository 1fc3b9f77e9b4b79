"""The one home for ftops exit codes.

A caller (a person, a CI job, a backend watching a process) reads nothing but the exit code, so
every code ftops gives means one thing wherever it comes from. Two kinds of process exit:

- the `ftops` command line (`controller.cli.main` is its only error boundary), below;
- the trainer and evaluator processes a backend runs (their codes belong here too, beside these).

CLI codes:

- `OK` (0): the command did what it was asked.
- `FAILURE` (1): it could not, or what it checked is not good: invalid specs or data, a gate
  that failed, a run that is not finished, any `FtopsError`. A `TemporaryError` (a remote that
  is down, a git fetch that timed out) exits 1 too: the temporary/permanent split tells the
  *reconciler* whether to retry on its own; a person or a CI job running one command reads the
  message and decides. Only processes a backend retries exit differently: `ftops train` is the
  trainer in-process and exits with its codes (75 retry later, 143 preempted).
- `USAGE` (2): the command was called wrong (conflicting or missing arguments; argparse uses 2
  for its own errors). `ftops validate` and `ftops plan` also exit 2 when the repository,
  revision or operator config they were pointed at cannot be read, so CI tells "the specs are
  invalid" (1) from "the check could not run" (2).
- `INTERRUPTED` (130): Ctrl-C (128 + SIGINT, what shells report).

Process codes (`python -m controller.train`, what a Job's pod failure policy and the local
backend act on; they reach the Job through torchrun, see controller.train.launch):

- `OK` (0): finished, the run's manifest is written (or already was: a restarted Job that finds
  this run's manifest exits 0 without training).
- `FAILURE` (1): an unexpected failure (an uncaught exception, a worker that died, torchrun's
  own code for "a worker failed"). It may be transient (a lost node, an NCCL timeout), so it is
  retried and counts against the Job's backoffLimit. It never means "config error".
- `TEMPORARY` (75, EX_TEMPFAIL): a failure the trainer knows a retry may fix (hub unreachable).
- `CONFIG_ERROR` (78, EX_CONFIG): the run cannot succeed as configured (bad run.json or usage,
  missing or invalid data, a pickle-only or unsupported model, a precision or method the device
  cannot do). Retrying cannot help: the pod failure policy fails the Job at once on it, and the
  message names the file or field and what to do.
- `PREEMPTED` (143 = 128 + SIGTERM): SIGTERM arrived; every rank finished its step, a checkpoint
  was written, and a restart resumes from it. The pod failure policy ignores it (the attempt does
  not count against backoffLimit). The same code Kubernetes shows for a SIGTERMed container.
"""
from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2
INTERRUPTED = 130

# Process codes (the trainer)
TEMPORARY = 75
CONFIG_ERROR = 78
PREEMPTED = 143
