"""`ftops` command line. Each concern registers its own subcommands; this file only
wires them, so light commands (validate, plan) never import torch or kubernetes.

`main` is the one error boundary of the command line: a command raises `FtopsError` (its
message is written for the person who has to act) and `main` prints `error: <message>` on
stderr and exits `exitcodes.FAILURE`, or the code the subcommand declared with
`set_defaults(error_exit=...)` (`validate` and `plan`: `USAGE`). Commands catch an FtopsError
only where they do something else with it (the evaluator still writes a failing report; `plan`
puts a dataset that cannot be prepared into the comment). Codes: controller.exitcodes."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import controller.commands
from controller import exitcodes
from controller.errors import FtopsError

# Offline by default: nothing is ever downloaded from a hub at run time, and DVC never phones home.
_ENV_DEFAULTS = {"DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def command_modules() -> list[str]:
    """Every module in controller/commands defines `register(subparsers)`; each concern owns one
    module there and imports its heavy dependencies inside the command function, never at import."""
    return sorted(
        f"controller.commands.{info.name}"
        for info in pkgutil.iter_modules(controller.commands.__path__)
        if not info.name.startswith("_")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftops", description="GitOps for LLM fine-tuning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in command_modules():
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or exitcodes.OK)
    except FtopsError as exc:
        return report(exc, getattr(args, "error_exit", exitcodes.FAILURE))
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except BrokenPipeError:  # `ftops status | head`: the reader left; nothing went wrong
        return exitcodes.OK


def report(exc: FtopsError, code: int) -> int:
    """Print an FtopsError for the person at the terminal and return the exit code. A
    TemporaryError exits like any failure (see controller.exitcodes for why)."""
    print(f"error: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
