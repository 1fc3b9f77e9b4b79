"""`ftops` command line. Each concern registers its own subcommands; this file only
wires them, so light commands (validate, plan) never import torch or kubernetes.

`main` is the one error boundary of the command line: a command raises `FtopsError` (its
message is written for the person who has to act) and `main` prints `error: <message>` on
stderr and exits `exitcodes.FAILURE`, or the code the subcommand declared with
`set_defaults(error_exit=...)` (`validate` and `plan`: `USAGE`). Commands catch an FtopsError
only where they do something else with it (the evaluator still writes a failing report; `plan`
puts a dataset that cannot be prepared into the comment). Codes: controller.exitcodes.

Before a command runs, `controller.settings.resolve` fills in the global settings (home, repo,
backend, kubeconfig, operator config, output) from the flags, `FTOPS_*` variables and the config
file; a config file or variable that cannot be used is a usage error (exit 2). Shell completion
(argcomplete) answers from the same parser, so it never lists a flag that does not exist."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import controller.commands
from controller import exitcodes, settings
from controller.commands.version_commands import version
from controller.errors import FtopsError

# Offline by default: nothing is ever downloaded from a hub at run time, and DVC never phones home.
_ENV_DEFAULTS = {"DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


ORDER = ("spec", "plan", "reconcile", "status", "logs", "audit", "data", "train", "eval", "serve", "render", "model",
         "demo", "version")
"""The order `ftops --help` lists the concerns in: a pull request's checks, the controller,
reading what it did, then the steps one by one, then the utilities. Others follow by name."""


def command_modules() -> list[str]:
    """Every module in controller/commands defines `register(subparsers)`; each concern owns one
    module there and imports its heavy dependencies inside the command function, never at import."""
    names = [info.name for info in pkgutil.iter_modules(controller.commands.__path__) if not info.name.startswith("_")]
    rank = {f"{concern}_commands": i for i, concern in enumerate(ORDER)}
    return [f"controller.commands.{n}" for n in sorted(names, key=lambda n: (rank.get(n, len(rank)), n))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftops", description="GitOps for LLM fine-tuning.",
                                     epilog="Configuration (flag > environment > config file > default), exit codes "
                                            "and every command: docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"ftops {version()}")
    settings.add_globals(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in command_modules():
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (`ftops completion bash`)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        settings.resolve(args)
    except FtopsError as exc:
        return report(exc, exitcodes.USAGE)
    try:
        return int(args.func(args) or exitcodes.OK)
    except FtopsError as exc:  # a settings error is a usage error whatever the command
        code = getattr(exc, "exit_code", None)
        return report(exc, code if isinstance(code, int) else int(getattr(args, "error_exit", exitcodes.FAILURE)))
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
