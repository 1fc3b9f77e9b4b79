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

# Per command (docs/cli.md prints this table; tests/cli/test_docs.py holds the two to each other and
# to the parser, so a new command cannot ship without its line). Every command also exits USAGE (2)
# when called wrong, a config file or FTOPS_* variable that cannot be used included, and
# INTERRUPTED (130) on Ctrl-C.
COMMANDS: dict[str, str] = {
    "validate": "0 every spec is valid; 1 a spec is invalid; 2 also when the repository, revision or operator config cannot be read",
    "schema": "0",
    "plan": "0 head is valid; 1 head has errors (invalid specs, data errors, data that cannot be pulled, advisor errors, "
            "budget breaches unless `--budget-breach warning`); 2 also when the repository cannot be read; with "
            "`--detailed-exitcode` 0 no changes, 2 changes, 1 errors (an unreadable repository included): [docs/ci.md](ci.md)",
    "reconcile": "0 the pass ran; 1 it ended with an error (git unreachable, a refused commit); 2 no repository given",
    "controller": "0 stopped; 2 no repository given",
    "get": "0; 1 no controller home, or no object of that name",
    "status": "0; 1 no controller home",
    "describe": "0; 1 no controller home, or no spec of that name",
    "wait": "0 the condition holds; 1 the timeout came first (or there is no controller home)",
    "logs": "0; 1 no controller home, or a run the backend does not know",
    "events": "0; 1 no controller home",
    "trace": "0; 1 no ledger, or nothing in it matches",
    "audit verify": "0 chain, anchors and artifact hashes match; 1 the ledger is broken (the first bad record is named) or missing",
    "audit checkpoint": "0 the anchor is written; 1 the ledger is broken (no anchor is written) or missing",
    "audit export": "0; 1 no ledger",
    "data check": "0 no errors; 1 the file has errors",
    "data prepare": "0 prepared; 1 the data has errors or is not trainable",
    "data review-sample": "0; 1 the spec or data cannot be read",
    "data review-status": "0 the review is approved; 1 not (yet)",
    "data review-import": "0 verdicts appended; 1 the CSV cannot be used",
    "data version": "0 versioned (and pushed); 1 the dataset or remote cannot be used",
    "data pull": "0 pulled and verified; 1 the revision, pointer or remote cannot be used",
    "train": "the trainer's process codes: 0, 1, 75 temporary, 78 config error, 143 preempted (above)",
    "eval": "0 the gate passed; 1 it failed, or the evaluation could not run (a failing report is still written)",
    "serve": "0 stopped; 1 the server cannot start",
    "deploy": "0 promoted or unchanged; 1 refused (gate) or rolled back (readiness)",
    "rollback": "0 rolled back; 1 there is no earlier run that passed its gate",
    "render": "0; 1 an invalid spec or manifests",
    "model init-tiny": "0",
    "demo": "0 the demo ran end to end; 1 a step did not do what it should",
    "version": "0",
    "completion": "0",
}
