"""`ftops reconcile` and other CLI commands as subprocesses, the way an operator runs them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def reconcile(repo: Path, home: Path, crash_at: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FTOPS_CRASH_AT", None)
    if crash_at:
        env["FTOPS_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "reconcile", "--repo", str(repo), "--home", str(home),
         "--until-settled", str(timeout)],
        capture_output=True, text=True, env=env, timeout=timeout + 60,
    )


def ftops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True)
