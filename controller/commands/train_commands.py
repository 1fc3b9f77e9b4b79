"""`ftops train --config run.json`: run the trainer in this process, exactly as
`python -m controller.train` does in a Job (same exit codes, see controller.train)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="Train one run from its run.json (what the local backend and Kubernetes Jobs run).",
        description="Train one run from run.json. Exit codes: 0 done, 1 bad input, 75 retry later, 143 preempted (checkpointed).",
    )
    train.add_argument("--config", required=True, help="Path of run.json (written by the controller).")
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from controller.train.__main__ import main

    return main(["--config", args.config])
