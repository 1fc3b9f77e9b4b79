"""`python -m controller.train --config run.json` (exit codes: see controller.train).

With more than one process (distributed.nodes or gpusPerNode > 1) and not yet under torchrun,
the trainer re-executes itself through torchrun (controller.train.launch), so a Job's command
is the same whatever the world size."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from controller.train import EXIT_FAILED, EXIT_TEMPORARY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.train", description="Train one ftops run from run.json.")
    parser.add_argument("--config", required=True, help="Path of run.json (written by the controller).")
    args = parser.parse_args(argv)
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)

    from controller.errors import FtopsError
    from controller.runconfig import RunConfigError, load_run_config

    try:
        config = load_run_config(args.config)
        from controller.train.launch import launcher_env, needs_launcher, torchrun_command

        dist = config.distributed
        if needs_launcher(dist.nodes, dist.gpus_per_node) and "LOCAL_RANK" not in os.environ:
            argv2 = torchrun_command(
                os.path.abspath(args.config), nodes=dist.nodes, gpus_per_node=dist.gpus_per_node, run_id=config.run_id,
                node_rank=os.environ.get("NODE_RANK") or os.environ.get("JOB_COMPLETION_INDEX"),
                master_addr=os.environ.get("MASTER_ADDR"), master_port=int(os.environ.get("MASTER_PORT", "29500")),
                python=sys.executable,
            )
            _log("launch", argv=argv2)
            sys.stdout.flush()
            os.execve(sys.executable, argv2, launcher_env(os.environ))
        from controller.train.trainer import Trainer

        return Trainer(config, Path(args.config)).run()
    except RunConfigError as exc:
        _log("error", kind="permanent", message=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except FtopsError as exc:
        _log("error", kind="temporary" if exc.temporary else "permanent", message=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TEMPORARY if exc.temporary else EXIT_FAILED


def _log(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
