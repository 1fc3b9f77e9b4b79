"""The local backend: each run is a subprocess on this machine, `python -m controller.train
--config run.json`, the same seam a Kubernetes Job uses.

Everything about a run lives on disk under `<root>/<run-id>/`, so a controller that restarts
(or a second LocalBackend instance) finds running and finished runs again:

    run.json    the run config as submitted
    spawn.json  pid of the keeper as started by the controller (before it has exec'd)
    pid.json    pid and start time, written by the keeper itself once it runs
    exit.json   the trainer's exit code, written atomically by the keeper when it ends
    train.log   the trainer's stdout and stderr
    cancelled   present when ftops cancelled the run

The keeper runs in its own session (not a child that dies with the controller) and records the
exit code itself, so "finished while the controller was down" is never confused with "lost".
Exit codes are controller.exitcodes': 0 ok, 78 config error (permanent), 75 temporary, 143
preempted (SIGTERM after a checkpoint: submitting again resumes it); anything else (1) failed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from controller import exitcodes
from controller.backends.base import (
    REASON_CANCELLED,
    REASON_CONFIG_ERROR,
    REASON_EXIT,
    REASON_LOST,
    Phase,
    Run,
    RunNotFound,
    RunState,
    tail_lines,
)
from controller.errors import PermanentError
from controller.fsutil import read_json as _read_json
from controller.fsutil import write_json_atomic as _write_json
from controller.runconfig import write_run_config

PERMANENT_EXITS = (exitcodes.CONFIG_ERROR,)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class LocalBackend:
    """Backend protocol on this machine. `command` (argv, `{config}` replaced by the run.json
    path) defaults to the trainer; tests and the demo may run another program the same way."""

    name = "local"

    def __init__(self, root: str | Path, command: Sequence[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.command = list(command) if command else [sys.executable, "-m", "controller.train", "--config", "{config}"]
        self.env = env or {}
        self._children: dict[str, subprocess.Popen] = {}

    def _dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise PermanentError(f"invalid run id {run_id!r}")
        return self.root / run_id

    # -- protocol

    def submit(self, run: Run) -> RunState:
        """Start the run, unless it is known already (then its state is returned unchanged).
        A preempted run (exit 143) is started again: the trainer resumes from its checkpoint."""
        d = self._dir(run.run_id)
        if d.exists():
            state = self.status(run.run_id)
            if state.phase is not Phase.PREEMPTED:
                return state
            (d / "exit.json").unlink()
        d.mkdir(parents=True, exist_ok=True)
        config_path = d / "run.json"
        write_run_config(run.config, config_path)
        argv = [a.replace("{config}", str(config_path)) for a in self.command]
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "FTOPS_RUN_ID": run.run_id, **self.env}
        attempts = _read_json(d / "attempts.json") or {"attempts": 0}
        attempts["attempts"] += 1
        (d / "attempts.json").write_text(json.dumps(attempts) + "\n")
        with open(d / "train.log", "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "controller.backends._runner", str(d), "--", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # survives the controller; cancel signals the whole group
            )
        self._children[run.run_id] = child
        (d / "pid.json").unlink(missing_ok=True)
        _write_json(d / "spawn.json", {"pid": child.pid, "startedAt": _now()})
        return self.status(run.run_id)

    def status(self, run_id: str) -> RunState:
        d = self._dir(run_id)
        if not (d / "run.json").exists():
            raise RunNotFound(f"run {run_id}: not known to the local backend under {self.root}")
        child = self._children.get(run_id)
        if child is not None:
            child.poll()  # reap our own keeper so a finished one is not a zombie
        spawned = _read_json(d / "spawn.json") or {}
        started = (_read_json(d / "pid.json") or spawned).get("startedAt")
        finished = _read_json(d / "exit.json")
        if finished is not None:
            code = int(finished["exitCode"])
            when = finished.get("finishedAt")
            if (d / "cancelled").exists():
                return RunState(run_id, Phase.FAILED, REASON_CANCELLED, "cancelled by ftops", code, started, when)
            if code == exitcodes.OK:
                return RunState(run_id, Phase.SUCCEEDED, "Complete", "", code, started, when)
            if code == exitcodes.PREEMPTED:
                return RunState(run_id, Phase.PREEMPTED, "Preempted",
                                "the trainer checkpointed after SIGTERM; submit again to resume", code, started, when)
            reason = REASON_CONFIG_ERROR if code in PERMANENT_EXITS else "TemporaryFailure" if code == exitcodes.TEMPORARY else REASON_EXIT
            return RunState(run_id, Phase.FAILED, reason, f"trainer exited with code {code}; see {d / 'train.log'}",
                            code, started, when)
        pid = (_read_json(d / "pid.json") or {}).get("pid")
        if pid is None:  # the keeper has not announced itself yet: starting, unless it is gone
            spawned_pid = spawned.get("pid")
            if spawned_pid is not None and self._exists(spawned_pid):
                return RunState(run_id, Phase.PENDING, "Starting", "the keeper process is starting", None, started)
            if (d / "pid.json").exists() or (d / "exit.json").exists():
                return self.status(run_id)
            return RunState(run_id, Phase.FAILED, REASON_LOST, "the keeper process never started", None, started)
        if self._alive(pid, d):
            return RunState(run_id, Phase.RUNNING, "Running", f"pid {pid}", None, started)
        # The keeper is gone without an exit record: the machine rebooted or it was SIGKILLed.
        if (_read_json(d / "exit.json")) is not None:  # it finished between our two reads
            return self.status(run_id)
        return RunState(run_id, Phase.FAILED, REASON_LOST,
                        f"process {pid} ended without recording an exit code (killed, or the machine restarted)",
                        None, started)

    @staticmethod
    def _exists(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, IndexError):
            return True  # no /proc (not Linux): trust kill(0)

    @staticmethod
    def _alive(pid: int, state_dir: Path) -> bool:
        """pid is running *and* is our keeper for this run (pids are reused after a reboot)."""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                return False
            if str(state_dir).encode() not in args:
                return False  # another process (or a zombie with no cmdline)
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] != "Z"
        return True

    def cancel(self, run_id: str, grace_seconds: float = 30) -> RunState:
        """SIGTERM the run's process group (the trainer checkpoints and exits), SIGKILL after
        `grace_seconds`. Cancelling a finished run changes nothing."""
        state = self.status(run_id)
        if state.finished:
            return state
        d = self._dir(run_id)
        (d / "cancelled").write_text(_now() + "\n")
        pid = (_read_json(d / "pid.json") or _read_json(d / "spawn.json") or {}).get("pid")
        if pid is not None and self._exists(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace_seconds
            while time.monotonic() < deadline and self._exists(pid) and not (d / "exit.json").exists():
                child = self._children.get(run_id)
                if child is not None and child.poll() is not None:
                    break
                time.sleep(0.05)
            if self._exists(pid) and not (d / "exit.json").exists():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        child = self._children.get(run_id)
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if not (d / "exit.json").exists():
            _write_json(d / "exit.json", {"exitCode": 137, "finishedAt": _now()})
        return self.status(run_id)

    def logs(self, run_id: str, tail: int | None = None) -> str:
        d = self._dir(run_id)
        if not (d / "run.json").exists():
            raise RunNotFound(f"run {run_id}: not known to the local backend under {self.root}")
        try:
            text = (d / "train.log").read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return tail_lines(text, tail)

    def runs(self) -> list[str]:
        """Every run id this backend has a record of (for a restarted controller's first pass)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "run.json").exists())

    def wait(self, run_id: str, timeout: float, poll: float = 0.1) -> RunState:
        """Poll until the run is finished or preempted, or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.status(run_id)
            if state.finished or state.phase is Phase.PREEMPTED or time.monotonic() >= deadline:
                return state
            time.sleep(poll)
