"""The README's command table is `ftops --help`, and docs/cli.md's exit codes are
controller/exitcodes.COMMANDS for every command the parser has: a command cannot be added,
renamed or removed without its documentation following."""
from __future__ import annotations

import argparse
import re

from controller import cli, exitcodes
from tests.conftest import REPO_ROOT


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _leaves(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    out = []
    for name, sub in _subcommands(parser).items():
        children = _leaves(sub, f"{prefix}{name} ")
        out += children or [f"{prefix}{name}"]
    return out


def _readme_commands() -> list[tuple[str, list[str]]]:
    """(command, subcommands named) for every `ftops ...` in the first column of the README's
    command table, in order."""
    text = (REPO_ROOT / "README.md").read_text()
    table = text.split("## Commands\n", 1)[1].split("\n\n| command |", 1)[1].split("\n\n", 1)[0]
    found = []
    for row in table.splitlines()[2:]:
        first = row.split(" | ")[0]
        for span in re.findall(r"`([^`]*)`", first):
            words = span.replace("\\|", "|").split()
            if words and words[0] == "ftops":
                found.append((words[1], words[2].split("|") if len(words) > 2 else []))
    return found


def test_the_readme_command_table_matches_ftops_help():
    parser = cli.build_parser()
    commands = _subcommands(parser)
    help_text = parser.format_help()
    listed = [name for name in commands if re.search(rf"^    {re.escape(name)}\b", help_text, re.M)]
    assert listed == list(commands)  # every command is in --help, in this order
    readme = _readme_commands()
    in_order = list(dict.fromkeys(name for name, _ in readme))
    assert in_order == listed, "README's command table and `ftops --help` differ (names or order)"
    for name, sub in commands.items():
        children = _subcommands(sub)
        if children:
            named = {s for n, subs in readme if n == name for s in subs}
            assert named == set(children), f"README names `ftops {name}` {sorted(named)}, the parser has {sorted(children)}"


def test_every_command_has_its_exit_codes_documented_in_one_place():
    leaves = _leaves(cli.build_parser())
    assert list(exitcodes.COMMANDS) == leaves, "controller/exitcodes.COMMANDS: one entry per command, in --help order"
    doc = (REPO_ROOT / "docs" / "cli.md").read_text().split("## Exit codes", 1)[1]
    rows = dict(re.findall(r"^\| `ftops ([^`]+)` \| (.*) \|$", doc, re.M))
    assert rows == exitcodes.COMMANDS, "docs/cli.md's exit code table is exitcodes.COMMANDS"


def test_the_configuration_table_of_the_docs_is_the_settings():
    from controller.settings import GLOBALS

    doc = (REPO_ROOT / "docs" / "cli.md").read_text().split("## Configuration", 1)[1].split("## Output", 1)[0]
    for g in GLOBALS:
        assert re.search(rf"\| `{re.escape(g.flag)}` \| `{g.env}` \| `{g.key}` \|", doc), g.flag
