"""How every command prints: one `-o/--output` flag with the same choices everywhere, tables
that fit the terminal, ages, and colour only where a person is looking.

Why one module: kubectl users expect `-o json` to work on every command and a table's last
column to end in `…` rather than be cut mid-word, and CI logs must never receive colour codes.
Rich (a maintained library) measures the terminal and handles NO_COLOR and pipes; this module
decides the policy once:

- `table` (the default) is the form for people: a table for lists, text for one object;
  `wide` adds columns; `json` and `yaml` are the machine forms (the same payload); `name`
  prints `kind/name` identifiers, one per line, for `xargs`.
- Colour only on a terminal, never when piped and never with `NO_COLOR` set (no-color.org).
- On a terminal, tables fit its width: every column keeps its full width except the flexible
  one (MESSAGE), which is shortened with an ellipsis. Piped output is never shortened unless
  `COLUMNS` asks for it, so `ftops get | grep` sees whole messages.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Sequence, TextIO

if TYPE_CHECKING:
    from rich.console import Console

FORMATS = ("table", "wide", "json", "yaml", "name")
"""The choices of `-o/--output`, the same on every command."""
MACHINE = ("json", "yaml")

_LEGACY = {"text": "table", "markdown": "table"}
"""Earlier spellings of the human form (`validate -o text`, `plan -o markdown`)."""

PIPED_WIDTH = 100_000
"""Piped output is not fitted to any width (see the module docstring)."""


def output_format(value: str) -> str:
    """argparse `type` of -o: the legacy human spellings mean `table`."""
    return _LEGACY.get(value, value)


def add_output_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, global_: bool = False) -> None:
    """The one output flag. On a subcommand its default is SUPPRESS, so `ftops -o json get` (the
    flag before the subcommand, parsed by the top-level parser) is not overwritten; settings
    fills in `table` when neither gave one."""
    parser.add_argument("-o", "--output", type=output_format, choices=FORMATS, metavar="{" + ",".join(FORMATS) + "}",
                        default=None if global_ else argparse.SUPPRESS,
                        help="table (default), wide, json, yaml or name (kind/name per line)")


def fmt(args: argparse.Namespace) -> str:
    """The output format a command was asked for (commands called in-process may omit it)."""
    return output_format(getattr(args, "output", None) or "table")


# ----------------------------------------------------------------------------- the console


def console(file: TextIO | None = None) -> "Console":
    """A rich Console for `file` (stdout): colour and width only on a terminal."""
    from rich.console import Console

    stream = file or sys.stdout
    tty = stream.isatty() if hasattr(stream, "isatty") else False
    no_color = bool(os.environ.get("NO_COLOR")) or not tty
    width = None if tty else _piped_width()
    return Console(file=stream, force_terminal=tty, no_color=no_color, color_system=None if no_color else "auto",
                   width=width, highlight=False, markup=False, emoji=False, soft_wrap=not tty)


def _piped_width() -> int:
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPED_WIDTH


def styled(text: str, style: str | None) -> Any:
    """`text` with a rich style (dropped by a console without colour)."""
    from rich.text import Text

    return Text(text, style=style or "")


PHASE_STYLES = {"Ready": "green", "Stalled": "red bold", "Passed": "green", "Failed": "red", "GateFailed": "red",
                "True": "green", "False": "yellow", "Unknown": "dim", "serving": "green bold", "Warning": "yellow",
                "Normal": ""}


def phase_style(word: str) -> str | None:
    return PHASE_STYLES.get(word, "yellow" if word else None)


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Col:
    header: str
    flex: bool = False
    """The column shortened (with `…`) when the table is wider than the terminal."""
    wide_only: bool = False
    """Shown with `-o wide` only."""
    styler: Any = None
    """cell text -> style name (PHASE, STATUS columns)."""


def print_table(columns: Sequence[Col], rows: Iterable[Sequence[str]], *, wide: bool = False,
                out: "Console | None" = None, min_flex: int = 20, indent: int = 0, header: bool = True) -> None:
    """kubectl-style: no borders, three spaces between columns, header in capitals. `indent`
    shifts it right (a table inside `describe`); `header=False` prints rows only (`get -w`)."""
    from rich.table import Table

    con = out or console()
    shown = [i for i, c in enumerate(columns) if wide or not c.wide_only]
    data = [[str(row[i]) if row[i] is not None else "" for i in shown] for row in rows]
    cols = [columns[i] for i in shown]
    widths = [max([len(c.header)] + [len(r[k]) for r in data]) for k, c in enumerate(cols)]
    gap = 3
    fixed = sum(w for w, c in zip(widths, cols) if not c.flex) + gap * (len(cols) - 1) + indent
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, gap, 0, 0), collapse_padding=True,
                  show_header=header, header_style="bold" if con.is_terminal else "", expand=False)
    for k, c in enumerate(cols):
        cap = max(min_flex, con.width - fixed) if c.flex else None  # only the flexible column shrinks
        table.add_column(c.header, no_wrap=True, overflow="ellipsis", max_width=cap,
                         min_width=None if c.flex else widths[k])
    for r in data:
        table.add_row(*[styled(cell, cols[k].styler(cell) if cols[k].styler else None) for k, cell in enumerate(r)])
    with con.capture() as captured:
        # a terminal narrower than the fixed columns: lines wrap rather than lose the message
        con.print(table, width=max(con.width, fixed + min_flex))
    # rich pads every cell to its column's width; a line ends where its text does
    lines = [" " * indent + _TRAILING.sub(r"\1", line) for line in captured.get().splitlines()]
    con.file.write("\n".join(lines) + "\n")


_TRAILING = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")


def ellipsize(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending in `…` when it was longer."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


# ----------------------------------------------------------------------------- values


def dump(payload: Any, format_: str) -> str:
    """The machine forms: the same payload as JSON or YAML."""
    if format_ == "json":
        return json.dumps(payload, indent=2, sort_keys=False, ensure_ascii=False)
    import yaml

    return yaml.safe_dump(payload, sort_keys=False, allow_unicode=True).rstrip()


def parse_time(value: str | float | int | None) -> float | None:
    """Seconds since the epoch from an RFC 3339 timestamp (or a number already)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def age(then: str | float | None, now: float) -> str:
    """How long ago, as kubectl prints it: 45s, 7m, 5h, 3d (`<unknown>` without a time)."""
    seconds = parse_time(then)
    if seconds is None:
        return "<unknown>"
    delta = max(0, int(now - seconds))
    if delta < 120:
        return f"{delta}s"
    if delta < 3 * 3600:
        return f"{delta // 60}m"
    if delta < 48 * 3600:
        return f"{delta // 3600}h"
    return f"{delta // 86400}d"


def duration(text: str) -> float:
    """`30s`, `5m`, `1h`, `2h30m` or plain seconds -> seconds (what `--timeout` takes)."""
    from controller.errors import FtopsError

    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise FtopsError(f"'{text}' is not a duration: write e.g. 30s, 5m, 1h or 1h30m")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)


__all__ = ["Col", "FORMATS", "add_output_flag", "age", "console", "dump", "duration", "ellipsize", "fmt",
           "output_format", "parse_time", "print_table"]
