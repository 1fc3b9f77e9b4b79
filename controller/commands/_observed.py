"""What the controller did, as the reading commands (`get`, `describe`, `logs`, `events`, `wait`,
`trace`) see it: the controller home (status files, the ledger, the artifact store) on the local
backend, and the FineTune custom resources and their Events with `--backend kubernetes`.

Not a command module (the leading underscore keeps `cli.command_modules` from registering it).
Nothing here writes: every reader opens what it needs and refuses a home that does not exist,
so a typo in `--home` is an error rather than an empty table.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from controller.errors import FtopsError
from controller.home import Home
from controller.settings import require_home
from controller.status import CHAIN, READY, SOURCE_AVAILABLE, STALLED, Condition, Reason, SpecStatus

if TYPE_CHECKING:
    from controller.ledger import Event, Ledger
    from controller.seams import ArtifactStore

def waiting_reasons() -> frozenset[str]:
    """Reasons that wait for a person, not an error (controller.reconcile.outcome parks the spec
    with a hint saying who acts): shown as waiting, with what to do. Imported when asked: the
    reconciler is heavy, and every command's parser imports this module."""
    from controller.reconcile.outcome import WAITING_FOR_PEOPLE

    return frozenset(WAITING_FOR_PEOPLE)


# ----------------------------------------------------------------------------- conditions


def pipeline_order(conditions: Iterable[Condition]) -> list[Condition]:
    """The conditions as the pipeline runs: SourceAvailable, the chain (DataReady ... Deployed),
    Ready, Stalled, then anything else in the order written."""
    order = {t: i for i, t in enumerate((SOURCE_AVAILABLE, *CHAIN, READY, STALLED))}
    items = list(conditions)
    return sorted(items, key=lambda c: (order.get(c.type, len(order)), items.index(c)))


def waiting_for_people(status: SpecStatus) -> Condition | None:
    """The Stalled condition when what it waits for is a person (a review), else None."""
    stalled = status.condition(STALLED)
    if stalled is not None and stalled.status == "True" and stalled.reason in waiting_reasons():
        return stalled
    return None


def shown_phase(status: SpecStatus) -> str:
    """The phase for people: a spec waiting for a reviewer is `ReviewPending`, not `Stalled`."""
    waiting = waiting_for_people(status)
    return waiting.reason if waiting is not None else status.phase


def headline(status: SpecStatus) -> str:
    """The one message a table shows: the stall, else the first step not done, else Ready's."""
    waiting = waiting_for_people(status)
    if waiting is not None:
        return f"waiting for a reviewer: {_strip_hint(waiting.message)}"
    stalled = status.condition(STALLED)
    if stalled is not None and stalled.status == "True":
        return stalled.message
    for c in pipeline_order(status.conditions):
        if c.type not in (READY, STALLED) and c.status != "True":
            return c.message
    retrying = status.condition(STALLED)
    if retrying is not None and retrying.reason == Reason.RETRYING:
        return retrying.message
    ready = status.condition(READY)
    return ready.message if ready is not None else status.message


def _strip_hint(message: str) -> str:
    """A condition's message without the parenthesised hint the reconciler appends."""
    if message.endswith(")") and " (" in message:
        return message[: message.rindex(" (")]
    return message


def gate_word(status: SpecStatus) -> str:
    gate = status.condition("GatePassed")
    if gate is None:
        return "-"
    return "Passed" if gate.status == "True" else gate.reason


def last_changed(status: SpecStatus) -> str | None:
    """When the spec's state last changed: the newest lastTransitionTime of its conditions."""
    times = [c.last_transition_time for c in status.conditions if c.last_transition_time]
    return max(times) if times else None


# ----------------------------------------------------------------------------- the home


@dataclass
class HomeView:
    """A controller home opened for reading."""

    root: Path
    _ledger: "Ledger | None" = field(default=None, repr=False)

    @classmethod
    def open(cls, args: argparse.Namespace) -> "HomeView":
        return cls(require_home(args))

    @property
    def home(self) -> Home:
        return Home(self.root)

    def statuses(self) -> dict[str, SpecStatus]:
        from controller.reconcile import load_statuses

        return load_statuses(self.home.status)

    def status(self, name: str) -> SpecStatus:
        found = self.statuses().get(name)
        if found is None:
            known = ", ".join(sorted(self.statuses())) or "none yet"
            raise FtopsError(f"no spec '{name}' in {self.root} (specs reconciled there: {known})")
        return found

    @property
    def ledger(self) -> "Ledger | None":
        """The audit ledger, or None when nothing has been recorded yet."""
        if self._ledger is None and self.home.ledger.exists():
            from controller.ledger import open_ledger

            self._ledger = open_ledger(self.home.ledger)
        return self._ledger

    def store(self) -> "ArtifactStore":
        from controller.artifacts import open_store

        return open_store(str(self.home.store))

    def retry_at(self, name: str) -> float | None:
        """When a backing-off spec is retried (its persisted state), if it is."""
        try:
            data = json.loads((self.home.state / f"{name}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        value = data.get("retryAt") if isinstance(data, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    def events(self, spec: str | None = None, run_id: str | None = None) -> list["Event"]:
        ledger = self.ledger
        return list(ledger.events(spec=spec, run_id=run_id)) if ledger is not None else []

    def first_seen(self) -> dict[str, str]:
        """spec -> when the ledger first recorded it (its AGE, as kubectl's is the object's)."""
        out: dict[str, str] = {}
        for e in self.events():
            if e.spec and e.spec not in out:
                out[e.spec] = e.time
        return out


# ----------------------------------------------------------------------------- the cluster


FINETUNE_API = "ftops.dev/v1alpha1"


@dataclass
class ClusterView:
    """The FineTune custom resources (their status, written by the controller through /status)
    and the Events recorded on them, read with the official client."""

    kube: Any

    @classmethod
    def open(cls, args: argparse.Namespace) -> "ClusterView":
        from controller.backends.kubernetes import KubernetesBackend

        return cls(KubernetesBackend(kubeconfig=getattr(args, "kubeconfig", None)))

    def finetunes(self) -> list[dict[str, Any]]:
        from controller.backends.kubernetes import ApiError

        try:
            return list(self.kube.list(FINETUNE_API, "FineTune", None)["items"])
        except ApiError as err:
            if err.code == 404:
                raise FtopsError("the cluster has no FineTune resource: install the CRD (charts/ftops/crds) and run "
                                 "the controller with --mirror-finetunes") from None
            raise FtopsError(f"listing FineTunes: {err}") from None

    def statuses(self) -> dict[str, SpecStatus]:
        out = {}
        for cr in self.finetunes():
            name = cr["metadata"]["name"]
            out[name] = SpecStatus.from_dict({**(cr.get("status") or {}), "name": name})
        return out

    def namespace_of(self, name: str) -> str | None:
        return next((cr["metadata"].get("namespace") for cr in self.finetunes() if cr["metadata"]["name"] == name), None)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The Kubernetes Events on FineTunes (on `name` only, when given), oldest first."""
        found = []
        for item in self.kube.list("v1", "Event", None)["items"]:
            obj = item.get("involvedObject") or {}
            if obj.get("kind") == "FineTune" and (name is None or obj.get("name") == name):
                found.append(item)
        return sorted(found, key=event_time)


def event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
               or (event.get("metadata") or {}).get("creationTimestamp") or "")


def statuses_for(args: argparse.Namespace) -> dict[str, SpecStatus]:
    """Every spec's status where this invocation looks: the FineTune CRs with --backend
    kubernetes, the home's status files otherwise."""
    if getattr(args, "backend", "local") == "kubernetes":
        return ClusterView.open(args).statuses()
    return HomeView.open(args).statuses()


# ----------------------------------------------------------------------------- runs


@dataclass
class RunRow:
    run_id: str
    spec: str
    submitted: str
    backend: str = ""
    job: str = ""
    data_md5: str = ""
    commit: str = ""
    state: str = "Submitted"
    gate: str = "-"
    serving: bool = False
    loss: str = "-"

    def to_dict(self) -> dict[str, Any]:
        return {"runId": self.run_id, "spec": self.spec, "state": self.state, "gate": self.gate, "serving": self.serving,
                "submitted": self.submitted, "backend": self.backend, "job": self.job, "dataMd5": self.data_md5,
                "commit": self.commit}


def runs(view: HomeView) -> list[RunRow]:
    """Every run the ledger knows, newest first, with how far it got."""
    rows: dict[str, RunRow] = {}
    serving = {s.serving_run_id for s in view.statuses().values() if s.serving_run_id}
    for e in view.events():
        if e.run_id is None:
            continue
        if e.kind == "run.submitted":
            p = e.payload
            rows[e.run_id] = RunRow(e.run_id, e.spec or "", e.time, str(p.get("backend", "")), str(p.get("job", "")),
                                    str(p.get("dataMd5", "")), str(p.get("commit", "")))
            continue
        row = rows.get(e.run_id)
        if row is None:
            continue
        if e.kind == "run.finished":
            row.state = "Trained"
        elif e.kind == "eval.reported":
            row.state = "Evaluated"
        elif e.kind == "gate.decided":
            row.gate = "Passed" if e.payload.get("passed") else "Failed"
    for row in rows.values():
        row.serving = row.run_id in serving
        if row.serving:
            row.state = "Serving"
    return sorted(rows.values(), key=lambda r: r.submitted, reverse=True)


# ----------------------------------------------------------------------------- gate decisions


def gate_decision(view: HomeView, status: SpecStatus) -> tuple[dict[str, Any] | None, str]:
    """The last gate decision for the spec's current run and where it was read from: the ledger's
    `gate.decided` record, else the run's eval/gate.json in the artifact store."""
    run = status.run_id
    if run is None:
        return None, ""
    ledger = view.ledger
    if ledger is not None:
        found = ledger.last(kind="gate.decided", spec=status.name, run_id=run)
        if found is not None:
            return found.payload, f"ledger record #{found.seq}"
    store = view.store()
    uri = store.join(store.run_uri(status.name, run), "eval/gate.json")
    try:
        return json.loads(store.get(uri)), uri
    except (FileNotFoundError, ValueError):
        return None, ""


def gate_lines(gate: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(verdict, metric, kind, value, threshold) per gate line."""
    out = []
    for line in gate.get("lines") or []:
        out.append(("PASS" if line.get("passed") else "FAIL", str(line.get("metric")), str(line.get("kind")),
                    _number(line.get("value")), _number(line.get("threshold"))))
    return out


def _number(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:.4f}"


# ----------------------------------------------------------------------------- ledger records as text


def summary(kind: str, payload: dict[str, Any]) -> str:
    """One line for a ledger record, for people: what happened, with its numbers."""
    p = payload
    if kind == "spec.observed":
        message = (p.get("message") or "").splitlines()
        return (f"commit {str(p.get('commit', ''))[:12]} by {p.get('author')}: {message[0] if message else ''}"
                f" (action {p.get('action', '?')})")
    if kind == "data.versioned":
        counts = p.get("counts") or {}
        review = p.get("review") or {}
        return (f"{p.get('path')} md5 {str(p.get('md5'))[:12]}: {counts.get('train', '?')} train / "
                f"{counts.get('test', '?')} test; review {review.get('approved', '?')}/{review.get('reviewed', '?')} approved")
    if kind == "run.submitted":
        return f"submitted to {p.get('backend')} as {p.get('job')} (data md5 {str(p.get('dataMd5'))[:12]})"
    if kind == "run.finished":
        return f"finished: {len(p.get('artifacts') or {})} artifacts, manifest sha256 {str(p.get('manifestSha256'))[:12]}"
    if kind == "eval.reported":
        return f"evaluation {p.get('status')}: {metrics_text(p.get('metrics') or {})}"
    if kind == "gate.decided":
        return gate_summary(p)
    if kind == "spec.stalled":
        return f"stalled ({p.get('reason')}): {p.get('error')}"
    if kind.startswith("deploy."):
        verb = kind.split(".", 1)[1].replace("_", " ")
        previous = f" (previous {p.get('previousRunId')})" if p.get("previousRunId") else ""
        message = f": {p['message']}" if p.get("message") else ""
        return f"{verb} run {p.get('runId') or '-'}{previous}{message}"
    if kind == "spec.pruned":
        cancelled = p.get("cancelledRuns") or []
        return f"spec deleted at {str(p.get('commit', ''))[:12]}; cancelled {len(cancelled)} run(s); artifacts kept"
    return ", ".join(f"{k}={v}" for k, v in p.items() if isinstance(v, (str, int, float, bool)))[:200]


def metrics_text(metrics: dict[str, Any]) -> str:
    """`task.exact_match 0.93, format.compliance 1.00`: every metric, whole, in a fixed order."""
    parts = []
    for name in sorted(metrics):
        value = metrics[name]
        parts.append(f"{name} {value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{name} -")
    return ", ".join(parts) or "no metrics"


def gate_summary(gate: dict[str, Any]) -> str:
    """`gate passed (3 gates)` or `gate failed: task.exact_match 0.41 < min 0.90; ...`: the why."""
    lines = gate.get("lines") or []
    if gate.get("passed"):
        return f"gate passed ({len(lines)} gate{'s' if len(lines) != 1 else ''})"
    failed = [line for line in lines if not line.get("passed")]
    why = "; ".join(str(line.get("message") or line.get("metric")) for line in failed) or "no report"
    return f"gate failed: {why}"


__all__ = ["HomeView", "RunRow", "waiting_reasons", "gate_decision", "gate_lines", "gate_summary", "gate_word",
           "headline", "last_changed", "metrics_text", "pipeline_order", "runs", "shown_phase", "summary",
           "waiting_for_people"]
