"""`ftops` command line. Each concern registers its own subcommands; this file only
wires them, so light commands (validate, plan) never import torch or kubernetes."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import controller.commands

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
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
