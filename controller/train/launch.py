"""Launching a multi-process run through torchrun, so that its exit code still means one thing.

- `torchrun_command` (pure; unit tested): the argv that starts the trainer on every GPU of every
  node. On Kubernetes an Indexed Job gives each pod its node rank in `JOB_COMPLETION_INDEX`; the
  rendezvous endpoint is the headless service of pod 0.
- `supervise`: the trainer's entry point runs torchrun as a child and stays its parent (PID 1 in
  the container). torchrun exits 1 for *any* worker failure, and on SIGTERM it kills its workers
  after a fixed 30 s, which is not always enough to write a checkpoint. So each worker records its
  pid when it starts and its exit code when it ends (`record_start` / `record_exit`, one small
  JSON file per rank in a directory the launcher owns); on SIGTERM the launcher signals the
  workers itself, and when torchrun is done it turns the ranks' codes back into the run's
  (`launcher_exit_code`): a config error (78) on any rank is a config error, a SIGTERM that every
  rank answered with a checkpoint is a preemption (143), and so on. Kubernetes' pod failure
  policy then sees the same codes whatever the world size.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from controller import exitcodes

STATUS_DIR_ENV = "FTOPS_RANK_STATUS_DIR"
"""Set by `supervise` for the workers: where each rank writes rank-<N>.pid and rank-<N>.exit."""


def needs_launcher(nodes: int, gpus_per_node: int) -> bool:
    """More than one process: the run must be started through torchrun."""
    return nodes > 1 or gpus_per_node > 1


def torchrun_command(
    config_path: str,
    *,
    nodes: int = 1,
    gpus_per_node: int = 1,
    run_id: str = "ftops",
    node_rank: int | str | None = None,
    master_addr: str | None = None,
    master_port: int = 29500,
    python: str = "python",
) -> list[str]:
    """argv that starts `python -m controller.train --config CONFIG` on every GPU of every node.

    Single node: `--standalone` (local rendezvous, no address needed). Several nodes: c10d
    rendezvous at `master_addr:master_port`, keyed by the run id so two runs never join each
    other; `node_rank` may be a literal or a shell variable reference such as
    `$(JOB_COMPLETION_INDEX)` for a Kubernetes manifest."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes and gpusPerNode must be >= 1, got nodes={nodes}, gpusPerNode={gpus_per_node}")
    argv = [python, "-m", "torch.distributed.run"]
    if nodes == 1:
        argv += ["--standalone", "--nnodes=1", f"--nproc-per-node={gpus_per_node}"]
    else:
        if not master_addr:
            raise ValueError("a multi-node run needs master_addr (the rendezvous host, e.g. pod 0's DNS name)")
        if node_rank is None:
            raise ValueError("a multi-node run needs node_rank (e.g. $(JOB_COMPLETION_INDEX) in a Kubernetes Job)")
        argv += [
            f"--nnodes={nodes}",
            f"--nproc-per-node={gpus_per_node}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={master_addr}:{master_port}",
            f"--rdzv-id={run_id}",
            "--max-restarts=0",
        ]
    argv += ["-m", "controller.train", "--config", config_path]
    return argv


def launcher_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the launched processes: offline, one CPU thread pool per rank."""
    env = dict(base or {})
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def shell_command(argv: list[str]) -> str:
    """One shell-quoted line (for logs and manifests)."""
    return " ".join(shlex.quote(a) if not a.startswith("--node-rank=$") else a for a in argv)


def launcher_exit_code(torchrun_code: int, rank_codes: Mapping[int, int], terminated: bool, local_ranks: int) -> int:
    """Pure: the run's exit code from torchrun's and the ranks' (controller.exitcodes).

    A config error on any rank wins: the other ranks only died with it. Then a preemption: the
    launcher got SIGTERM, or every rank exited PREEMPTED (another node's SIGTERM stops all ranks
    at the same step boundary; `local_ranks` of them must have said so, a missing one crashed).
    Then a temporary error. Anything else is torchrun's own failure code (1), an unexpected
    failure that the Job retries."""
    codes = set(rank_codes.values())
    everyone_preempted = len(rank_codes) == local_ranks and codes == {exitcodes.PREEMPTED}
    if torchrun_code == exitcodes.OK and codes <= {exitcodes.OK}:
        return exitcodes.OK
    if exitcodes.CONFIG_ERROR in codes:
        return exitcodes.CONFIG_ERROR
    if terminated or everyone_preempted:
        return exitcodes.PREEMPTED
    if exitcodes.TEMPORARY in codes:
        return exitcodes.TEMPORARY
    return torchrun_code if torchrun_code not in (exitcodes.OK, exitcodes.CONFIG_ERROR) else exitcodes.FAILURE


def _rank() -> str:
    return os.environ.get("RANK", "0")


def record_start() -> None:
    """In a worker started by `supervise`: announce this rank's pid (for SIGTERM forwarding)."""
    status = os.environ.get(STATUS_DIR_ENV)
    if status:
        _write(Path(status) / f"rank-{_rank()}.pid", {"pid": os.getpid(), "localRank": os.environ.get("LOCAL_RANK")})


def record_exit(code: int) -> None:
    """In a worker started by `supervise`: the code this rank exits with."""
    status = os.environ.get(STATUS_DIR_ENV)
    if status:
        _write(Path(status) / f"rank-{_rank()}.exit", {"exitCode": int(code)})


def _write(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def _read_all(status: Path, suffix: str, key: str) -> dict[int, int]:
    out = {}
    for path in status.glob(f"rank-*{suffix}"):
        try:
            out[int(path.name.removeprefix("rank-").removesuffix(suffix))] = int(json.loads(path.read_text())[key])
        except (OSError, ValueError, KeyError):
            continue
    return out


@dataclass(frozen=True)
class LaunchResult:
    """How a supervised torchrun ended: the run's code, torchrun's own, and each rank's."""

    exit_code: int
    torchrun_exit_code: int
    rank_exit_codes: dict[int, int]
    terminated: bool


def supervise(argv: Sequence[str], env: Mapping[str, str], local_ranks: int) -> LaunchResult:
    """Run torchrun (`argv`) as a child, forward SIGTERM to its workers, and derive the run's exit
    code from the ranks' recorded codes (see `launcher_exit_code`)."""
    with tempfile.TemporaryDirectory(prefix="ftops-ranks-") as tmp:
        status = Path(tmp)
        child = subprocess.Popen(list(argv), env={**env, STATUS_DIR_ENV: str(status)})
        terminated = False

        def forward(signum, frame) -> None:  # noqa: ARG001
            nonlocal terminated
            terminated = True
            pids = _read_all(status, ".pid", "pid")
            for pid in pids.values():
                try:
                    os.kill(pid, signal.SIGTERM)  # the workers checkpoint at the next step boundary
                except ProcessLookupError:
                    pass
            if not pids:  # none started yet: torchrun stops them itself
                child.send_signal(signal.SIGTERM)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            code = child.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        ranks = _read_all(status, ".exit", "exitCode")
        return LaunchResult(launcher_exit_code(code, ranks, terminated, local_ranks), code, dict(sorted(ranks.items())), terminated)
