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
"""
from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2
INTERRUPTED = 130
