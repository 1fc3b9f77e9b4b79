"""Is this run allowed to serve? Only when its own gate passed (DESIGN principle 4).

Reads, through the artifact store, `<run>/manifest.json` (the run finished) and `<run>/eval/gate.json`, written by the gate
(controller.gate's `Decision.to_dict()`: `{"runId", "passed", "reportSha256", "lines": [...]}`).
Refused, with the reason, when: the run has no manifest, there is no gate decision, the decision
is for another run id (a copied or stale file), `passed` is anything but the JSON literal true,
the file is not valid JSON, or the report the decision was made from (`reportSha256`) is not the
`eval/report.json` beside it any more (a report edited after the decision vouches for nothing).
Pure file reads, so the reconciler and `ftops rollback` can ask it any time.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from controller.errors import PermanentError

if TYPE_CHECKING:
    from controller.seams import ArtifactStore


class GateNotPassed(PermanentError):
    """The run may not be promoted; the message says why."""


def gate_decision(store: "ArtifactStore", run_uri: str) -> dict:
    """The gate decision for the run at `run_uri` when it passed; raises GateNotPassed otherwise."""
    try:
        manifest = json.loads(store.get(store.join(run_uri, "manifest.json")))
        run_id = manifest["runId"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise GateNotPassed(f"{run_uri}: no valid manifest.json, so the run is not finished; nothing to promote") from None
    path = store.join(run_uri, "eval/gate.json")
    try:
        gate = json.loads(store.get(path))
    except FileNotFoundError:
        raise GateNotPassed(f"run {run_id}: no gate decision ({path} is missing); evaluate and gate the run first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise GateNotPassed(f"run {run_id}: {path} is not readable JSON ({exc}); re-run the gate") from None
    if not isinstance(gate, dict):
        raise GateNotPassed(f"run {run_id}: {path} is not a gate decision object")
    if gate.get("runId") != run_id:
        raise GateNotPassed(f"run {run_id}: {path} is the gate decision for run {gate.get('runId')!r}, not this run; "
                            "a decision only counts for the exact run it was made for")
    if gate.get("passed") is not True:
        reasons = [line for line in gate.get("lines") or [] if isinstance(line, dict) and not line.get("passed")]
        reasons = reasons or gate.get("reasons") or []
        detail = "; ".join(str(r.get("message", r)) if isinstance(r, dict) else str(r) for r in reasons)[:800]
        raise GateNotPassed(f"run {run_id}: the gate did not pass{': ' + detail if detail else ''}; "
                            "the serving version stays as it is")
    recorded = gate.get("reportSha256")
    if recorded:
        report = store.join(run_uri, "eval/report.json")
        try:
            actual = hashlib.sha256(store.get(report)).hexdigest()
        except OSError:
            raise GateNotPassed(f"run {run_id}: the gate decision was made from {report}, which is missing") from None
        if actual != recorded:
            raise GateNotPassed(f"run {run_id}: {report} changed after the gate decided (sha256 {actual[:12]}… != "
                                f"{recorded[:12]}…); re-run the evaluation and the gate")
    return gate
