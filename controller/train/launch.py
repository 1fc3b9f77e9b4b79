"""torchrun command lines for multi-GPU and multi-node runs (pure; unit tested).

Why a pure function: the controller renders it into a Job's command and the trainer re-executes
itself through it; neither can be exercised on a CPU-only machine, so the exact argv is what
the tests pin down. On Kubernetes an Indexed Job gives each pod its node rank in
`JOB_COMPLETION_INDEX`; the rendezvous endpoint is the headless service of pod 0.
"""
from __future__ import annotations

import shlex
from typing import Mapping


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
