"""The local backends: each training run (`LocalBackend`) and each evaluation
(`LocalEvaluator`) is a subprocess on this machine, started the way a Kubernetes Job starts its
container: `python -m controller.train --config run.json`, `python -m controller.evaluate
--config eval.json`.

Everything about a process lives on disk under `<root>/<key>/`, so a controller that restarts
(or a second instance) finds running and finished processes again:

    run.json / eval.json   the config as submitted
    spawn.json             pid of the keeper as started by the controller (before it has exec'd)
    pid.json               pid and start time, written by the keeper itself once it runs
    exit.json              the process's exit code, written atomically by the keeper when it ends
    train.log / eval.log   its stdout and stderr
    cancelled              present when ftops cancelled it

The keeper (controller.backends._runner) runs in its own session (not a child that dies with
the controller) and records the exit code itself, so "finished while the controller was down"
is never confused with "lost". Exit codes are controller.exitcodes': 0 ok, 78 config error
(permanent), 75 temporary, 143 preempted (SIGTERM after a checkpoint: submitting again resumes
it); anything else (1) failed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from controller import exitcodes
from controller.backends.logs import tail_lines
from controller.errors import PermanentError
from controller.evalconfig import write_eval_config
from controller.fsutil import read_json as _read_json
from controller.fsutil import write_json_atomic as _write_json
from controller.runconfig import write_run_config
from controller.seams import EvalRequest, EvalState, Phase, Run, RunNotFound, RunReason, RunState

PERMANENT_EXITS = (exitcodes.CONFIG_ERROR,)
CHILD_ENV = {"DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True)
class ProcessState:
    """A detached process as its files on disk tell it."""

    phase: Phase
    reason: str
    message: str
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None


class DetachedProcesses:
    """Processes that outlive the controller, one folder per key under `root`."""

    def __init__(self, root: str | Path, log_name: str) -> None:
        self.root = Path(root)
        self.log_name = log_name
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def dir(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise PermanentError(f"invalid process key {key!r}")
        return self.root / key

    def known(self, key: str) -> bool:
        return (self.dir(key) / "spawn.json").exists()

    def start(self, key: str, argv: Sequence[str], env: dict[str, str]) -> None:
        """Start `argv` detached, its output appended to the log. The config files are already in dir(key)."""
        d = self.dir(key)
        d.mkdir(parents=True, exist_ok=True)
        (d / "exit.json").unlink(missing_ok=True)
        (d / "pid.json").unlink(missing_ok=True)
        attempts = _read_json(d / "attempts.json") or {"attempts": 0}
        attempts["attempts"] += 1
        _write_json(d / "attempts.json", attempts)
        with open(d / self.log_name, "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "controller.backends._runner", str(d), "--", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CHILD_ENV, **env},
                start_new_session=True,  # survives the controller; cancel signals the whole group
            )
        self._children[key] = child
        _write_json(d / "spawn.json", {"pid": child.pid, "startedAt": _now()})

    def state(self, key: str) -> ProcessState:
        """Raises FileNotFoundError for a key never started."""
        d = self.dir(key)
        if not (d / "spawn.json").exists():
            raise FileNotFoundError(d)
        child = self._children.get(key)
        if child is not None:
            child.poll()  # reap our own keeper so a finished one is not a zombie
        spawned = _read_json(d / "spawn.json") or {}
        started = (_read_json(d / "pid.json") or spawned).get("startedAt")
        finished = _read_json(d / "exit.json")
        if finished is not None:
            code = int(finished["exitCode"])
            when = finished.get("finishedAt")
            log = d / self.log_name
            if (d / "cancelled").exists():
                return ProcessState(Phase.FAILED, RunReason.CANCELLED, "cancelled by ftops", code, started, when)
            if code == exitcodes.OK:
                return ProcessState(Phase.SUCCEEDED, RunReason.COMPLETE, "", code, started, when)
            if code == exitcodes.PREEMPTED:
                return ProcessState(Phase.PREEMPTED, RunReason.PREEMPTED,
                                    "it checkpointed after SIGTERM; submit again to resume", code, started, when)
            reason = (RunReason.CONFIG_ERROR if code in PERMANENT_EXITS else
                      RunReason.TEMPORARY_FAILURE if code == exitcodes.TEMPORARY else RunReason.EXIT)
            return ProcessState(Phase.FAILED, reason, f"exited with code {code}; see {log}", code, started, when)
        pid = (_read_json(d / "pid.json") or {}).get("pid")
        if pid is None:  # the keeper has not announced itself yet: starting, unless it is gone
            spawned_pid = spawned.get("pid")
            if spawned_pid is not None and _exists(spawned_pid):
                return ProcessState(Phase.PENDING, RunReason.STARTING, "the keeper process is starting", None, started)
            if (d / "pid.json").exists() or (d / "exit.json").exists():
                return self.state(key)
            return ProcessState(Phase.FAILED, RunReason.LOST, "the keeper process never started", None, started)
        if _keeper_alive(pid, d):
            return ProcessState(Phase.RUNNING, RunReason.RUNNING, f"pid {pid}", None, started)
        # The keeper is gone without an exit record: the machine rebooted or it was SIGKILLed.
        if _read_json(d / "exit.json") is not None:  # it finished between our two reads
            return self.state(key)
        return ProcessState(Phase.FAILED, RunReason.LOST,
                            f"process {pid} ended without recording an exit code (killed, or the machine restarted)",
                            None, started)

    def cancel(self, key: str, grace_seconds: float) -> None:
        """SIGTERM the process group (the trainer checkpoints and exits), SIGKILL after the grace."""
        d = self.dir(key)
        (d / "cancelled").write_text(_now() + "\n")
        pid = (_read_json(d / "pid.json") or _read_json(d / "spawn.json") or {}).get("pid")
        if pid is not None and _exists(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace_seconds
            while time.monotonic() < deadline and _exists(pid) and not (d / "exit.json").exists():
                child = self._children.get(key)
                if child is not None and child.poll() is not None:
                    break
                time.sleep(0.05)
            if _exists(pid) and not (d / "exit.json").exists():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        child = self._children.get(key)
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if not (d / "exit.json").exists():
            _write_json(d / "exit.json", {"exitCode": 137, "finishedAt": _now()})

    def logs(self, key: str, tail: int | None = None) -> str:
        try:
            text = (self.dir(key) / self.log_name).read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return tail_lines(text, tail)

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "spawn.json").exists())


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return True  # no /proc (not Linux): trust kill(0)


def _keeper_alive(pid: int, state_dir: Path) -> bool:
    """pid is running *and* is our keeper for this process (pids are reused after a reboot)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
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


class LocalBackend:
    """The Backend seam on this machine. `command` (argv, `{config}` replaced by the run.json
    path) defaults to the trainer; tests and the demo may run another program the same way."""

    name = "local"

    def __init__(self, root: str | Path, command: Sequence[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.command = list(command) if command else [sys.executable, "-m", "controller.train", "--config", "{config}"]
        self.env = env or {}
        self.processes = DetachedProcesses(self.root, "train.log")

    def submit(self, run: Run) -> RunState:
        """Start the run, unless it is known already (then its state is returned unchanged). A
        preempted run (exit 143), or one that failed for another reason than its config, is
        started again: the trainer resumes from its last checkpoint."""
        if self.processes.known(run.run_id):
            state = self.status(run.run_id)
            restart = state.phase is Phase.PREEMPTED or (
                state.phase is Phase.FAILED and state.reason != RunReason.CONFIG_ERROR)
            if not restart:
                return state
        config_path = self.processes.dir(run.run_id) / "run.json"
        write_run_config(run.config, config_path)
        argv = [a.replace("{config}", str(config_path)) for a in self.command]
        self.processes.start(run.run_id, argv, {"FTOPS_RUN_ID": run.run_id, **self.env})
        return self.status(run.run_id)

    def status(self, run_id: str) -> RunState:
        try:
            s = self.processes.state(run_id)
        except FileNotFoundError:
            raise RunNotFound(f"run {run_id}: not known to the local backend under {self.root}") from None
        return RunState(run_id, s.phase, s.reason, f"trainer {s.message}" if s.exit_code else s.message,
                        s.exit_code, s.started_at, s.finished_at)

    def cancel(self, run_id: str, grace_seconds: float = 30) -> RunState:
        """SIGTERM the run's process group (the trainer checkpoints and exits), SIGKILL after
        `grace_seconds`. Cancelling a finished run changes nothing."""
        state = self.status(run_id)
        if state.finished:
            return state
        self.processes.cancel(run_id, grace_seconds)
        return self.status(run_id)

    def logs(self, run_id: str, tail: int | None = None) -> str:
        if not self.processes.known(run_id):
            raise RunNotFound(f"run {run_id}: not known to the local backend under {self.root}")
        return self.processes.logs(run_id, tail)

    def runs(self) -> list[str]:
        """Every run id this backend has a record of (for a restarted controller's first pass)."""
        return self.processes.keys()

    def wait(self, run_id: str, timeout: float, poll: float = 0.1) -> RunState:
        """Poll until the run is finished or preempted, or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.status(run_id)
            if state.finished or state.phase is Phase.PREEMPTED or time.monotonic() >= deadline:
                return state
            time.sleep(poll)


class LocalEvaluator:
    """The Evaluator seam on this machine: `python -m controller.evaluate --config eval.json`
    as a detached subprocess per (run, evaluation id). The report lands in the run's folder of
    the local artifact store; the marker beside it names the evaluation it is."""

    name = "local"

    def __init__(self, root: str | Path, command: Sequence[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.command = list(command) if command else [sys.executable, "-m", "controller.evaluate", "--config", "{config}"]
        self.env = env or {}
        self.processes = DetachedProcesses(self.root, "eval.log")

    @staticmethod
    def key(request: EvalRequest) -> str:
        return f"{request.config.spec_name}-{request.run_id}-{request.eval_id}"

    def _finished(self, request: EvalRequest) -> EvalState | None:
        from controller.evaluate.__main__ import MARKER

        run_dir = Path(request.config.run_uri)
        marker = _read_json(run_dir / MARKER)
        report = run_dir / "eval" / "report.json"
        if marker and marker.get("evalId") == request.eval_id and report.is_file():
            return EvalState(request.eval_id, Phase.SUCCEEDED, RunReason.COMPLETE, "", str(report))
        return None

    def status(self, request: EvalRequest) -> EvalState | None:
        finished = self._finished(request)
        if finished is not None:
            return finished
        key = self.key(request)
        if not self.processes.known(key):
            return None
        s = self.processes.state(key)
        if s.phase is Phase.SUCCEEDED:  # exited 0, but the report beside the marker is not this evaluation's
            return EvalState(request.eval_id, Phase.FAILED, RunReason.CONFIG_ERROR,
                             f"the evaluation exited 0 without a report for {request.eval_id}; see {self.root / key}")
        return EvalState(request.eval_id, s.phase, s.reason, s.message)

    def submit(self, request: EvalRequest) -> EvalState:
        state = self.status(request)
        restart = state is not None and (state.phase is Phase.PREEMPTED or (
            state.phase is Phase.FAILED and state.reason != RunReason.CONFIG_ERROR))
        if state is not None and not restart:
            return state
        key = self.key(request)
        config_path = self.processes.dir(key) / "eval.json"
        write_eval_config(request.config, config_path)
        argv = [a.replace("{config}", str(config_path)) for a in self.command]
        self.processes.start(key, argv, {"FTOPS_RUN_ID": request.run_id, **self.env})
        return EvalState(request.eval_id, Phase.PENDING, RunReason.STARTING, "evaluation started")

    def cancel(self, request: EvalRequest) -> EvalState:
        key = self.key(request)
        if not self.processes.known(key):
            return EvalState(request.eval_id, Phase.FAILED, RunReason.CANCELLED, "no such evaluation")
        if self.processes.state(key).phase not in (Phase.SUCCEEDED, Phase.FAILED):
            self.processes.cancel(key, grace_seconds=10)
        s = self.processes.state(key)
        return EvalState(request.eval_id, s.phase, s.reason, s.message)

    def logs(self, request: EvalRequest, tail: int | None = None) -> str:
        return self.processes.logs(self.key(request), tail)


__all__ = ["DetachedProcesses", "LocalBackend", "LocalEvaluator"]
