"""`python -m controller.backends._runner STATE_DIR -- COMMAND...`: the local backend's keeper.

It runs COMMAND (the trainer), forwards SIGTERM/SIGINT to it, and records the exit code in
STATE_DIR/exit.json atomically. It exists so that the exit code is recorded even when the
controller that started the run has died or restarted: the keeper runs in its own session,
detached from the controller, and the controller reads STATE_DIR when it comes back."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def _write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1:
        print("usage: python -m controller.backends._runner STATE_DIR -- COMMAND...", file=sys.stderr)
        return 2
    state = Path(argv[0])
    command = argv[2:]
    _write(state / "pid.json", {"pid": os.getpid(), "startedAt": datetime.now(timezone.utc).isoformat()})
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"ftops local backend: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        _write(state / "exit.json", {"exitCode": 127, "finishedAt": datetime.now(timezone.utc).isoformat()})
        return 127

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    if code < 0:  # killed by a signal: report it as a shell would (128 + signal)
        code = 128 - code
    _write(state / "exit.json", {"exitCode": code, "finishedAt": datetime.now(timezone.utc).isoformat()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
