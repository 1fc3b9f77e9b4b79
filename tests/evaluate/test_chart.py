"""eval/chart.png (each gated metric against its threshold and the serving run) and eval/loss.png
(the loss per step from metrics.jsonl): what they show, from the pure functions, and that the
pictures drawn say it (colours counted in the PNG)."""
from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fakes

from fakes import MemoryStore  # noqa: E402

from controller.evaluate.chart import FAIL, PASS, SERVING, loss_points, panels, render_chart, write_pictures  # noqa: E402
from controller.evaluate.report import record_gate  # noqa: E402

REPORT = {"runId": "bbbb22223333", "specName": "triage", "status": "completed",
          "metrics": {"task.exact_match": 0.41, "format.compliance": 1.0, "regression.drop": 0.02, "rag.recallAtK": 0.7}}
SERVING_REPORT = {"runId": "aaaa11112222", "specName": "triage", "status": "completed",
                  "metrics": {"task.exact_match": 0.94, "format.compliance": 1.0, "regression.drop": 0.01}}
GATE = {"kind": "GateDecision", "runId": "bbbb22223333", "passed": False, "lines": [
    {"metric": "task.exact_match", "kind": "min", "value": 0.41, "threshold": 0.9, "passed": False,
     "message": "task accuracy (exact_match) 0.4100 < min 0.9000"},
    {"metric": "format.compliance", "kind": "min", "value": 1.0, "threshold": 1.0, "passed": True, "message": "ok"},
    {"metric": "regression.drop", "kind": "maxDrop", "value": 0.02, "threshold": 0.05, "passed": True, "message": "ok"},
    {"metric": "bias.gap", "kind": "maxGap", "value": None, "threshold": 0.1, "passed": False,
     "message": "bias gap between groups: metric bias.gap is missing from the report"},
]}


def test_one_panel_per_gated_metric_with_threshold_verdict_and_the_serving_run():
    shown = panels(REPORT, GATE, SERVING_REPORT)
    assert [(p.metric, p.kind, p.value, p.threshold, p.passed, p.serving) for p in shown] == [
        ("task.exact_match", "min", 0.41, 0.9, False, 0.94),
        ("format.compliance", "min", 1.0, 1.0, True, 1.0),
        ("regression.drop", "maxDrop", 0.02, 0.05, True, 0.01),
        ("bias.gap", "maxGap", None, 0.1, False, None),  # a missing metric is a panel that says n/a
    ]
    # an ungated metric (rag.recallAtK) is not drawn once the gate has decided; a report-level line has no panel
    failed_report = {**GATE, "lines": [{"metric": "report.runId", "kind": "report", "value": None, "threshold": None,
                                        "passed": False, "message": "report is for another run"}]}
    assert panels(REPORT, failed_report) == []


def test_before_the_gate_every_numeric_metric_is_a_panel_without_threshold():
    shown = panels({**REPORT, "metrics": {**REPORT["metrics"], "bias.gap": math.nan}})
    assert [p.metric for p in shown] == ["format.compliance", "rag.recallAtK", "regression.drop", "task.exact_match"]
    assert all(p.threshold is None and p.passed is None and p.serving is None for p in shown)


def test_loss_points_read_every_logged_loss_and_nothing_else():
    text = "\n".join([json.dumps({"step": 10, "loss": 2.5}), "not json", json.dumps({"step": 20, "lr": 1e-4}),
                      json.dumps({"step": 30, "loss": None}), json.dumps({"step": 40, "loss": 1.25}), ""])
    assert loss_points(text.encode()) == [(10.0, 2.5), (40.0, 1.25)]


def _colours(png: bytes) -> dict[str, int]:
    from PIL import Image

    import numpy as np

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    wanted = {name: [int(h[i:i + 2], 16) for i in (1, 3, 5)] for name, h in
              (("fail", FAIL), ("pass", PASS), ("serving", SERVING))}
    return {name: int(np.all(pixels == rgb, axis=-1).sum()) for name, rgb in wanted.items()}


def test_the_chart_draws_failures_red_passes_green_and_the_serving_run_grey():
    colours = _colours(render_chart(REPORT, GATE, SERVING_REPORT))
    assert colours["fail"] > 500 and colours["pass"] > 500 and colours["serving"] > 500
    alone = _colours(render_chart(REPORT, {**GATE, "lines": GATE["lines"][:1]}))
    assert alone["fail"] > 500 and alone["pass"] < 100 and alone["serving"] < 100  # no serving run: no grey bar


def test_record_gate_draws_both_pictures_into_the_store_and_the_manifest():
    store = MemoryStore()
    ours, theirs = store.run_uri("triage", "bbbb22223333"), store.run_uri("triage", "aaaa11112222")
    store.write_run(ours, "bbbb22223333", {"model/a.safetensors": b"w", "metrics.jsonl": b'{"step": 1, "loss": 2.0}\n'})
    store.put(store.join(theirs, "eval/report.json"), json.dumps(SERVING_REPORT).encode())
    store.put(store.join(ours, "eval/report.json"), json.dumps(REPORT).encode())
    record_gate(store, ours, REPORT, GATE, serving_run_uri=theirs)
    manifest = json.loads(store.get(store.join(ours, "manifest.json")))
    for rel in ("eval/chart.png", "eval/loss.png"):
        data = store.get(store.join(ours, rel))
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert manifest["files"][rel]["sha256"] == hashlib.sha256(data).hexdigest()
    assert _colours(store.get(store.join(ours, "eval/chart.png")))["serving"] > 500


def test_write_pictures_without_a_serving_run_or_losses():
    store = MemoryStore()
    uri = store.run_uri("triage", "bbbb22223333")
    write_pictures(store, uri, REPORT, GATE)
    assert store.get(store.join(uri, "eval/loss.png"))[:4] == b"\x89PNG"
    assert _colours(store.get(store.join(uri, "eval/chart.png")))["serving"] < 100
