"""The evaluation report: report.json (machines), report.md (a pull-request comment), chart.png.

report.json's schema is documented in docs/evaluation.md. It is written with sorted keys and no
NaN (JSON has none: a NaN score is written as null, which the gate reads as "not a number" and
fails). Its sha256 goes into the run's manifest as `evaluation.reportSha256`, and the files under
eval/ join the manifest's file-hash list, so the manifest stays "sha256 of every file".
"""
from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.errors import PermanentError
from controller.fsutil import sha256_file, write_bytes_atomic

if TYPE_CHECKING:
    from controller.seams import ArtifactStore

PR_COMMENT_LIMIT = 60000  # GitHub allows 65536 characters in a comment; leave room for a header


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Report:
    """An evaluation report (the dict that becomes report.json)."""

    def __init__(self, data: dict) -> None:
        self.data = data
        self.path: Path | None = None
        self.sha256: str | None = None

    @property
    def run_id(self) -> str | None:
        return self.data.get("runId")

    @property
    def metrics(self) -> dict:
        return self.data.get("metrics") or {}

    def to_dict(self) -> dict:
        return self.data

    def to_json(self) -> str:
        return json.dumps(_clean(self.data), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"

    def write(self, run_dir: str | Path, output_dir: str | Path | None = None) -> Path:
        """eval/report.json, report.md and chart.png, then the manifest entry."""
        run_dir = Path(run_dir)
        out = Path(output_dir) if output_dir is not None else run_dir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        text = self.to_json().encode("utf-8")
        write_bytes_atomic(out / "report.json", text)
        self.path = out / "report.json"
        self.sha256 = hashlib.sha256(text).hexdigest()
        write_bytes_atomic(out / "report.md", render_markdown(self.data).encode("utf-8"))
        if self.data.get("status") == "completed":
            from controller.evaluate.chart import write_chart

            write_chart(self.data, out / "chart.png")
        else:  # a chart of an earlier evaluation must not sit beside a crashed report
            (out / "chart.png").unlink(missing_ok=True)
        record_in_manifest(run_dir, self.path)
        return self.path


def record_gate(store: "ArtifactStore", run_uri: str, report: dict, gate: dict, serving_run_uri: str | None = None) -> None:
    """Write the gate decision beside the report it was made from (eval/gate.json: the only thing
    serving trusts), the PR-sized report.md with the gate lines, the pictures (chart.png: each
    gated metric against its threshold and the run at `serving_run_uri`; loss.png) and all of
    them into the run's manifest (the sha256 of every file under eval/, and `evaluation.gate`),
    through the artifact store."""
    from controller.evaluate.chart import write_pictures

    gate_bytes = (json.dumps(gate, indent=2, sort_keys=True) + "\n").encode("utf-8")
    store.put(store.join(run_uri, "eval/gate.json"), gate_bytes)
    store.put(store.join(run_uri, "eval/report.md"), render_markdown(report, gate).encode("utf-8"))
    write_pictures(store, run_uri, report, gate, serving_run_uri)
    manifest_uri = store.join(run_uri, "manifest.json")
    manifest = json.loads(store.get(manifest_uri))
    files = {rel: entry for rel, entry in (manifest.get("files") or {}).items() if not rel.startswith("eval/")}
    for rel in store.list(store.join(run_uri, "eval")):
        if rel.endswith(".tmp"):
            continue
        content = store.get(store.join(run_uri, f"eval/{rel}"))
        files[f"eval/{rel}"] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    manifest["files"] = files
    report_bytes = store.get(store.join(run_uri, "eval/report.json"))
    manifest["evaluation"] = {"reportSha256": hashlib.sha256(report_bytes).hexdigest(), "reportPath": "eval/report.json",
                              "evaluatedAt": (manifest.get("evaluation") or {}).get("evaluatedAt")
                              or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "gate": {"passed": gate.get("passed"), "reason": gate.get("reason")}}
    store.put(manifest_uri, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def load_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PermanentError(f"{path}: no evaluation report; run `ftops eval` first") from None
    except json.JSONDecodeError as exc:
        raise PermanentError(f"{path}:{exc.lineno}: the report is not valid JSON ({exc.msg})") from None


def record_in_manifest(run_dir: str | Path, report_path: str | Path, gate: dict | None = None) -> Path:
    """Add `evaluation: {reportSha256, reportPath, evaluatedAt[, gate]}` to the run's manifest and
    the hash of every file under eval/ (inside the run directory) to its `files` list; written
    atomically like the trainer's manifest. Nothing else in the manifest changes."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    report_path = Path(report_path)
    try:
        rel = report_path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        rel = str(report_path)
    files = manifest.setdefault("files", {})
    eval_dir = report_path.parent
    if eval_dir.resolve().is_relative_to(run_dir.resolve()):
        prefix = eval_dir.resolve().relative_to(run_dir.resolve()).as_posix() + "/"
        for stale in [rel for rel in files if rel.startswith(prefix) and not (run_dir / rel).is_file()]:
            del files[stale]  # e.g. the chart of an earlier evaluation, removed with it
        for path in sorted(p for p in eval_dir.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
            files[path.resolve().relative_to(run_dir.resolve()).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    entry = {"reportSha256": sha256_file(report_path), "reportPath": rel,
             "evaluatedAt": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if gate is not None:
        entry["gate"] = {"passed": gate.get("passed"), "reason": gate.get("reason")}
    manifest["evaluation"] = entry
    write_bytes_atomic(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return manifest_path


# ---------------------------------------------------------------------------- markdown


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.1f}%"


def _cell(text: Any, n: int = 60) -> str:
    if isinstance(text, str) and not text.strip():
        return "_(blank)_"
    text = str(text).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def render_markdown(data: dict, gate: dict | None = None, limit: int = PR_COMMENT_LIMIT) -> str:
    """report.md: the numbers a reviewer needs, short enough for one pull-request comment."""
    run = data.get("runId")
    lines = [f"### ftops evaluation: `{data.get('specName')}` run `{run}`", ""]
    if data.get("status") != "completed":
        lines += [f"**Evaluation {data.get('status')}:** {_cell(data.get('error'), 500)}", ""]
        return "\n".join(lines)
    if gate is not None:
        lines += [f"**Gate: {'PASS' if gate.get('passed') else 'FAIL'}**", "", "| | metric | value | threshold |", "|---|---|---|---|"]
        for line in gate.get("lines", []):
            value = "n/a" if line.get("value") is None else f"{line['value']:.4f}"
            thr = "n/a" if line.get("threshold") is None else f"{line['threshold']:.4f}"
            lines.append(f"| {'✅' if line.get('passed') else '❌'} | {line['metric']} ({line['kind']}) | {value} | {thr} |")
        lines.append("")
    served = data.get("servingConfig")
    if served:
        retrieval = (f"{served.get('retriever')} top {served.get('topK')} over corpus `{str(served.get('corpus'))[:16]}`"
                     if served.get("corpus") else "no retrieval")
        lines += [f"Evaluated on the served system: {retrieval}, prompt `{served.get('prompt')}`, "
                  f"max {(served.get('generation') or {}).get('maxTokens')} tokens (configuration "
                  f"`{str(served.get('sha256'))[:12]}`).", ""]
    task = data.get("task") or {}
    lines += [f"**Task accuracy** ({task.get('metric')}): {_pct(task.get('score'))} on {task.get('examples')} held-out examples "
              f"({task.get('failed', 0)} wrong)."]
    rag = data.get("rag")
    if rag:
        lines.append(f"**Retrieval and citations** ({rag.get('withGold')} examples name a gold source): recall@{rag.get('topK')} "
                     f"{_pct(rag.get('recallAtK'))}, citation accuracy {_pct(rag.get('citationAccuracy'))} "
                     f"({_pct(rag.get('citationAccuracyWhenRetrieved'))} when the gold source was retrieved), "
                     f"groundedness {_pct(rag.get('groundedness'))} ({rag.get('withFacts')} answers with facts).")
    fmt = data.get("format")
    if fmt:
        lines.append(f"**Format compliance** ({fmt.get('kind')}): {_pct(fmt.get('compliance'))} "
                     f"({fmt.get('compliant')}/{fmt.get('examples')}).")
    reg = data.get("regression")
    if reg:
        lines.append(f"**Regression** (suite `{reg.get('suite')}`, {reg.get('examples')} tasks): base {_pct(reg.get('base'))}, "
                     f"fine-tuned {_pct(reg.get('fineTuned'))}, drop {_pct(reg.get('drop'))}.")
    bias = data.get("bias")
    if bias:
        groups = ", ".join(f"{g} {_pct(v.get('score'))}" for g, v in bias.get("groups", {}).items())
        lines.append(f"**Bias** (by `{bias.get('groupField')}`): {groups}; largest gap {_pct(bias.get('gap'))} "
                     f"({bias.get('best')} vs {bias.get('worst')}).")
    cmp_ = data.get("compare")
    if cmp_:
        lines += ["", f"**A/B comparison** on the same {cmp_.get('samples')} inputs ({cmp_.get('metric')}):", "",
                  "| model | score | fine-tuned wins / ties / losses |", "|---|---|---|"]
        for name, entry in cmp_.get("models", {}).items():
            wr = cmp_.get("winRates", {}).get(name)
            wins = "—" if wr is None else f"{_pct(wr.get('win'))} / {_pct(wr.get('tie'))} / {_pct(wr.get('loss'))}"
            lines.append(f"| {name} | {_pct(entry.get('score'))} | {wins} |")
        side = cmp_.get("sideBySide") or []
        if side:
            names = list(side[0]["outputs"])
            lines += ["", "<details><summary>Side by side</summary>", "", "| input | expected | " + " | ".join(names) + " |",
                      "|---" * (2 + len(names)) + "|"]
            for row in side:
                lines.append(f"| {_cell(row['prompt'])} | {_cell(row['expected'], 40)} | "
                             + " | ".join(_cell(row["outputs"][n], 40) for n in names) + " |")
            lines += ["", "</details>"]
    failures = [("Wrong answers", task.get("failures") or [], ("line", "expected", "output"))]
    if fmt:
        failures.append(("Format failures", fmt.get("failures") or [], ("line", "output", "reason")))
    if reg:
        failures.append(("Forgotten general tasks", reg.get("forgotten") or [], ("id", "expected", "fineTuned")))
    if rag:
        failures.append(("Retrieval and citation failures", rag.get("failures") or [], ("line", "output", "reason")))
    for title, rows, cols in failures:
        if not rows:
            continue
        lines += ["", f"<details><summary>{title} (first {len(rows)})</summary>", "", "| " + " | ".join(cols) + " |",
                  "|---" * len(cols) + "|"]
        lines += ["| " + " | ".join(_cell(r.get(c), 70) for c in cols) + " |" for r in rows]
        lines += ["", "</details>"]
    cont = data.get("contamination")
    if cont:
        lines += ["", "**Contamination** (word " + str(next(iter(cont.values()))["ngram"]) + "-gram overlap with the training data): "
                  + ", ".join(f"{k} {_pct(v['ngramOverlap'])} ({v['exactCopies']} exact copies)" for k, v in cont.items()) + "."]
    text = "\n".join(lines) + "\n"
    if len(text) > limit:
        text = text[: limit - 80].rsplit("\n", 1)[0] + "\n\n_(truncated; full details in eval/report.json)_\n"
    return text
