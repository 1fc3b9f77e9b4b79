"""Is this run allowed to serve? Only when its own gate passed (DESIGN principle 4).

Reads, through the artifact store, `<run>/manifest.json` (the run finished) and `<run>/eval/gate.json`, written by the gate
(controller.gate's `Decision.to_dict()`: `{"runId", "passed", "reportSha256", "lines": [...]}`).
Refused, with the reason, when: the run has no manifest, there is no gate decision, the decision
is for another run id (a copied or stale file), `passed` is anything but the JSON literal true,
the file is not valid JSON, the report the decision was made from (`reportSha256`) is not the
`eval/report.json` beside it any more (a report edited after the decision vouches for nothing), or
the decision was made on another serving configuration than the one being deployed
(`servingConfigSha256`, controller.identity.serving_config: a run evaluated on yesterday's corpus
or another retriever vouches for nothing about today's). Pure file reads, so the reconciler and
`ftops rollback` can ask it any time.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from controller.errors import PermanentError

if TYPE_CHECKING:
    from controller.seams import ArtifactStore, DeployRequest


class GateNotPassed(PermanentError):
    """The run may not be promoted; the message says why."""


def requested_config(request: "DeployRequest") -> str:
    """The serving-configuration hash a deploy request presents, checked against what the request
    will actually serve (its spec's serving block and corpus version); GateNotPassed otherwise."""
    from controller.identity import serving_config, serving_config_sha256

    own = serving_config_sha256(serving_config(request.finetune, request.corpus_version))
    if own != request.serving_config_sha256:
        raise GateNotPassed(f"run {request.run_id}: the request presents serving configuration "
                            f"{request.serving_config_sha256[:12]}…, but its serving block and corpus version "
                            f"{request.corpus_version!r} are configuration {str(own)[:12]}…; nothing is promoted on a "
                            "configuration it was not evaluated on")
    return own


def gate_decision(store: "ArtifactStore", run_uri: str, serving_config: str | None = None) -> dict:
    """The gate decision for the run at `run_uri` when it passed (on `serving_config`, the hash of
    the serving configuration being deployed, when given); raises GateNotPassed otherwise."""
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
    if serving_config is not None and gate.get("servingConfigSha256") != serving_config:
        evaluated = gate.get("servingConfigSha256")
        raise GateNotPassed(f"run {run_id}: its gate passed on serving configuration "
                            f"{str(evaluated)[:12] + '…' if evaluated else 'none recorded'}, not on the one being deployed "
                            f"({serving_config[:12]}…: corpus, retriever, topK, prompt or generation limits differ); "
                            "evaluate it on this configuration first")
    return gate
