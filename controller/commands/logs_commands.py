"""`ftops logs RUN|SPEC [-f] [--tail N] [--eval]` and `ftops events [SPEC]`.

`logs` reads a run's output through the seams that own it: the trainer's through
`Backend.logs` (the detached process's log file on the local backend, the Job's pods with
`--backend kubernetes`), the evaluation's through `Evaluator.logs`. Given a spec, it shows the
spec's current run. `-f` follows until the run finishes, looking every `--interval` on the
injected clock.

`events` is the spec's history as a timeline: the audit ledger's records (what the controller
did, with its numbers) and, with `--backend kubernetes`, the Kubernetes Events recorded on the
FineTune custom resource.

Exit codes: 0 done; 1 no such run, spec or home; 2 usage.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from controller.clock import SYSTEM_CLOCK, Clock
from controller.commands._observed import ClusterView, HomeView, event_time, summary
from controller.errors import FtopsError
from controller.output import Col, add_output_flag, age, console, dump, fmt, parse_time, phase_style, print_table
from controller.settings import uses

clock: Clock = SYSTEM_CLOCK
"""The clock `logs -f` waits on (tests put a fake one in its place)."""


def register(sub: argparse._SubParsersAction) -> None:
    logs = sub.add_parser("logs", help="a run's training (or evaluation) output; given a spec, its current run",
                          description="Exit 0; 1 when the run or spec is not known.")
    logs.add_argument("target", metavar="RUN|SPEC")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output until the run finishes")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    logs.add_argument("--eval", action="store_true", help="the evaluation's output instead of the trainer's")
    logs.add_argument("--interval", type=float, default=1.0, help="with -f: seconds between looks (default 1)")
    uses(logs, "home", "backend", "kubeconfig", "operator_config")
    logs.set_defaults(func=cmd_logs)

    events = sub.add_parser("events", help="what happened to a spec (or every spec), oldest first: ledger records "
                                           "and, with --backend kubernetes, the FineTune's Kubernetes Events",
                            description="Exit 0; 1 when the home does not exist.")
    events.add_argument("spec", nargs="?", metavar="SPEC")
    events.add_argument("--run", help="only the records of this run")
    add_output_flag(events)
    uses(events, "home", "backend", "kubeconfig")
    events.set_defaults(func=cmd_events)


# ----------------------------------------------------------------------------- logs


def _backend(args: argparse.Namespace, view: HomeView) -> Any:
    if getattr(args, "backend", "local") == "kubernetes":
        from controller.backends.kubernetes import KubernetesBackend
        from controller.catalog import load_operator_config

        return KubernetesBackend(kubeconfig=args.kubeconfig, operator=load_operator_config(args.operator_config))
    from controller.backends.local import LocalBackend

    return LocalBackend(view.home.runs)


def _resolve_run(view: HomeView, target: str) -> tuple[str, str | None]:
    """(run id, spec) for a spec name (its current run) or a run id (or a unique prefix of one)."""
    statuses = view.statuses()
    if target in statuses:
        run = statuses[target].run_id
        if run is None:
            raise FtopsError(f"spec '{target}' has no run yet ({statuses[target].phase})")
        return run, target
    known = {e.run_id: e.spec for e in view.events() if e.kind == "run.submitted" and e.run_id}
    matches = [r for r in known if r.startswith(target)] if len(target) >= 6 else ([target] if target in known else [])
    if len(matches) == 1:
        return matches[0], known[matches[0]]
    if len(matches) > 1:
        raise FtopsError(f"'{target}' names {len(matches)} runs: {', '.join(sorted(matches))}; give more of the id")
    return target, None  # not in the ledger: the backend may still know it (a run started by hand)


def cmd_logs(args: argparse.Namespace) -> int:
    view = HomeView.open(args)
    run, spec = _resolve_run(view, args.target)
    reader: _RunLogs | _EvalLogs = _EvalLogs(view, run, spec) if args.eval else _RunLogs(_backend(args, view), run)
    text = reader.read(args.tail)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.follow:
        follow(reader, len(text), args.interval)
    return 0


class _RunLogs:
    """Backend.logs and Backend.status of one training run."""

    def __init__(self, backend: Any, run_id: str) -> None:
        self.backend, self.run_id = backend, run_id

    def read(self, tail: int | None = None) -> str:
        from controller.seams import RunNotFound

        try:
            return str(self.backend.logs(self.run_id, tail))
        except RunNotFound:
            raise FtopsError(f"run {self.run_id}: not known to the {self.backend.name} backend "
                             "(`ftops get runs` lists the runs this home knows)") from None

    def finished(self) -> bool:
        return bool(self.backend.status(self.run_id).finished)


class _EvalLogs:
    """Evaluator.logs of the spec's evaluation of a run: the local evaluator's process, found by
    the eval.json the controller wrote for it."""

    def __init__(self, view: HomeView, run_id: str, spec: str | None) -> None:
        from controller.backends.local import LocalEvaluator

        self.evaluator = LocalEvaluator(view.home.evals)
        self.request = _eval_request(view, run_id, spec)

    def read(self, tail: int | None = None) -> str:
        return str(self.evaluator.logs(self.request, tail))

    def finished(self) -> bool:
        state = self.evaluator.status(self.request)
        return state is None or state.finished


def _eval_request(view: HomeView, run_id: str, spec: str | None) -> Any:
    from controller.evalconfig import load_eval_config
    from controller.seams import EvalRequest, Lineage

    status = view.statuses().get(spec) if spec else None
    candidates = sorted(view.home.evals.glob(f"*-{run_id}-*/eval.json"), key=lambda p: p.stat().st_mtime)
    wanted = [p for p in candidates if status is not None and status.eval_id and p.parent.name.endswith(status.eval_id)]
    found = wanted or candidates
    if not found:
        raise FtopsError(f"run {run_id}: no evaluation has been started for it in {view.root}")
    config = load_eval_config(found[-1])
    return EvalRequest(config, config.finetune, Lineage("", ""))


def follow(reader: Any, offset: int, interval: float) -> None:
    """Print what the run writes after `offset` characters, until it finishes (then once more)."""
    while True:
        done = reader.finished()
        text = reader.read()
        if len(text) > offset:
            sys.stdout.write(text[offset:])
            sys.stdout.flush()
            offset = len(text)
        if done:
            return
        clock.sleep(interval)


# ----------------------------------------------------------------------------- events


def cmd_events(args: argparse.Namespace) -> int:
    rows = timeline(args)
    format_ = fmt(args)
    if format_ in ("json", "yaml"):
        print(dump(rows, format_))
        return 0
    if format_ == "name":
        for row in rows:
            print(f"{row['source']}/{row['id']}")
        return 0
    if not rows:
        print(f"no events{' for ' + args.spec if args.spec else ''} yet")
        return 0
    now = clock.time()
    columns = (Col("AGE"), Col("SOURCE", wide_only=True), Col("TYPE", styler=phase_style), Col("KIND"), Col("SPEC"),
               Col("RUN"), Col("TIME", wide_only=True), Col("MESSAGE", flex=True))
    print_table(columns, [(age(r["time"], now), r["source"], r["type"], r["kind"], r["spec"] or "-",
                           (r["runId"] or "-")[:12], r["time"], r["message"]) for r in rows],
                wide=format_ == "wide", out=console())
    return 0


WARNING_KINDS = frozenset({"spec.stalled", "deploy.rolled_back", "deploy.refused"})


def timeline(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ledger's records (and the FineTune's Kubernetes Events) as one list, oldest first."""
    view = HomeView.open(args)
    rows: list[dict[str, Any]] = []
    for e in view.events(spec=args.spec, run_id=getattr(args, "run", None)):
        failed_gate = e.kind == "gate.decided" and not e.payload.get("passed")
        rows.append({"source": "ledger", "id": str(e.seq), "time": e.time, "kind": e.kind, "spec": e.spec,
                     "runId": e.run_id, "type": "Warning" if e.kind in WARNING_KINDS or failed_gate else "Normal",
                     "message": summary(e.kind, e.payload)})
    if getattr(args, "backend", "local") == "kubernetes":
        for ev in ClusterView.open(args).events(args.spec):
            obj = ev.get("involvedObject") or {}
            count = ev.get("count") or 1
            rows.append({"source": "kubernetes", "id": (ev.get("metadata") or {}).get("name", ""),
                         "time": event_time(ev), "kind": ev.get("reason", ""), "spec": obj.get("name"), "runId": None,
                         "type": ev.get("type", "Normal"),
                         "message": str(ev.get("message", "")) + (f" (x{count})" if count > 1 else "")})
    return sorted(rows, key=lambda r: parse_time(r["time"]) or 0.0)


__all__ = ["cmd_events", "cmd_logs", "follow", "timeline"]
