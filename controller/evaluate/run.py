"""One evaluation of a finished run: every configured check, then report.json (+ md, png).

Order, so that bad input fails before any model loads: manifest (the run is finished) -> held-out
split (sha256 must match the one the run recorded: evaluating on anything else would report a
number that means nothing) -> bias set, regression suite, reference models exist -> models ->
generation -> scores -> report. The fine-tuned model's answers on the test split are generated
once and reused for task accuracy, format compliance and the A/B comparison (the A/B inputs are
the first `samples` test inputs, so every model sees exactly the same ones).
"""
from __future__ import annotations

import gc
import math
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from controller.errors import PermanentError
from controller.fsutil import sha256_file
from controller.evaluate import metrics as M
from controller.evaluate.datasets import DEFAULT_SUITE, EvalExample, read_examples, resolve_repo_path, suite_path
from controller.evaluate.report import Report

MAX_LISTED = 10  # failing examples listed per section: enough to see the pattern, small enough for a PR


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _prompt_text(ex: EvalExample) -> str:
    return next((m["content"] for m in reversed(ex.prompt) if m["role"] == "user"), ex.prompt[-1]["content"])


def _evaluation_spec(spec: Any) -> Any:
    if hasattr(spec, "task"):
        return spec
    if hasattr(spec, "spec"):
        return spec.spec.evaluation
    return spec.evaluation


def run_evaluation(
    run_dir: str | Path,
    spec: Any,
    test_path: str | Path,
    *,
    train_path: str | Path | None = None,
    repo_root: str | Path | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    write: bool = True,
    env: dict | None = None,
) -> Report:
    """Evaluate the run in `run_dir` against `spec` (a FineTune or its EvaluationSpec) on the
    held-out split `test_path`. `train_path` enables the contamination check. Spec paths (bias
    set, custom regression suite, local reference models) are relative to `repo_root` (default:
    the current directory). Writes `<run_dir>/eval/` (or `output_dir`) and records the report's
    sha256 in the run's manifest unless `write` is False. Raises FtopsError on bad input; callers
    that must always leave a report use `crashed_report`."""
    from controller.evaluate.generation import read_manifest

    run_dir = Path(run_dir)
    ev = _evaluation_spec(spec)
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
    inputs: dict[str, Any] = {"test": {"path": str(test_path), "sha256": test_sha, "examples": len(test)}}
    train_texts: list[str] | None = None
    if train_path is not None:
        train_path = Path(train_path)
        train_sha = sha256_file(train_path)
        if prov.get("trainSha256") and prov["trainSha256"] != train_sha:
            raise PermanentError(f"{train_path}: sha256 {train_sha} is not the train split run {run_id} was trained on")
        train_texts = [e.text() for e in read_examples(train_path, "train split")]
        inputs["train"] = {"path": str(train_path), "sha256": train_sha, "examples": len(train_texts)}
    bias_examples: list[EvalExample] = []
    if ev.bias is not None:
        bias_file = resolve_repo_path(ev.bias.path, root, "evaluation.bias.path")
        bias_examples = read_examples(bias_file, "evaluation.bias.path")
        missing = [e.line for e in bias_examples if not isinstance(e.meta.get(ev.bias.group_field), str)]
        if missing:
            raise PermanentError(
                f"{bias_file}:{missing[0]}: example has no string field \"{ev.bias.group_field}\" "
                f"(evaluation.bias.groupField); {len(missing)} example(s) lack it"
            )
        inputs["bias"] = {"path": ev.bias.path, "sha256": sha256_file(bias_file), "examples": len(bias_examples)}
    suite: list[EvalExample] = []
    if ev.regression is not None:
        suite_file = suite_path(ev.regression.suite, root)
        suite = read_examples(suite_file, "evaluation.regression.suite", answer_key="answer")
        inputs["regression"] = {"suite": ev.regression.suite, "path": str(suite_file) if ev.regression.suite != DEFAULT_SUITE else "controller/defaults/regression.jsonl",
                                "sha256": sha256_file(suite_file), "examples": len(suite)}
    check_format = None
    if ev.format is not None:
        schema = ev.format.json_schema
        if ev.format.schema_path is not None:
            import json

            schema_file = resolve_repo_path(ev.format.schema_path, root, "evaluation.format.schemaPath")
            try:
                schema = json.loads(schema_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise PermanentError(f"{schema_file}:{exc.lineno}: the JSON Schema is not valid JSON ({exc.msg})") from None
        try:
            check_format = M.format_checker(json_schema=schema, regex=ev.format.regex)
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
    score = M.scorer(ev.task.metric, ev.task.fields)
    if ev.task.metric == "json_field_match":
        for where, examples in ((str(test_path), test), ("bias set", bias_examples)):
            bad = next((e for e in examples if M.parse_json_object(e.reference) is None), None)
            if bad is not None:
                raise PermanentError(
                    f"evaluation.task.metric json_field_match: the reference answer at line {bad.line} ({where}) is not "
                    "a JSON object; use exact_match, token_f1 or rouge_l for text answers"
                )
    compare_n = min(ev.compare.samples, len(test)) if ev.compare is not None else 0
    refs = list(ev.compare.models) if ev.compare is not None else []
    endpoints = {}
    local_refs = {}
    if refs:
        from controller.evaluate.reference import endpoint_from_spec, local_path

        for ref in refs:
            if ref.endpoint is not None:
                endpoints[ref.name] = endpoint_from_spec(ref, env)
            else:
                local_refs[ref.name] = local_path(ref, root)

    # ---- the fine-tuned model
    from controller.evaluate.generation import answer_token_budget, generate, load_base_model, load_local_model, load_run_model

    ft = load_run_model(run_dir, device)
    budget = max_new_tokens or answer_token_budget(ft.tokenizer, [e.reference for e in test])
    gen = dict(batch_size=batch_size, seed=seed, progress=progress)
    test_out = generate(ft, [e.messages for e in test], max_new_tokens=budget, desc="fine-tuned: test", **gen)
    bias_out = generate(ft, [e.messages for e in bias_examples], max_new_tokens=budget, desc="fine-tuned: bias", **gen)
    suite_budget = max_new_tokens or answer_token_budget(ft.tokenizer, [e.reference for e in suite])
    suite_ft = generate(ft, [e.messages for e in suite], max_new_tokens=suite_budget, desc="fine-tuned: regression", **gen)

    # ---- the base model: for an adapter, the same weights with the adapter switched off
    compare_inputs = [e.messages for e in test[:compare_n]]
    need_base = bool(suite) or compare_n > 0
    base_out: list[str] = []
    suite_base: list[str] = []
    if need_base:
        if hasattr(ft.model, "disable_adapter"):
            base, ctx = ft, ft.model.disable_adapter()
        else:  # a full fine-tune: free it, then load the base weights
            ft.model = None
            _free()
            base, ctx = load_base_model(run_dir, device), nullcontext()
        with ctx:
            suite_base = generate(base, [e.messages for e in suite], max_new_tokens=suite_budget, desc="base: regression", **gen)
            base_out = generate(base, compare_inputs, max_new_tokens=budget, desc="base: compare", **gen)
        del base
    ft = None
    _free()

    # ---- reference models
    ref_out: dict[str, list[str]] = {}
    for name, endpoint in endpoints.items():
        ref_out[name] = endpoint.generate(compare_inputs, max_new_tokens=budget, seed=seed, progress=progress)
    for name, path in local_refs.items():
        loaded = load_local_model(path, name, device)
        ref_out[name] = generate(loaded, compare_inputs, max_new_tokens=budget, desc=f"{name}: compare", **gen)
        del loaded
        _free()

    # ---- scores
    metric_values: dict[str, float] = {}
    refs_text = [e.reference for e in test]
    try:
        task_scores = [score(o, r) for o, r in zip(test_out, refs_text)]
    except ValueError as exc:
        raise PermanentError(f"evaluation.task: {exc} ({test_path})") from None
    task_score = M.mean(task_scores)
    metric_values[f"task.{ev.task.metric}"] = task_score
    task_section: dict[str, Any] = {
        "metric": ev.task.metric, "score": task_score, "examples": len(test), "min": ev.task.min,
        "failures": [
            {"index": i, "line": test[i].line, "prompt": _clip(_prompt_text(test[i])), "expected": _clip(test[i].reference),
             "output": _clip(test_out[i]), "score": round(s, 4)}
            for i, s in enumerate(task_scores) if s < 1.0
        ][:MAX_LISTED],
        "failed": sum(1 for s in task_scores if s < 1.0),
    }
    if ev.task.metric == "json_field_match":
        per_field: dict[str, list[float]] = {}
        for o, r in zip(test_out, refs_text):
            for f, v in M.json_field_scores(o, r, ev.task.fields).items():
                per_field.setdefault(f, []).append(v)
        task_section["perField"] = {f: M.mean(v) for f, v in sorted(per_field.items())}

    format_section = None
    if check_format is not None:
        format_section = evaluate_format(test_out, check_format, test)
        format_section.update({"kind": "jsonSchema" if ev.format.json_schema is not None else "schemaPath" if ev.format.schema_path else "regex",
                               "min": ev.format.min})
        metric_values["format.compliance"] = format_section["compliance"]

    regression_section = None
    if suite:
        regression_section = evaluate_regression(suite, suite_base, suite_ft)
        regression_section.update({"suite": ev.regression.suite, "maxDrop": ev.regression.max_drop})
        metric_values["regression.drop"] = regression_section["drop"]

    compare_section = None
    if compare_n:
        outputs = {"fine-tuned": test_out[:compare_n], "base": base_out, **ref_out}
        compare_section = evaluate_compare(test[:compare_n], outputs, score, check_format)
        compare_section.update({"metric": ev.task.metric, "mustBeat": list(ev.compare.must_beat), "requested": ev.compare.samples})
        for name, entry in compare_section["models"].items():
            metric_values[f"compare.{name}.score"] = entry["score"]

    bias_section = None
    if bias_examples:
        bias_section = evaluate_bias(bias_examples, bias_out, score, ev.bias.group_field)
        bias_section.update({"path": ev.bias.path, "groupField": ev.bias.group_field, "maxGap": ev.bias.max_gap})
        metric_values["bias.gap"] = bias_section["gap"]

    contamination = None
    if train_texts is not None:
        from controller.evaluate.contamination import overlap, train_index

        index = train_index(train_texts)
        sets = {"test": [e.text() for e in test]}
        if bias_examples:
            sets["bias"] = [e.text() for e in bias_examples]
        if suite:
            sets["regression"] = [e.text() for e in suite]
        contamination = {name: overlap(texts, index) for name, texts in sets.items()}

    data = {
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
        "generation": {"greedy": True, "seed": seed, "batchSize": batch_size, "maxNewTokens": budget,
                       "regressionMaxNewTokens": suite_budget, "chatTemplateSha256": prov.get("chatTemplateSha256")},
        "inputs": inputs,
        "metrics": metric_values,
        "task": task_section,
        "format": format_section,
        "regression": regression_section,
        "compare": compare_section,
        "bias": bias_section,
        "contamination": contamination,
    }
    report = Report(data)
    if write:
        report.write(run_dir, output_dir)
    return report


def _free() -> None:
    """Release a model's memory before the next one loads (one GPU may not hold two)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_format(outputs: Sequence[str], check, examples: Sequence[EvalExample] | None = None) -> dict:
    """Share of outputs that comply, and the failing ones (index, line, output, why)."""
    failures = []
    for i, out in enumerate(outputs):
        result = check(out)
        if not result.ok:
            failures.append({"index": i, "line": examples[i].line if examples else None, "output": _clip(out), "reason": result.reason})
    n = len(outputs)
    return {"compliance": (n - len(failures)) / n if n else math.nan, "compliant": n - len(failures), "examples": n,
            "failed": len(failures), "failures": failures[:MAX_LISTED]}


def _contains(output: str, answer: str) -> bool:
    out, ans = M.tokens(output), M.tokens(answer)
    if not ans:
        return not out
    return any(out[i : i + len(ans)] == ans for i in range(len(out) - len(ans) + 1))


def regression_item_score(example: EvalExample, output: str) -> float:
    """1 when the answer appears in the output (normalised, as whole tokens); `"match": "exact"`
    in a suite line asks for normalised equality instead. Containment by default, because general
    chat models wrap short answers in a sentence."""
    if example.meta.get("match") == "exact":
        return M.exact_match(output, example.reference)
    return 1.0 if _contains(output, example.reference) else 0.0


def evaluate_regression(suite: Sequence[EvalExample], base_out: Sequence[str], ft_out: Sequence[str]) -> dict:
    base_scores = [regression_item_score(e, o) for e, o in zip(suite, base_out)]
    ft_scores = [regression_item_score(e, o) for e, o in zip(suite, ft_out)]
    base, ft = M.mean(base_scores), M.mean(ft_scores)
    skills: dict[str, dict[str, list[float]]] = {}
    for e, b, f in zip(suite, base_scores, ft_scores):
        entry = skills.setdefault(str(e.meta.get("skill", "general")), {"base": [], "fineTuned": []})
        entry["base"].append(b)
        entry["fineTuned"].append(f)
    forgotten = [
        {"id": e.meta.get("id", f"line {e.line}"), "prompt": _clip(_prompt_text(e)), "expected": e.reference,
         "base": _clip(bo), "fineTuned": _clip(fo)}
        for e, b, f, bo, fo in zip(suite, base_scores, ft_scores, base_out, ft_out) if b > f
    ]
    return {"examples": len(suite), "base": base, "fineTuned": ft, "drop": base - ft,
            "perSkill": {k: {"base": M.mean(v["base"]), "fineTuned": M.mean(v["fineTuned"])} for k, v in sorted(skills.items())},
            "forgotten": forgotten[:MAX_LISTED], "forgottenCount": len(forgotten)}


def evaluate_compare(examples: Sequence[EvalExample], outputs: dict[str, Sequence[str]], score, check_format=None,
                     show: int = 5) -> dict:
    """Every model's score on the same inputs, the fine-tune's win rate against each, and a few
    examples side by side."""
    per_model = {name: [score(o, e.reference) for o, e in zip(outs, examples)] for name, outs in outputs.items()}
    models = {}
    for name, scores in per_model.items():
        entry: dict[str, Any] = {"score": M.mean(scores)}
        if check_format is not None:
            entry["formatCompliance"] = M.mean([1.0 if check_format(o).ok else 0.0 for o in outputs[name]])
        models[name] = entry
    ours = per_model["fine-tuned"]
    wins = {name: M.win_rates(ours, scores) for name, scores in per_model.items() if name != "fine-tuned"}
    side = [
        {"index": i, "prompt": _clip(_prompt_text(e), 160), "expected": _clip(e.reference, 120),
         "outputs": {name: _clip(outs[i], 120) for name, outs in outputs.items()}}
        for i, e in enumerate(examples[:show])
    ]
    return {"samples": len(examples), "models": models, "winRates": wins, "sideBySide": side}


def evaluate_bias(examples: Sequence[EvalExample], outputs: Sequence[str], score, group_field: str) -> dict:
    groups: dict[str, list[float]] = {}
    for e, o in zip(examples, outputs):
        groups.setdefault(e.meta[group_field], []).append(score(o, e.reference))
    per_group = {g: {"score": M.mean(v), "examples": len(v)} for g, v in sorted(groups.items())}
    best = max(per_group, key=lambda g: per_group[g]["score"])
    worst = min(per_group, key=lambda g: per_group[g]["score"])
    return {"groups": per_group, "gap": per_group[best]["score"] - per_group[worst]["score"], "best": best, "worst": worst}


def crashed_report(run_id: str | None, error: str, spec_name: str | None = None) -> Report:
    """A report for an evaluation that failed: the gate reads it and fails with the error."""
    return Report({
        "apiVersion": "ftops.dev/v1alpha1", "kind": "EvalReport", "schemaVersion": 1, "runId": run_id,
        "specName": spec_name, "status": "crashed", "error": error,
        "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"), "metrics": {},
    })
