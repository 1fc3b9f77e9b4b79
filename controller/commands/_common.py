"""The flags every controller-home command shares (not a command module: the leading
underscore keeps `cli.command_modules` from registering it)."""
from __future__ import annotations

import argparse

DEFAULT_HOME = ".ftops"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=DEFAULT_HOME, help=f"controller state: ledger, artifacts, status (default: {DEFAULT_HOME})")
