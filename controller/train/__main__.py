"""`python -m controller.train --config run.json` (exit codes: controller.exitcodes).

With more than one process (distributed.nodes or gpusPerNode > 1) and not yet under torchrun,
the trainer starts torchrun as its child and supervises it (controller.train.launch), so a Job's
command is the same whatever the world size and its exit code survives torchrun."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from controller import exitcodes


class _Parser(argparse.ArgumentParser):
    """A wrong command line is a config error too (the Job's command is rendered from config)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(exitcodes.CONFIG_ERROR)


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """`own_process`: this is the trainer's process (`python -m controller.train`), which may keep
    libraries it will not use out of itself (controller.importguard); not when called in-process."""
    parser = _Parser(prog="python -m controller.train", description="Train one ftops run from run.json.")
    parser.add_argument("--config", required=True, help="Path of run.json (written by the controller).")
    args = parser.parse_args(argv)
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    from controller.train.launch import record_exit, record_start

    worker = "LOCAL_RANK" in os.environ
    if worker:
        # A rank that finished (e.g. checkpointed after a preemption) may get torchrun's SIGTERM
        # while it tears down; it must still record its code. The trainer installs its own
        # handler while it runs (controller.train.trainer._Preemption) and restores this one.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        record_start()
    code = _main(args.config, worker, own_process)
    if worker:
        record_exit(code)
    elif code == exitcodes.OK:
        code = _upload(args.config)
    return code


def _upload(config_path: str) -> int:
    """In a pod: the finished run goes to the artifact store (controller.train.upload)."""
    from controller.train.upload import RUN_URI_ENV, upload_finished_run

    if not os.environ.get(RUN_URI_ENV):
        return exitcodes.OK
    from controller.runconfig import load_run_config

    return upload_finished_run(load_run_config(config_path).output_dir)


def _main(config_path: str, worker: bool, own_process: bool = False) -> int:
    from controller.errors import FtopsError
    from controller.importguard import without_bitsandbytes_unless_qlora
    from controller.runconfig import RunConfigError, load_run_config

    try:
        config = load_run_config(config_path)
        if own_process:
            without_bitsandbytes_unless_qlora(config.method.type)  # 1.3 s of CPU at import (controller.importguard)
        from controller.train.launch import launcher_env, needs_launcher, supervise, torchrun_command

        dist = config.distributed
        if needs_launcher(dist.nodes, dist.gpus_per_node) and not worker:
            argv = torchrun_command(
                os.path.abspath(config_path), nodes=dist.nodes, gpus_per_node=dist.gpus_per_node, run_id=config.run_id,
                # Indexed Job / JobSet: JOB_COMPLETION_INDEX; Kubeflow's PyTorchJob: PET_NODE_RANK
                node_rank=os.environ.get("NODE_RANK") or os.environ.get("PET_NODE_RANK")
                or os.environ.get("JOB_COMPLETION_INDEX"),
                master_addr=os.environ.get("MASTER_ADDR"), master_port=int(os.environ.get("MASTER_PORT", "29500")),
                python=sys.executable,
            )
            _log("launch", argv=argv)
            sys.stdout.flush()
            result = supervise(argv, launcher_env(os.environ), local_ranks=dist.gpus_per_node)
            _log("exit", exitCode=result.exit_code, torchrunExitCode=result.torchrun_exit_code,
                 rankExitCodes={str(r): c for r, c in result.rank_exit_codes.items()}, sigterm=result.terminated)
            return result.exit_code
        from controller.train.trainer import Trainer

        return Trainer(config, Path(config_path)).run()
    except RunConfigError as exc:
        _log("error", kind="config", message=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    except FtopsError as exc:
        _log("error", kind="temporary" if exc.temporary else "config", message=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.TEMPORARY if exc.temporary else exitcodes.CONFIG_ERROR


def _log(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


if __name__ == "__main__":
    sys.exit(main(own_process=True))
