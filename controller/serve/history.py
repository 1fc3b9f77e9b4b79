"""Deployment history per spec: `<store>/<spec>/deployments.jsonl`, append-only.

Why a file of its own beside the audit ledger: `ftops rollback` must know which runs served
before, in order, without depending on the ledger being present (a local setup, a test). Each line
is one transition event, exactly as returned to the caller (who also appends it to the ledger).
Lines are appended under an exclusive lock with one write + fsync, so concurrent writers never
interleave and a crash loses at most the line being written (a torn last line is skipped).
"""
from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path

PROMOTING_KINDS = ("deploy.promoted", "deploy.rolled_back")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def history_path(store: str | Path, spec: str) -> Path:
    return Path(store) / spec / "deployments.jsonl"


def append(store: str | Path, spec: str, event: dict) -> dict:
    path = history_path(store, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(event, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return event


def read(store: str | Path, spec: str) -> list[dict]:
    try:
        text = history_path(store, spec).read_text()
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from a crash
    return events


def serving_run(store: str | Path, spec: str) -> str | None:
    """The run serving after the last transition (None: nothing serves)."""
    for event in reversed(read(store, spec)):
        if "servingRunId" in event:
            return event["servingRunId"]
    return None


def served_runs(store: str | Path, spec: str) -> list[dict]:
    """Events that made a run the serving one, oldest first."""
    return [e for e in read(store, spec) if e.get("kind") in PROMOTING_KINDS and e.get("servingRunId")]
