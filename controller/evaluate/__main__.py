"""`python -m controller.evaluate --config eval.json`: one evaluation, as a backend runs it (a
local subprocess, a Kubernetes Job). It reads only eval.json (controller.evalconfig) and leaves
`<run>/eval/report.json` (+ report.md, chart.png) and a marker naming the evaluation id, so an
evaluator that restarts finds the finished evaluation again instead of running it twice.

An evaluation that cannot run on this input (a missing bias set, a report the run did not
record...) still leaves a report: a crashed one, with the reason, which the gate fails on. Exit
codes are controller.exitcodes': 0 a report was written, 75 temporary, 78 the eval config
itself is unusable, 143 terminated.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from controller import exitcodes

MARKER = "eval/ftops-eval.json"
"""`{evalId, reportSha256, status}` beside the report: which evaluation the report is."""


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """`own_process`: this is the evaluator's process (`python -m controller.evaluate`), which may
    keep libraries it will not use out of itself (controller.importguard)."""
    parser = argparse.ArgumentParser(prog="python -m controller.evaluate")
    parser.add_argument("--config", required=True, help="eval.json written by the controller")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(exitcodes.PREEMPTED))

    from controller.errors import FtopsError, PermanentError
    from controller.evalconfig import load_eval_config

    try:
        config = load_eval_config(args.config)
    except FtopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    remote = "://" in config.run_uri
    try:
        run_dir = fetch_run(config.run_uri, config.run_id) if remote else Path(config.run_uri)
    except PermanentError as exc:  # a file that does not match the run's manifest: never evaluated
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    except FtopsError as exc:
        print(f"error (temporary): {exc}", file=sys.stderr)
        return exitcodes.TEMPORARY
    try:
        report = evaluate(config, run_dir, own_process)
    except PermanentError as exc:
        from controller.evaluate.run import crashed_report

        print(f"evaluation crashed: {exc}", file=sys.stderr)
        report = crashed_report(config.run_id, str(exc), config.spec_name)
        report.write(run_dir)
    except FtopsError as exc:
        print(f"error (temporary): {exc}", file=sys.stderr)
        return exitcodes.TEMPORARY
    from controller.fsutil import write_json_atomic

    write_json_atomic(run_dir / MARKER, {"evalId": config.eval_id, "reportSha256": report.sha256,
                                         "status": report.data.get("status")})
    if remote:
        try:
            put_report(run_dir, config.run_uri)
        except FtopsError as exc:
            print(f"error (temporary): {exc}", file=sys.stderr)
            return exitcodes.TEMPORARY
    print(json.dumps({"event": "evaluated", "evalId": config.eval_id, "status": report.data.get("status")}), flush=True)
    return exitcodes.OK


def fetch_run(run_uri: str, run_id: str) -> Path:
    """A run in object storage, fetched to this pod's disk with every file checked against its
    manifest (a run without one is not finished: temporary, the controller waits for it)."""
    import tempfile

    from controller.artifacts import fetch_bundle, open_store

    return fetch_bundle(open_store(run_uri), run_uri, Path(tempfile.gettempdir()) / "ftops-eval" / run_id)


def put_report(run_dir: Path, run_uri: str) -> None:
    """The evaluation's files back to the store: the report files, then the manifest that now
    records their sha256, then the marker naming the evaluation (what the controller looks for)."""
    from controller.artifacts import open_store
    from controller.seams.store import MANIFEST

    store = open_store(run_uri)
    marker = run_dir / MARKER
    for path in sorted((run_dir / "eval").rglob("*")):
        if path.is_file() and path != marker:
            store.put(store.join(run_uri, path.relative_to(run_dir).as_posix()), path.read_bytes())
    store.put(store.join(run_uri, MANIFEST), (run_dir / MANIFEST).read_bytes())
    store.put(store.join(run_uri, MARKER), marker.read_bytes())


def evaluate(config, run_dir: Path, own_process: bool = False):
    if own_process:
        _without_unused_libraries()
    from controller.evaluate.run import run_evaluation

    return run_evaluation(run_dir, config.finetune, config.data.test, train_path=config.data.train,
                          repo_root=config.repo_root, serving=config.serving, device=config.device, progress=False)


def _without_unused_libraries() -> None:
    """Before anything imports peft or transformers (controller.importguard): the evaluator never
    quantizes, since it loads every run's base as the servers do, unquantized
    (controller.evaluate.generation.load_run_model), so bitsandbytes stays out of its process."""
    from controller.importguard import without_bitsandbytes

    without_bitsandbytes()


if __name__ == "__main__":
    sys.exit(main(own_process=True))
