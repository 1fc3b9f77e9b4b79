"""`ftops status`, `ftops get`: asking the controller what it did, from its status files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from controller.commands._common import _common


def register(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="every spec's status, like `kubectl get`")
    _common(status)
    status.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    status.set_defaults(func=cmd_status)

    get = sub.add_parser("get", help="one spec's status with its conditions")
    _common(get)
    get.add_argument("spec")
    get.add_argument("-o", "--output", choices=("text", "yaml", "json"), default="text")
    get.set_defaults(func=cmd_get)


def _statuses(home: str):
    from controller.home import Home
    from controller.reconcile import load_statuses

    return load_statuses(Home(Path(home)).status)


def _table(statuses) -> str:
    rows = [("NAME", "PHASE", "RUN", "SERVING", "GATE", "REVISION", "MESSAGE")]
    for name, status in sorted(statuses.items()):
        gate = status.condition("GatePassed")
        gate_text = "-" if gate is None else ("Passed" if gate.status == "True" else gate.reason)
        not_done = next((c for c in status.conditions if c.status != "True" and c.type not in ("Ready",)), None)
        stalled = status.condition("Stalled")
        message = (stalled.message if stalled is not None and stalled.status == "True" else
                   not_done.message if not_done is not None else "")
        rows.append((name, status.phase, status.run_id or "-", status.serving_run_id or "-", gate_text,
                     (status.observed_revision or "-")[:8], message[:80]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def cmd_status(args: argparse.Namespace) -> int:
    statuses = _statuses(args.home)
    if args.output == "table":
        print(_table(statuses) if statuses else "no specs reconciled yet")
        return 0
    payload = [s.to_dict() for _, s in sorted(statuses.items())]
    print(_dump(payload, args.output))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    status = _statuses(args.home).get(args.spec)
    if status is None:
        print(f"error: no status for spec '{args.spec}' in {args.home}", file=sys.stderr)
        return 1
    if args.output != "text":
        print(_dump(status.to_dict(), args.output))
        return 0
    print(f"{status.name}: {status.phase} (revision {(status.observed_revision or '-')[:12]}, run {status.run_id or '-'}, "
          f"serving {status.serving_run_id or '-'})")
    for c in status.conditions:
        print(f"  {c.type:<12} {c.status:<7} {c.reason:<20} {c.message}")
    return 0


def _dump(payload, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(payload, indent=2)
    import yaml

    return yaml.safe_dump(payload, sort_keys=False).rstrip()
