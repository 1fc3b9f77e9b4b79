"""`ftops get`, `ftops describe`, `ftops wait` (and `ftops status`, an alias of `get finetunes`):
what the controller did, read from its home or, with `--backend kubernetes`, from the FineTune
custom resources it mirrors.

As in kubectl: `get` is the table (one line per object, `-o wide|json|yaml|name`, `-w` to
watch), `describe` is the detail a person acts on (conditions in pipeline order, the gate
decision metric by metric, recent events, the report and charts, and what happens next), and
`wait` blocks until a condition holds. Time comes from `clock` (tests replace it), never from
the wall directly.

Exit codes: 0 done; 1 the home or spec does not exist, or `wait` timed out; 2 usage.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from controller.clock import SYSTEM_CLOCK, Clock
from controller.commands._observed import (
    HomeView,
    gate_decision,
    gate_lines,
    gate_summary,
    gate_word,
    headline,
    last_changed,
    pipeline_order,
    runs,
    shown_phase,
    statuses_for,
    summary,
    waiting_for_people,
)
from controller.errors import FtopsError
from controller.output import Col, add_output_flag, age, console, dump, duration, fmt, phase_style, print_table
from controller.settings import uses
from controller.status import STALLED, SpecStatus

clock: Clock = SYSTEM_CLOCK
"""The clock every wait and watch here reads (tests put a fake one in its place)."""

KINDS = {
    "finetunes": "finetunes", "finetune": "finetunes", "ft": "finetunes", "specs": "finetunes", "spec": "finetunes",
    "runs": "runs", "run": "runs",
    "deployments": "deployments", "deployment": "deployments", "deploy": "deployments",
}


def _duration(text: str) -> float:
    try:
        return duration(text)
    except FtopsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    get = sub.add_parser("get", help="list finetunes, runs or deployments (like `kubectl get`)",
                         description="ftops get [finetunes|runs|deployments] [NAME]. Exit 0; 1 when the home or NAME "
                                     "does not exist.")
    get.add_argument("what", nargs="*", metavar="[KIND] [NAME]",
                     help="finetunes (default), runs or deployments, then a name to show one")
    get.add_argument("-w", "--watch", action="store_true", help="after the table, print each row again when it changes")
    get.add_argument("--timeout", type=_duration, help="with -w: stop watching after this long (30s, 5m, 1h)")
    get.add_argument("--interval", type=_duration, default=2.0, help="with -w: how often to look (default 2s)")
    add_output_flag(get)
    uses(get, "home", "backend", "kubeconfig")
    get.set_defaults(func=cmd_get)

    status = sub.add_parser("status", help="every spec's status: an alias of `ftops get finetunes`")
    status.add_argument("-w", "--watch", action="store_true", help="print each row again when it changes")
    status.add_argument("--timeout", type=_duration, help="with -w: stop watching after this long")
    status.add_argument("--interval", type=_duration, default=2.0, help="with -w: how often to look (default 2s)")
    add_output_flag(status)
    uses(status, "home", "backend", "kubeconfig")
    status.set_defaults(func=cmd_status)

    describe = sub.add_parser("describe", help="one spec in detail: conditions, gate, events, artifacts, what happens next",
                              description="ftops describe [finetune] NAME. Exit 0; 1 when the home or NAME does not exist.")
    describe.add_argument("what", nargs="+", metavar="[finetune] NAME")
    describe.add_argument("--rev", default="main", help="with a repository: compare with the spec at this revision "
                                                        "to say what the next pass will do (default: main)")
    add_output_flag(describe)
    uses(describe, "home", "repo", "backend", "kubeconfig", "operator_config")
    describe.set_defaults(func=cmd_describe)

    wait = sub.add_parser("wait", help="wait until a spec's condition holds (`--for condition=Ready`)",
                          description="Exit 0 when the condition holds; 1 when the timeout passes first.")
    wait.add_argument("spec", metavar="SPEC")
    wait.add_argument("--for", dest="for_", default="condition=Ready", metavar="condition=TYPE[=STATUS]",
                      help="the condition to wait for (default condition=Ready; STATUS defaults to True)")
    wait.add_argument("--timeout", type=_duration, default=30.0, help="give up after this long (default 30s)")
    wait.add_argument("--interval", type=_duration, default=2.0, help="how often to look (default 2s)")
    uses(wait, "home", "backend", "kubeconfig")
    wait.set_defaults(func=cmd_wait)


# ----------------------------------------------------------------------------- get


def _kind_and_name(what: Sequence[str]) -> tuple[str, str | None]:
    if not what:
        return "finetunes", None
    first = what[0].lower()
    if first in KINDS:
        if len(what) > 2:
            raise FtopsError(f"get takes one KIND and at most one NAME, not {' '.join(what)}")
        return KINDS[first], what[1] if len(what) > 1 else None
    if len(what) > 1:
        raise FtopsError(f"'{what[0]}' is not a kind: write finetunes, runs or deployments")
    return "finetunes", what[0]  # `ftops get NAME`: a finetune, as kubectl's own shorthand would guess


def cmd_status(args: argparse.Namespace) -> int:
    """`ftops status`: `ftops get finetunes` (the demo calls it in-process)."""
    args.what = []
    return cmd_get(args)


def cmd_get(args: argparse.Namespace) -> int:
    kind, name = _kind_and_name(getattr(args, "what", None) or [])
    lister = {"finetunes": _finetune_rows, "runs": _run_rows, "deployments": _deployment_rows}[kind]
    format_ = fmt(args)
    rows = lister(args, name)
    if name is not None and not rows.items:
        raise FtopsError(f"no {kind[:-1]} '{name}' (`ftops get {kind}` lists them)")
    if format_ in ("json", "yaml"):
        payload: Any = rows.items[0].payload if name is not None else [r.payload for r in rows.items]
        print(dump(payload, format_))
        return 0
    if format_ == "name":
        for item in rows.items:
            print(f"{rows.singular}/{item.name}")
        return 0
    if not rows.items:
        print(f"no {kind} in {rows.where} yet")
    else:
        print_table(rows.columns, [r.cells for r in rows.items], wide=format_ == "wide")
    if getattr(args, "watch", False):
        _watch(args, lister, name, format_ == "wide", rows)
    return 0


class Item:
    def __init__(self, name: str, cells: Sequence[str], payload: Any) -> None:
        self.name, self.cells, self.payload = name, list(cells), payload


class Rows:
    def __init__(self, singular: str, columns: Sequence[Col], items: list[Item], where: str) -> None:
        self.singular, self.columns, self.items, self.where = singular, list(columns), items, where


FINETUNE_COLUMNS = (Col("NAME"), Col("PHASE", styler=phase_style), Col("RUN"), Col("SERVING"),
                    Col("GATE", styler=phase_style), Col("AGE"), Col("REVISION", wide_only=True),
                    Col("EVALUATION", wide_only=True), Col("MESSAGE", flex=True))


def _finetune_rows(args: argparse.Namespace, name: str | None) -> Rows:
    statuses = statuses_for(args)
    first_seen: dict[str, str] = {}
    where = "the cluster"
    if getattr(args, "backend", "local") != "kubernetes":
        view = HomeView.open(args)
        first_seen, where = view.first_seen(), str(view.root)
    now = clock.time()
    items = []
    for spec, status in sorted(statuses.items()):
        if name is not None and spec != name:
            continue
        cells = (spec, shown_phase(status), _short(status.run_id), _short(status.serving_run_id), gate_word(status),
                 age(first_seen.get(spec) or last_changed(status), now), (status.observed_revision or "-")[:12],
                 _short(status.eval_id), headline(status))
        items.append(Item(spec, cells, status.to_dict()))
    return Rows("finetune", FINETUNE_COLUMNS, items, where)


RUN_COLUMNS = (Col("RUN"), Col("SPEC"), Col("STATE", styler=phase_style), Col("GATE", styler=phase_style), Col("AGE"),
               Col("BACKEND", wide_only=True), Col("JOB", wide_only=True), Col("DATA", wide_only=True),
               Col("COMMIT", wide_only=True))


def _run_rows(args: argparse.Namespace, name: str | None) -> Rows:
    view = HomeView.open(args)
    now = clock.time()
    items = []
    for row in runs(view):
        if name is not None and row.run_id != name and not row.run_id.startswith(name) and row.spec != name:
            continue
        cells = (row.run_id, row.spec, row.state, row.gate, age(row.submitted, now), row.backend, row.job,
                 row.data_md5[:12], row.commit[:12])
        items.append(Item(row.run_id, cells, row.to_dict()))
    return Rows("run", RUN_COLUMNS, items, str(view.root))


DEPLOYMENT_COLUMNS = (Col("NAME"), Col("RUN"), Col("READY", styler=phase_style), Col("AGE"), Col("URL"),
                      Col("PREVIOUS", wide_only=True), Col("SERVING-ID", wide_only=True))


def _deployment_rows(args: argparse.Namespace, name: str | None) -> Rows:
    """What serves each spec: the run the controller recorded as serving (status, ledger) and
    what the Deployer seam sees now (its health and URL; READY Unknown when it has no record,
    e.g. the home was copied from another machine)."""
    view = HomeView.open(args)
    deployer = _deployer(args, view)
    now = clock.time()
    items = []
    for spec, status in sorted(view.statuses().items()):
        if name is not None and spec != name:
            continue
        serving = deployer.current(spec)
        run = serving.run_id if serving is not None else status.serving_run_id
        if run is None:
            continue
        promoted = [e for e in view.events(spec=spec) if e.kind in ("deploy.promoted", "deploy.rolled_back")]
        last = promoted[-1] if promoted else None
        before = [e.run_id for e in promoted if e.run_id and e.run_id != run]
        previous = before[-1] if before else "-"
        ready = "Unknown" if serving is None else ("True" if serving.healthy else "False")
        url = serving.url if serving is not None and serving.url else "-"
        serving_id = serving.serving_id if serving is not None else status.serving_id
        cells = (spec, run, ready, age(last.time if last else None, now), url, previous, _short(serving_id))
        items.append(Item(spec, cells, {"spec": spec, "runId": run, "ready": ready, "url": None if url == "-" else url,
                                        "servingId": serving_id, "previousRunId": None if previous == "-" else previous,
                                        "since": last.time if last else None}))
    return Rows("deployment", DEPLOYMENT_COLUMNS, items, str(view.root))


def _deployer(args: argparse.Namespace, view: HomeView) -> Any:
    """The Deployer seam for this backend, over the home's store (it only reads here)."""
    if getattr(args, "backend", "local") == "kubernetes":
        from controller.backends.kubernetes import KubernetesBackend
        from controller.catalog import load_operator_config
        from controller.serve.kube import KubernetesServing

        operator = load_operator_config(getattr(args, "operator_config", None))
        return KubernetesServing(KubernetesBackend(kubeconfig=args.kubeconfig, operator=operator), operator,
                                 view.home.store)
    from controller.catalog import load_operator_config
    from controller.serve.api_deploy import ApiServing, ByMethod
    from controller.serve.deploy import LocalServing

    return ByMethod(LocalServing(view.home.store),  # specs of method api serve through the gateway at their provider
                    ApiServing(view.home.store, load_operator_config(getattr(args, "operator_config", None))))


def _short(value: str | None) -> str:
    return value[:12] if value else "-"


def _watch(args: argparse.Namespace, lister: Callable[[argparse.Namespace, str | None], Rows], name: str | None,
           wide: bool, first: Rows) -> None:
    """Print each row again when it changes, until --timeout or Ctrl-C (kubectl get -w)."""
    def key(item: Item) -> list[str]:  # AGE changes by itself; the row has not
        return [c for i, c in enumerate(item.cells) if first.columns[i].header != "AGE"]

    seen = {item.name: key(item) for item in first.items}
    deadline = clock.monotonic() + args.timeout if getattr(args, "timeout", None) else None
    while deadline is None or clock.monotonic() < deadline:
        clock.sleep(args.interval)
        changed = []
        for item in lister(args, name).items:
            if seen.get(item.name) != key(item):
                seen[item.name] = key(item)
                changed.append(item.cells)
        if changed:
            print_table(first.columns, changed, wide=wide, header=False)


# ----------------------------------------------------------------------------- describe


def cmd_describe(args: argparse.Namespace) -> int:
    what = list(args.what)
    if len(what) == 2 and what[0].lower() in ("finetune", "finetunes", "ft", "spec"):
        what = what[1:]
    if len(what) != 1:
        raise FtopsError("describe one finetune: `ftops describe finetune NAME`")
    name = what[0]
    if getattr(args, "backend", "local") == "kubernetes":
        statuses = statuses_for(args)
        if name not in statuses:
            raise FtopsError(f"no FineTune '{name}' in the cluster")
        status = statuses[name]
    else:
        status = HomeView.open(args).status(name)
    view = HomeView.open(args) if getattr(args, "backend", "local") != "kubernetes" or _home_exists(args) else None
    details = describe(status, view, _want(args, status))
    format_ = fmt(args)
    if format_ in ("json", "yaml"):
        print(dump(details, format_))
    elif format_ == "name":
        print(f"finetune/{name}")
    else:
        _print_describe(details)
    return 0


def _home_exists(args: argparse.Namespace) -> bool:
    from pathlib import Path

    return Path(args.home).is_dir()


def _want(args: argparse.Namespace, status: SpecStatus) -> Any:
    """What the spec at --rev wants now (its identities and whether it is served), when a
    repository is configured: `describe` then says what the next pass will do, from the same
    `controller.desired.decide` that plan and the reconciler use. None without a repository."""
    repo = getattr(args, "repo", None)
    if not repo:
        return None
    from controller.catalog import load_operator_config
    from controller.desired import identities
    from controller.render import template_version
    from controller.source import GitSource, corpus_version, load_specs_at

    operator = load_operator_config(getattr(args, "operator_config", None))
    with GitSource(repo) as source:
        source.refresh()
        sha = source.resolve(args.rev)
        found = next((s for s in load_specs_at(source, sha, gpu_types=sorted(operator.gpus)).values()
                      if s.loaded.spec is not None and s.loaded.spec.metadata.name == status.name), None)
        if found is None or found.loaded.spec is None:
            return {"rev": args.rev, "commit": sha, "missing": True}
        serving = found.loaded.spec.spec.serving
        corpus = corpus_version(source, sha, serving.corpus) if serving is not None and serving.corpus else None
        return {"rev": args.rev, "commit": sha, "identities": identities(found, template_version(), corpus),
                "serving": serving is not None}


def describe(status: SpecStatus, view: HomeView | None, want: Any = None) -> dict[str, Any]:
    """Everything `describe` shows, as data (the -o json/yaml payload; the text is printed from it)."""
    now = clock.time()
    out: dict[str, Any] = {
        "name": status.name, "phase": shown_phase(status), "revision": status.observed_revision,
        "runId": status.run_id, "servingRunId": status.serving_run_id, "evaluationId": status.eval_id,
        "conditions": [{**c.to_dict(), "age": age(c.last_transition_time, now)} for c in pipeline_order(status.conditions)],
    }
    if view is not None:
        gate, source = gate_decision(view, status)
        out["gate"] = ({"runId": gate.get("runId"), "passed": gate.get("passed"), "from": source,
                        "summary": gate_summary(gate),
                        "lines": [dict(zip(("verdict", "metric", "kind", "value", "threshold"), line))
                                  for line in gate_lines(gate)]} if gate is not None else None)
        out["artifacts"] = _artifacts(view, status)
        events = view.events(spec=status.name)
        out["events"] = [{"seq": e.seq, "time": e.time, "age": age(e.time, now), "kind": e.kind, "runId": e.run_id,
                          "message": summary(e.kind, e.payload)} for e in events[-10:]]
        out["eventsTotal"] = len(events)
        retry_at = view.retry_at(status.name)
    else:
        retry_at = None
    out["next"] = next_step(status, want, retry_at, now)
    return out


def _artifacts(view: HomeView, status: SpecStatus) -> dict[str, str]:
    """Where to look: the report, the eval chart and the loss curve of the current run (and the
    serving run's report when another run serves), as paths on this machine or store URIs."""
    store = view.store()
    found: dict[str, str] = {}
    for label, run in (("", status.run_id), ("serving ", status.serving_run_id)):
        if run is None or (label and run == status.run_id):
            continue
        run_uri = store.run_uri(status.name, run)
        for key, rel in (("report", "eval/report.md"), ("chart", "eval/chart.png"), ("loss curve", "eval/loss.png"),
                         ("metrics", "metrics.jsonl")):
            uri = store.join(run_uri, rel)
            if store.exists(uri):
                local = store.local_dir(uri)
                found[f"{label}{key}"] = str(local) if local is not None else uri
    if status.run_id is not None:
        found["logs"] = f"ftops logs {status.name}"
    return found


def next_step(status: SpecStatus, want: Any, retry_at: float | None, now: float) -> str:
    """What happens next, in one or two sentences a person can act on."""
    from controller.desired import Action, Identities, decide

    if isinstance(want, dict) and want.get("missing"):
        return (f"the spec is not at {want['rev']} ({str(want['commit'])[:12]}) any more: the next pass prunes what "
                "ftops runs for it (artifacts, checkpoints and the ledger are kept)")
    if isinstance(want, dict) and "identities" in want:
        have = Identities(status.run_id, status.eval_id, status.serving_id)
        decision = decide(want["identities"], have, want["serving"], changed=False)
        if decision.action is not Action.NONE:
            steps = " -> ".join(decision.steps) or "no step"
            return (f"{want['rev']} ({str(want['commit'])[:12]}) wants more than this status: the next pass will "
                    f"{decision.action.value}: {steps}")
    waiting = waiting_for_people(status)
    if waiting is not None:
        return (f"waiting for a reviewer: export the review sample with `ftops data review-sample specs/{status.name}.yaml`, "
                f"fill in the verdict column, append it with `ftops data review-import review-sample.csv "
                f"specs/{status.name}.yaml` and commit the reviews file; the controller continues when it changes")
    stalled = status.condition(STALLED)
    if stalled is not None and stalled.status == "True":
        return f"nothing until the spec or its inputs change ({stalled.reason}): {stalled.message}"
    if retry_at is not None and retry_at > now:
        from controller.clock import iso

        why = f": {stalled.message}" if stalled is not None and stalled.message else ""
        return f"a retry at {iso(retry_at)}{why}"
    if status.is_true("Ready"):
        tail = "" if want is not None else " (pass --repo to compare with what git asks for now)"
        return f"nothing: every step is done at revision {(status.observed_revision or '-')[:12]}{tail}"
    for c in pipeline_order(status.conditions):
        if c.type not in ("Ready", STALLED, "SourceAvailable") and c.status != "True":
            return f"{c.type}: {c.reason}: {c.message}"
    return "the next reconcile pass"


def _print_describe(d: dict[str, Any]) -> None:
    con = console()
    label = lambda text: f"{text + ':':<14}"  # noqa: E731
    print(f"{label('Name')}{d['name']}")
    con.print(label("Phase") + d["phase"], style=phase_style(d["phase"]) or "", highlight=False, markup=False)
    print(f"{label('Revision')}{(d.get('revision') or '-')[:12]}")
    print(f"{label('Run')}{d.get('runId') or '-'}")
    print(f"{label('Serving')}{d.get('servingRunId') or '-'}")
    print("Conditions (pipeline order):")
    print_table((Col("TYPE"), Col("STATUS", styler=phase_style), Col("REASON"), Col("AGE"), Col("MESSAGE", flex=True)),
                [(c["type"], c["status"], c["reason"], c["age"], c["message"]) for c in d["conditions"]],
                out=con, indent=2)
    gate = d.get("gate")
    if "gate" in d:
        if gate is None:
            print("Gate:         no decision yet for this run")
        else:
            verdict = "passed" if gate["passed"] else "FAILED"
            print(f"Gate:         {verdict} for run {gate['runId']} ({gate['from']})")
            print_table((Col("VERDICT", styler=lambda v: "green" if v == "PASS" else "red"), Col("METRIC"), Col("KIND"),
                         Col("VALUE"), Col("THRESHOLD")),
                        [(ln["verdict"], ln["metric"], ln["kind"], ln["value"], ln["threshold"]) for ln in gate["lines"]],
                        out=con, indent=2)
    if d.get("artifacts"):
        print("Artifacts:")
        for key, where in d["artifacts"].items():
            print(f"  {key:<20}{where}")
    if "events" in d:
        total = d.get("eventsTotal", 0)
        shown = len(d["events"])
        more = f", `ftops events {d['name']}` for all {total}" if total > shown else ""
        print(f"Events (last {shown}{more}):")
        if d["events"]:
            print_table((Col("AGE"), Col("KIND"), Col("RUN"), Col("MESSAGE", flex=True)),
                        [(e["age"], e["kind"], (e["runId"] or "-")[:12], e["message"]) for e in d["events"]],
                        out=con, indent=2)
        else:
            print("  <none>")
    print(f"Next:         {d['next']}")


# ----------------------------------------------------------------------------- wait


def cmd_wait(args: argparse.Namespace) -> int:
    type_, want = _condition(args.for_)
    deadline = clock.monotonic() + args.timeout
    last: SpecStatus | None = None
    while True:
        last = statuses_for(args).get(args.spec)
        found = last.condition(type_) if last is not None else None
        if found is not None and found.status == want:
            print(f"finetune/{args.spec} condition met: {type_}={want}")
            return 0
        if clock.monotonic() >= deadline:
            break
        clock.sleep(min(args.interval, max(0.0, deadline - clock.monotonic())) or args.interval)
    if last is None:
        now = f"it has not been reconciled in {args.home}" if getattr(args, "backend", "local") != "kubernetes" \
            else "there is no FineTune of that name in the cluster"
    else:
        now = f"phase {shown_phase(last)}: {headline(last)}"
    raise FtopsError(f"timed out after {args.timeout:g}s waiting for condition={type_}={want} on finetune/{args.spec}; "
                     f"{now}")


def _condition(text: str) -> tuple[str, str]:
    kind, _, rest = text.partition("=")
    if kind != "condition" or not rest:
        raise FtopsError(f"--for {text}: write condition=TYPE or condition=TYPE=True|False (e.g. condition=Ready)")
    type_, _, value = rest.partition("=")
    value = value or "True"
    if value.lower() not in ("true", "false", "unknown"):
        raise FtopsError(f"--for {text}: the status is True, False or Unknown, not '{value}'")
    return type_, value.capitalize()


# ----------------------------------------------------------------------------- for `ftops reconcile`


def _table(statuses: dict[str, SpecStatus]) -> str:
    """The statuses a reconcile pass ended with, as the `get` table (without AGE: no ledger read)."""
    import io

    buffer = io.StringIO()
    columns = (Col("NAME"), Col("PHASE"), Col("RUN"), Col("SERVING"), Col("GATE"), Col("MESSAGE", flex=True))
    rows = [(name, shown_phase(s), _short(s.run_id), _short(s.serving_run_id), gate_word(s), headline(s))
            for name, s in sorted(statuses.items())]
    print_table(columns, rows, out=console(buffer))
    return buffer.getvalue().rstrip("\n")
