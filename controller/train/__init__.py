"""The trainer that runs inside a Job (Kubernetes) or as a subprocess (local backend):
`python -m controller.train --config run.json`. It reads only run.json (`controller.runconfig`).

Exit codes are `controller.exitcodes`' process codes: 0 finished (or already finished: a
restarted Job never retrains a run whose manifest is there), 78 config error (bad run.json or
usage, missing or invalid data, a pickle-only or unsupported model, a precision, attention kernel
or method the device cannot do; retrying will not help, the message says which file or field and
what to do), 75 temporary (hub unreachable, ...), 143 preempted (SIGTERM: every rank finished its
step and a checkpoint was written, a restart resumes from it), 1 anything unexpected. With more
than one process the launcher (controller.train.launch) makes these survive torchrun, which
itself exits 1 for any worker failure.

Environment: `FTOPS_TOKENIZED_CACHE` (where tokenized data is cached; default
`<checkpointDir>/tokenized`, which survives preemption on a PVC), `FTOPS_GIT_COMMIT` (code
version recorded in the manifest when the image has no git), and `FTOPS_TEST_KILL_IN_CHECKPOINT`
(tests only, see controller.train.checkpoint).

How the loop computes (precision, attention, activation checkpointing, DDP or FSDP2) and why
it is our own loop: docs/training.md.
"""
