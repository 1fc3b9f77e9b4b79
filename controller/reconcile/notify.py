"""What the reconciler tells the forge after a pass, and the outbox that makes sure it arrives.

`commit_report` turns a spec's status into a `CommitReport` (pure): pending while the chain
runs, success when the run is Ready (with the gate's summary), failure when the spec stalled
(the gate's metric-by-metric message when a gate failed). `Outbox` sends a report only when a
spec's summary changed since the last one that arrived, and keeps what could not be sent: a
TemporaryError from the forge (a 5xx, a timeout) is retried on later passes with the
controller's capped exponential backoff, never raised into the pass; a PermanentError (a bad
token) is logged and dropped until the summary changes. What arrived is kept in `<home>/state/_notify.json`, so a
restarted controller does not post every status again.

The reconciler calls this from one place, the end of a pass (`Reconciler._report`); steps never
notify.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from controller.clock import Clock
from controller.errors import PermanentError, TemporaryError
from controller.fsutil import write_json_atomic
from controller.reconcile.config import ControllerConfig
from controller.seams import CommitReport, CommitState, JsonObject, Notifier
from controller.seams.notifier import SUMMARY_LIMIT
from controller.status import GATE_PASSED, READY, STALLED, Reason, SpecStatus

log = logging.getLogger("ftops.notify")


def commit_report(status: SpecStatus) -> CommitReport | None:
    """The report for one spec's status; None before the spec was observed at a commit."""
    commit = status.observed_revision
    if not commit:
        return None
    gate = status.condition(GATE_PASSED)
    stalled = status.condition(STALLED)
    state: CommitState
    if stalled is not None and stalled.status == "True":
        state = "failure"
        if gate is not None and gate.status == "False" and gate.reason == Reason.GATE_FAILED:
            summary = f"gate failed: {gate.message}"
        else:
            summary = f"{stalled.reason}: {stalled.message}"
    elif status.is_true(READY):
        state = "success"
        summary = f"Ready: run {status.serving_run_id or status.run_id} serves"
        if gate is not None and gate.status == "True":
            summary += f"; gate passed: {gate.message}"
    elif stalled is not None and stalled.reason == Reason.INTERNAL_ERROR:
        state = "error"
        summary = f"{stalled.reason}: {stalled.message}"
    else:
        state = "pending"
        summary = f"{status.phase}: run {status.run_id}" if status.run_id else status.phase
        waiting = next((c for c in status.conditions if c.status != "True" and c.type not in (READY, STALLED)), None)
        if waiting is not None and waiting.message:
            summary += f" ({waiting.message})"
    return CommitReport(status.name, commit, state, _line(summary), _details(status), status.run_id)


def _line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def _details(status: SpecStatus) -> str:
    rows = [f"**{status.name}** at `{(status.observed_revision or '')[:12]}`: {status.phase}", "",
            "| condition | status | reason | message |", "|---|---|---|---|"]
    rows += [f"| {c.type} | {c.status} | {c.reason} | {c.message.replace('|', '/')} |" for c in status.conditions]
    return "\n".join(rows) + "\n"


@dataclass
class _Pending:
    report: CommitReport
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""


class Outbox:
    """Reports waiting to reach the notifier, and the last one that reached it per spec."""

    def __init__(self, notifier: Notifier, path: Path, config: ControllerConfig, clock: Clock) -> None:
        self.notifier = notifier
        self.path = path
        self.config = config
        self.clock = clock
        self.sent: dict[str, tuple[str, str, str]] = {}
        self.pending: dict[str, _Pending] = {}
        self._load()

    def offer(self, report: CommitReport) -> None:
        """Queue `report` unless it is what the forge already shows (or is about to)."""
        waiting = self.pending.get(report.spec)
        if waiting is not None and waiting.report.key == report.key:
            return
        if waiting is None and self.sent.get(report.spec) == report.key:
            return
        self.pending[report.spec] = _Pending(report)  # a newer state supersedes one not sent yet

    def flush(self) -> float | None:
        """Send every report that is due. Seconds until the next retry, None when nothing waits."""
        now = self.clock.time()
        changed = False
        for spec, item in sorted(self.pending.items()):
            if item.retry_at > now:
                continue
            try:
                self.notifier.notify(item.report)
            except PermanentError as exc:
                log.error(json.dumps({"event": "notify_refused", "spec": spec, "notifier": self.notifier.name,
                                      "message": str(exc)}))
                self.sent[spec] = item.report.key  # dropped: asked again only when the summary changes
                del self.pending[spec]
            except Exception as exc:  # noqa: BLE001 - TemporaryError, or a bug: retried, never raised into the pass
                item.failures += 1
                item.retry_at = now + self.config.backoff(item.failures)
                item.last_error = str(exc)
                level = logging.WARNING if isinstance(exc, TemporaryError) else logging.ERROR
                log.log(level, json.dumps({"event": "notify_failed", "spec": spec, "notifier": self.notifier.name,
                                           "failures": item.failures, "retryIn": round(item.retry_at - now, 1),
                                           "message": str(exc)}))
            else:
                self.sent[spec] = item.report.key
                del self.pending[spec]
            changed = True
        if changed:
            self._save()
        waits = [item.retry_at - now for item in self.pending.values()]
        return max(0.0, min(waits)) if waits else None

    def forget(self, spec: str) -> None:
        self.sent.pop(spec, None)
        self.pending.pop(spec, None)

    # -- persistence

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if not isinstance(data, dict):
            return
        sent = data.get("sent")
        if isinstance(sent, dict):
            for spec, key in sent.items():
                if isinstance(key, list) and len(key) == 3:
                    self.sent[spec] = (str(key[0]), str(key[1]), str(key[2]))
        pending = data.get("pending")
        if isinstance(pending, dict):
            for spec, item in pending.items():
                if isinstance(item, dict) and isinstance(item.get("report"), dict):
                    report = item["report"]
                    failures, retry_at = item.get("failures"), item.get("retryAt")
                    self.pending[spec] = _Pending(CommitReport.from_json(report),
                                                  failures if isinstance(failures, int) else 0,
                                                  float(retry_at) if isinstance(retry_at, (int, float)) else 0.0,
                                                  str(item.get("lastError", "")))

    def _save(self) -> None:
        data: JsonObject = {
            "sent": {spec: list(key) for spec, key in sorted(self.sent.items())},
            "pending": {spec: {"report": item.report.to_json(), "failures": item.failures, "retryAt": item.retry_at,
                               "lastError": item.last_error} for spec, item in sorted(self.pending.items())},
        }
        write_json_atomic(self.path, data)
