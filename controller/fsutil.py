"""File helpers every adapter needs the same way: content hashes and atomic writes.

Atomic means write to a temporary file in the same folder, flush, fsync, rename: a reader (or a
process restarted after kill -9) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any | None:
    """The parsed file, or None when it is missing or not JSON (a crash never leaves half a
    file, so unreadable means never written)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


def json_lines(path: str | Path, what: str = "example"):
    """(line number, "file:line", object) for each non-blank line of a JSONL file. A line that
    is not JSON raises PermanentError naming the file and line. Callers check the file exists
    (their messages say what the file is for)."""
    from controller.errors import PermanentError

    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PermanentError(f"{where}: not valid JSON ({exc.msg}); each line must be one {what}") from None
            yield lineno, where, obj
