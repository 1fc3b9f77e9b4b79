"""`ftops eval RUN_DIR --spec SPEC`: evaluate a finished run, write eval/, run the gate.

`-o json|yaml` prints the gate decision (what eval/gate.json holds); the text form lists it
metric by metric. chart.png and loss.png are drawn beside the report.

Exit 0 when the gate passes, 1 when it fails or the evaluation could not run (the reason is
printed, and a crashed report plus a failing eval/gate.json are still written, so the run's
record says why). Heavy imports happen inside the command function only."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from controller.output import MACHINE, add_output_flag, dump, fmt


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="Evaluate a finished run against its spec's gates (report.json, report.md, chart.png, gate.json).",
        description=(
            "Run the fine-tuned model of RUN_DIR (<store>/<spec>/<run-id>/, must hold manifest.json) on the held-out "
            "split, score task accuracy, format compliance, regression, A/B comparison and bias, write RUN_DIR/eval/, "
            "then apply the spec's gates. Exit 0 on pass, 1 on fail."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="The run's artifact directory.")
    p.add_argument("--spec", required=True, metavar="SPEC_FILE", help="The FineTune spec whose evaluation gates apply.")
    p.add_argument("--test", metavar="PATH", help="Held-out split (chat JSONL); its sha256 must match the run's manifest.")
    p.add_argument("--train", metavar="PATH", help="Train split, for the contamination report.")
    p.add_argument("--run-config", metavar="RUN_JSON", help="Take --test/--train from this run.json (data.test, data.train).")
    p.add_argument("--repo-root", metavar="DIR", help="Root for the spec's repo paths (bias set, suites, local models); default: current directory.")
    p.add_argument("--out", metavar="DIR", help="Where to write the report (default: RUN_DIR/eval).")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="Where to run the models.")
    p.add_argument("--batch-size", type=int, default=16, help="Prompts per generation batch (default 16).")
    p.add_argument("--max-new-tokens", type=int, default=None, help="Cap on generated tokens (default: from the reference answers).")
    p.add_argument("--seed", type=int, default=0, help="Generation seed (greedy decoding; default 0).")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest for small models on a shared CPU).")
    p.add_argument("--gate-only", action="store_true", help="Do not evaluate: apply the gate to the existing report.")
    add_output_flag(p)  # -o json|yaml: the gate decision (what eval/gate.json holds)
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from controller.errors import FtopsError, PermanentError
    from controller.gate import decide
    from controller.spec import load_spec_text

    spec_file = Path(args.spec)
    try:
        text = spec_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PermanentError(f"{spec_file}: {exc.strerror}") from None
    loaded = load_spec_text(text, str(spec_file))
    if loaded.spec is None:
        for issue in loaded.issues:
            print(issue.format(), file=sys.stderr)
        return 1
    spec = loaded.spec

    from controller.evaluate.generation import read_manifest
    from controller.evaluate.report import Report, load_report, record_in_manifest, render_markdown

    run_dir = Path(args.run_dir)
    manifest = read_manifest(run_dir)  # a run that is not finished is refused before anything is written
    run_id = manifest["runId"]
    out_dir = Path(args.out) if args.out else run_dir / "eval"

    if args.gate_only:
        try:
            report = Report(load_report(out_dir / "report.json"))
        except FtopsError as exc:  # no readable report is a failing gate, printed, not a crash
            print(f"error: {exc}", file=sys.stderr)
            report = None
        sha = _sha256(out_dir / "report.json") if report is not None else None
    else:
        report = _evaluate(args, run_dir, spec, out_dir, run_id, manifest)
        sha = report.sha256
    decision = decide(report, spec, run_id, report_sha256=sha)
    gate = decision.to_dict()
    if report is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "gate.json").write_text(json.dumps(gate, indent=2, sort_keys=True) + "\n")
        (out_dir / "report.md").write_text(render_markdown(report.to_dict(), gate))
        _pictures(run_dir, out_dir, report.to_dict(), gate)
        record_in_manifest(run_dir, out_dir / "report.json", gate=gate)
    format_ = fmt(args)
    if format_ in MACHINE:
        print(dump(gate, format_))
    elif format_ == "name":
        print(f"run/{run_id}")
    else:
        print(decision.format())
    return 0 if decision.passed else 1


def _pictures(run_dir: Path, out_dir: Path, report: dict, gate: dict) -> None:
    """chart.png with the gate's thresholds (no serving run here: this command serves nothing)
    and loss.png from the run's metrics.jsonl, beside the report."""
    if report.get("status") != "completed":
        return
    from controller.evaluate.chart import loss_points, render_loss, write_chart

    write_chart(report, out_dir / "chart.png", gate)
    metrics = run_dir / "metrics.jsonl"
    points = loss_points(metrics.read_bytes()) if metrics.is_file() else []
    (out_dir / "loss.png").write_bytes(render_loss(points, str(report.get("runId")), spec=report.get("specName")))


def _evaluate(args, run_dir: Path, spec, out_dir: Path, run_id: str, manifest: dict):
    from controller.errors import FtopsError
    from controller.evaluate.run import run_evaluation

    test, train = args.test, args.train
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.run_config:
        from controller.runconfig import RunConfigError, load_run_config

        try:
            cfg = load_run_config(args.run_config)
            test = test or cfg.data.test
            train = train or cfg.data.train
        except RunConfigError as exc:
            return _crash(run_dir, out_dir, run_id, manifest, str(exc))
    if not test:
        return _crash(run_dir, out_dir, run_id, manifest,
                      "no held-out split: pass --test PATH or --run-config RUN_JSON (its data.test)")
    try:
        from controller.evaluate.served import for_repo

        # A served spec is evaluated on what serves: its retrieval over the repo's corpus, its prompt.
        return run_evaluation(
            run_dir, spec, test, train_path=train, repo_root=args.repo_root,
            serving=for_repo(spec, Path(args.repo_root) if args.repo_root else None), output_dir=out_dir,
            device=args.device, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed,
            progress=False if args.no_progress else None,
        )
    except FtopsError as exc:
        return _crash(run_dir, out_dir, run_id, manifest, str(exc))
    except Exception as exc:  # a crashed evaluation must still leave a failing record
        return _crash(run_dir, out_dir, run_id, manifest, f"{type(exc).__name__}: {exc}")


def _crash(run_dir: Path, out_dir: Path, run_id: str, manifest: dict, message: str):
    from controller.evaluate.run import crashed_report

    print(f"error: evaluation failed: {message}", file=sys.stderr)
    report = crashed_report(run_id, message, (manifest.get("provenance") or {}).get("specName"))
    report.write(run_dir, out_dir)
    return report


def _sha256(path: Path) -> str | None:
    from controller.fsutil import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None
