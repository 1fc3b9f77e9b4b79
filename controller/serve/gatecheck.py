"""Is this run allowed to serve? Only when its own gate passed (DESIGN principle 4).

Reads `<run>/manifest.json` (the run finished) and `<run>/eval/gate.json`, written by the gate
(controller.gate, `{"runId": ..., "passed": bool, ...}`). Refused, with the reason, when: the run
has no manifest, there is no gate decision, the decision is for another run id (a copied or
stale file), `passed` is anything but the JSON literal true, or the file is not valid JSON.
Pure file reads, so the reconciler and `ftops rollback` can ask it any time.
"""
from __future__ import annotations

import json
from pathlib import Path

from controller.errors import PermanentError


class GateNotPassed(PermanentError):
    """The run may not be promoted; the message says why."""


def gate_decision(run_dir: str | Path) -> dict:
    """The gate decision for the run in `run_dir` when it passed; raises GateNotPassed otherwise."""
    run_dir = Path(run_dir)
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        run_id = manifest["runId"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise GateNotPassed(f"{run_dir}: no valid manifest.json, so the run is not finished; nothing to promote") from None
    path = run_dir / "eval" / "gate.json"
    try:
        gate = json.loads(path.read_text())
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
        reasons = gate.get("reasons") or gate.get("failures") or []
        detail = "; ".join(str(r.get("message", r)) if isinstance(r, dict) else str(r) for r in reasons)[:800]
        raise GateNotPassed(f"run {run_id}: the gate did not pass{': ' + detail if detail else ''}; "
                            "the serving version stays as it is")
    return gate
