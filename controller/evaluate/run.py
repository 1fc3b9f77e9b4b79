"""One evaluation of a finished run: the spec's suites on the served system, then report.json
(+ md, png).

Order, so that bad input fails before any model loads: manifest (the run is finished) -> held-out
split (sha256 must match the one the run recorded: evaluating on anything else would report a
number that means nothing) -> bias set, regression suite, format schema, reference models ->
the served configuration (corpus index built or loaded) -> suites -> report.

Each kind of evaluation is a suite (controller.evaluate.suite: one signature, `run(examples,
generate) -> Section`): task, format, RAG metrics, bias, contamination, regression, A/B. They
run in that order so each model loads once (the fine-tune, then its base, then the references),
and they share one `Generate` that answers through the served configuration and remembers every
answer, so the fine-tune's answers on the test split are generated once for all of them.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from controller.errors import PermanentError
from controller.evalconfig import EvalServing
from controller.evaluate import metrics as M
from controller.evaluate.datasets import DEFAULT_SUITE, EvalExample, read_examples, resolve_repo_path, suite_path
from controller.evaluate.report import Report
from controller.evaluate.suite import Generate, Section, Suite
from controller.evaluate.suites import (
    BiasSuite,
    CompareSuite,
    ContaminationSuite,
    FormatSuite,
    RagSuite,
    RegressionSuite,
    TaskSuite,
)
from controller.fsutil import sha256_file
from controller.seams.json import JsonObject
from controller.spec.evaluation import EvaluationSpec
from controller.spec.finetune import FineTune

Planned = tuple[Suite, Sequence[EvalExample]]


def run_evaluation(
    run_dir: str | Path,
    spec: FineTune,
    test_path: str | Path,
    *,
    train_path: str | Path | None = None,
    repo_root: str | Path | None = None,
    serving: EvalServing | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    write: bool = True,
    env: Mapping[str, str] | None = None,
) -> Report:
    """Evaluate the run in `run_dir` against the FineTune `spec` on the held-out split `test_path`,
    through the served configuration `serving` (eval.json's, from the controller, or
    controller.evaluate.served.for_repo's by hand; None: on the prompts as written). `train_path`
    enables the contamination check. Spec paths (bias set, custom regression suite, local
    reference models) are relative to `repo_root` (default: the current directory).
    Writes `<run_dir>/eval/` (or `output_dir`) and records the report's sha256 in the run's
    manifest unless `write` is False. Raises FtopsError on bad input; callers that must always
    leave a report use `crashed_report`."""
    from controller.evaluate.answering import Answers, ModelPool
    from controller.evaluate.generation import context_length, load_run_tokenizer, read_manifest
    from controller.evaluate.served import setup

    run_dir = Path(run_dir)
    ev = spec.spec.evaluation
    manifest = read_manifest(run_dir)
    run_id = manifest["runId"]
    prov = manifest["provenance"]
    root = Path(repo_root) if repo_root is not None else None

    # ---- inputs, checked before any model loads
    test_path = Path(test_path)
    test = read_examples(test_path, "test split")
    test_sha = sha256_file(test_path)
    recorded = prov.get("testSha256")
    if recorded and recorded != test_sha:
        raise PermanentError(
            f"{test_path}: sha256 {test_sha} is not the held-out split run {run_id} recorded ({recorded}); "
            "evaluate on the run's own test split (the one in its run.json)"
        )
    inputs: JsonObject = {"test": {"path": str(test_path), "sha256": test_sha, "examples": len(test)}}
    train_texts: list[str] | None = None
    if train_path is not None:
        train_path = Path(train_path)
        train = read_examples(train_path, "train split")
        train_texts = [e.text() for e in train]
        inputs["train"] = {"path": str(train_path), "sha256": sha256_file(train_path), "examples": len(train_texts)}
    bias = _bias_set(ev, root, inputs)
    suite = _regression_suite(ev, root, inputs)
    check, kind = _format_check(ev, root)
    _json_references(ev, test_path, test, bias)
    endpoints: dict[str, object] = {}
    local_refs: dict[str, Path] = {}
    if ev.compare is not None and ev.compare.models:
        from controller.evaluate.reference import endpoint_from_spec, local_path

        for ref in ev.compare.models:
            if ref.endpoint is not None:
                endpoints[ref.name] = endpoint_from_spec(ref, dict(env) if env is not None else None)
            else:
                local_refs[ref.name] = local_path(ref, root)
    served = setup(spec, serving)

    # ---- the suites, in the order that loads each model once
    fields = tuple(ev.task.fields)
    planned: list[Planned] = [(TaskSuite(ev.task.metric, fields, ev.task.min, str(test_path)), test)]
    if check is not None and ev.format is not None:
        planned.append((FormatSuite(check, kind, ev.format.min), test))
    if served is not None and served.index is not None:
        rag = ev.rag
        planned.append((RagSuite(tuple(rag.facts) if rag else ("answer",), served.top_k), test))
    if ev.bias is not None:
        planned.append((BiasSuite(ev.bias.path, ev.bias.group_field, ev.bias.max_gap, ev.task.metric, fields), bias))
    if train_texts is not None:
        planned.append((ContaminationSuite(tuple(train_texts), {"bias": bias, "regression": suite}), test))
    if ev.regression is not None:
        planned.append((RegressionSuite(ev.regression.suite, ev.regression.max_drop), suite))
    compare_n = min(ev.compare.samples, len(test)) if ev.compare is not None else 0
    if ev.compare is not None and compare_n:
        planned.append((CompareSuite(ev.task.metric, fields, tuple(ev.compare.must_beat), ev.compare.samples,
                                     (*endpoints, *local_refs), check), test[:compare_n]))

    from controller.evaluate.hosted import hosted_models
    from controller.evaluate.suite import BASE, FINE_TUNED

    hosted = hosted_models(manifest, FINE_TUNED, BASE, env)  # a managed fine-tune: it and its base answer at the provider
    models = {**endpoints, **hosted.endpoints} if hosted is not None else endpoints
    pool = ModelPool(run_dir, device, local_refs, models, batch_size, seed, progress)
    tokenizer = hosted.tokenizer if hosted is not None else load_run_tokenizer(run_dir)
    context = hosted.context if hosted is not None else context_length(run_dir)
    answers = Answers(pool, served, tokenizer, context, max_new_tokens)
    try:
        sections = run_suites(planned, answers)
    finally:
        pool.close()

    metrics: dict[str, float] = {}
    for section in sections.values():
        metrics.update(section.metrics)
    data: JsonObject = {
        "apiVersion": "ftops.dev/v1alpha1",
        "kind": "EvalReport",
        "schemaVersion": 1,
        "runId": run_id,
        "specName": prov.get("specName"),
        "status": "completed",
        "error": None,
        "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "baseModel": prov.get("baseModel"),
        "method": (prov.get("method") or {}).get("type"),
        "servingConfig": served.record() if served is not None else None,
        "generation": {"greedy": True, "seed": seed, "batchSize": batch_size, "served": served is not None,
                       "maxNewTokens": answers.budget(test, served=True),
                       "regressionMaxNewTokens": answers.budget(suite, served=False) if suite else None,
                       "chatTemplateSha256": prov.get("chatTemplateSha256")},
        "inputs": inputs,
        "metrics": dict(metrics),
    }
    for name in ("task", "format", "rag", "regression", "compare", "bias", "contamination"):
        found = sections.get(name)
        data[name] = found.data if found is not None else None
    report = Report(data)
    if write:
        report.write(run_dir, output_dir)
    return report


def run_suites(planned: Sequence[Planned], generate: Generate) -> dict[str, Section]:
    """Each suite on its examples; their sections by name."""
    sections: dict[str, Section] = {}
    for suite, examples in planned:
        section = suite.run(examples, generate)
        sections[section.name] = section
    return sections


def _bias_set(ev: EvaluationSpec, root: Path | None, inputs: JsonObject) -> list[EvalExample]:
    if ev.bias is None:
        return []
    bias_file = resolve_repo_path(ev.bias.path, root, "evaluation.bias.path")
    examples = read_examples(bias_file, "evaluation.bias.path")
    missing = [e.line for e in examples if not isinstance(e.meta.get(ev.bias.group_field), str)]
    if missing:
        raise PermanentError(
            f"{bias_file}:{missing[0]}: example has no string field \"{ev.bias.group_field}\" "
            f"(evaluation.bias.groupField); {len(missing)} example(s) lack it"
        )
    inputs["bias"] = {"path": ev.bias.path, "sha256": sha256_file(bias_file), "examples": len(examples)}
    return examples


def _regression_suite(ev: EvaluationSpec, root: Path | None, inputs: JsonObject) -> list[EvalExample]:
    if ev.regression is None:
        return []
    suite_file = suite_path(ev.regression.suite, root)
    suite = read_examples(suite_file, "evaluation.regression.suite", answer_key="answer")
    shown = str(suite_file) if ev.regression.suite != DEFAULT_SUITE else "controller/defaults/regression.jsonl"
    inputs["regression"] = {"suite": ev.regression.suite, "path": shown, "sha256": sha256_file(suite_file),
                            "examples": len(suite)}
    return suite


def _format_check(ev: EvaluationSpec, root: Path | None) -> tuple[M.Checker | None, str]:
    if ev.format is None:
        return None, ""
    schema = ev.format.json_schema
    if ev.format.schema_path is not None:
        schema_file = resolve_repo_path(ev.format.schema_path, root, "evaluation.format.schemaPath")
        try:
            schema = json.loads(schema_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PermanentError(f"{schema_file}:{exc.lineno}: the JSON Schema is not valid JSON ({exc.msg})") from None
    try:
        check = M.format_checker(json_schema=schema, regex=ev.format.regex)
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    kind = "jsonSchema" if ev.format.json_schema is not None else "schemaPath" if ev.format.schema_path else "regex"
    return check, kind


def _json_references(ev: EvaluationSpec, test_path: Path, test: Sequence[EvalExample], bias: Sequence[EvalExample]) -> None:
    if ev.task.metric != "json_field_match":
        return
    for where, examples in ((str(test_path), test), ("bias set", bias)):
        bad = next((e for e in examples if M.parse_json_object(e.reference) is None), None)
        if bad is not None:
            raise PermanentError(
                f"evaluation.task.metric json_field_match: the reference answer at line {bad.line} ({where}) is not "
                "a JSON object; use exact_match, token_f1 or rouge_l for text answers"
            )


def crashed_report(run_id: str | None, error: str, spec_name: str | None = None) -> Report:
    """A report for an evaluation that failed: the gate reads it and fails with the error."""
    return Report({
        "apiVersion": "ftops.dev/v1alpha1", "kind": "EvalReport", "schemaVersion": 1, "runId": run_id,
        "specName": spec_name, "status": "crashed", "error": error,
        "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"), "metrics": {},
    })
