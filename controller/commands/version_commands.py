"""`ftops version` and `ftops completion bash|zsh|fish`.

Completion is argcomplete's (a maintained library): the shell script it prints calls ftops back
with the words typed so far, and ftops answers from its own argument parser, so a completion
can never offer a command or flag that does not exist. Install it with, e.g.,
`eval "$(ftops completion bash)"` in ~/.bashrc, `ftops completion zsh > ~/.zfunc/_ftops`... (docs/cli.md).

Exit codes: 0; 2 usage.
"""
from __future__ import annotations

import argparse
import platform
import sys

from controller.output import add_output_flag, dump, fmt

SHELLS = ("bash", "zsh", "fish")


def register(sub: argparse._SubParsersAction) -> None:
    version = sub.add_parser("version", help="the ftops version (and Python's, and the platform's)")
    add_output_flag(version)
    version.set_defaults(func=cmd_version)

    completion = sub.add_parser("completion", help="the shell completion script for bash, zsh or fish",
                                description='Load it with: eval "$(ftops completion bash)" (bash), '
                                            "ftops completion zsh > \"${fpath[1]}/_ftops\" (zsh), "
                                            "ftops completion fish > ~/.config/fish/completions/ftops.fish (fish).")
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(func=cmd_completion)


def version() -> str:
    """The installed ftops version (the package metadata; unknown when run from a bare tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("ftops")
    except PackageNotFoundError:
        return "0+unknown"


def cmd_version(args: argparse.Namespace) -> int:
    info = {"ftops": version(), "python": platform.python_version(), "platform": platform.platform(terse=True)}
    format_ = fmt(args)
    if format_ in ("json", "yaml"):
        print(dump(info, format_))
    elif format_ == "name":
        print(f"ftops/{info['ftops']}")
    else:
        print(f"ftops {info['ftops']} (Python {info['python']}, {info['platform']})")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["ftops"], shell=args.shell))
    return 0
