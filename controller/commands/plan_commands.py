"""`ftops plan`: what merging a pull request will make the controller do, as a comment.

The plan itself is pure (controller.plan); this command gathers what it needs from the world:
the specs at both commits (through the spec cache, on disk so a fresh CI job over unchanged
specs is warm), the datasets at head (pulled through DVC exactly as the controller will pull
them, checked, prepared, their review read, their answers compared with base) and the rendered
manifests (controller.manifest_diff).

Exit codes, as Terraform users expect them with `--detailed-exitcode`: 0 nothing to do, 2 the
merge changes something, 1 errors (invalid specs, data errors at head, data that cannot be
pulled, advisor errors, budget breaches unless `--budget-breach warning`, and an unreadable
repository or revision). Without it: 0 no errors, 1 errors, 2 usage error.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from controller.errors import FtopsError
from controller.exitcodes import FAILURE, OK, USAGE
from controller.output import add_output_flag, dump, fmt
from controller.settings import uses

if TYPE_CHECKING:
    from controller.plan import DataCheck
    from controller.source import SpecAtRev

CHANGES = 2
"""`--detailed-exitcode`: the plan is valid and the merge changes something (Terraform's 2)."""


def register(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan",
        help="what merging HEAD into BASE will make the controller do, as a pull-request comment",
        description="Exit codes: 0 head is valid, 1 head has errors (invalid specs, data errors, data that cannot be "
                    "pulled, advisor errors, budget breaches), 2 usage error. With --detailed-exitcode: 0 no changes, "
                    "1 errors (usage errors included), 2 changes.",
    )
    plan.add_argument("--base", help="base revision, e.g. origin/main (omit to plan HEAD against an empty repo)")
    plan.add_argument("--head", default="HEAD", help="head revision (default: HEAD)")
    plan.add_argument("--no-data", action="store_true", help="skip pulling and checking the datasets of specs that train")
    plan.add_argument("--no-manifests", action="store_true", help="skip the rendered Kubernetes manifest diff")
    plan.add_argument("--workdir", help="scratch folder for pulled and prepared data (default: a temporary folder)")
    plan.add_argument("--detailed-exitcode", action="store_true",
                      help="exit 0 when the merge changes nothing, 2 when it changes something, 1 on errors (as terraform plan)")
    plan.add_argument("--budget-breach", choices=("error", "warning"), default="error",
                      help="whether an estimate over budget.maxUsd fails the plan (default: error)")
    plan.add_argument("--cache-dir", default=os.environ.get("FTOPS_CACHE_DIR"),
                      help="folder of the on-disk spec cache (default: $FTOPS_CACHE_DIR, else ~/.cache/ftops; 'none' to disable)")
    plan.add_argument("--github-comment", type=int, metavar="PR",
                      help="also post the plan on this pull request, or update the comment posted before (its first line "
                           "is the plan's marker); uses $GITHUB_TOKEN, $GITHUB_REPOSITORY and $GITHUB_API_URL as Actions sets them")
    plan.add_argument("--json-out", metavar="FILE", help="also write the plan as JSON to FILE (one run for the comment "
                                                         "and the machine-readable plan)")
    add_output_flag(plan)
    uses(plan, "repo", "operator_config")
    plan.set_defaults(func=cmd_plan, error_exit=USAGE)


def cmd_plan(args: argparse.Namespace) -> int:
    from controller.catalog import load_operator_config
    from controller.manifest_diff import for_spec
    from controller.plan import attach_data, plan_change, to_json, to_markdown
    from controller.render import template_version
    from controller.source import GitSource, SpecCache, corpus_version, default_cache_dir, load_specs_at

    if args.detailed_exitcode:
        args.error_exit = FAILURE  # 2 means "changes" now: an unreadable repository is an error like any other
    operator = load_operator_config(getattr(args, "operator_config", None))
    source = GitSource(getattr(args, "repo", None) or ".")
    source.refresh()
    head = source.resolve(args.head)
    base = source.resolve(args.base) if args.base else None
    cache_dir = None if args.cache_dir == "none" else Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    cache = SpecCache(cache_dir)
    gpu_types = sorted(operator.gpus)
    head_specs = load_specs_at(source, head, cache, gpu_types)
    base_specs = load_specs_at(source, base, cache, gpu_types) if base else {}
    cache.save()
    head_specs = {path: _provider_checked(state, operator) for path, state in head_specs.items()}
    corpora = {}
    for path in set(head_specs) | set(base_specs):
        versions = []
        for sha, specs in ((base, base_specs), (head, head_specs)):
            state = specs.get(path)
            serving = state.loaded.spec.spec.serving if state and state.loaded.spec else None
            versions.append(corpus_version(source, sha, serving.corpus) if sha and serving and serving.corpus else None)
        corpora[path] = (versions[0], versions[1])
    plan = plan_change(base_specs, head_specs, operator, template_version(), base, head, corpora)
    for spec_plan in plan.specs:
        spec_plan.budget_is_error = args.budget_breach == "error"
        if spec_plan.change not in ("added", "changed", "removed"):
            continue
        b, h = base_specs.get(spec_plan.file), head_specs.get(spec_plan.file)
        if not args.no_manifests:
            spec_plan.manifests = for_spec(b, h, base, head, operator, corpora.get(spec_plan.file, (None, None)))
        if h is None or h.loaded.spec is None or args.no_data:
            continue
        if spec_plan.decision == "Train":  # the merge pulls and prepares this data: so does the plan
            attach_data(spec_plan, check_data(source, base, head, b, h, args.workdir), h.loaded.spec, operator, h.data)
    format_ = fmt(args)
    if format_ == "json":
        print(to_json(plan))
    elif format_ == "yaml":
        print(dump(plan.to_dict(), "yaml"))
    elif format_ == "name":
        print("\n".join(f"finetune/{p.name}" for p in plan.changed()))
    else:  # table / wide: the pull-request comment (markdown)
        print(to_markdown(plan), end="")
    if args.json_out:
        Path(args.json_out).write_text(to_json(plan) + "\n", encoding="utf-8")
    if args.github_comment is not None:
        _comment(args.github_comment, to_markdown(plan))
    if plan.has_errors:
        return FAILURE
    return CHANGES if args.detailed_exitcode and plan.has_changes else OK


def _comment(number: int, body: str) -> None:
    """The sticky pull-request comment (controller.notify.github.upsert_comment)."""
    from controller.notify.github import API_URL, upsert_comment
    from controller.plan import MARKER

    token, repository = os.environ.get("GITHUB_TOKEN", ""), os.environ.get("GITHUB_REPOSITORY", "")
    if not token or not repository:
        raise FtopsError("--github-comment needs $GITHUB_TOKEN and $GITHUB_REPOSITORY (GitHub Actions sets the second; "
                         "pass the first from `secrets.GITHUB_TOKEN` with `pull-requests: write`)")
    done = upsert_comment(repository, token, number, body, MARKER, api_url=os.environ.get("GITHUB_API_URL", API_URL))
    print(f"{done} the plan comment on {repository}#{number}", file=sys.stderr)


# ----------------------------------------------------------------------------- data


def check_data(source, base_sha: str | None, head_sha: str, base: "SpecAtRev | None", head: "SpecAtRev",
               workdir: str | None) -> "DataCheck":
    """Pull, check and prepare the spec's dataset at head as the controller will on merge, with
    every location in the repository's own file; compare its answers with base's when the data
    version changed. A dataset that cannot be pulled is reported, not raised: the rest of the
    plan still shows."""
    import tempfile

    from controller.data import tokens as tk
    from controller.data.check import scan_file
    from controller.data.params import from_finetune
    from controller.data.pipeline import prepare_spec, source_at
    from controller.data.prepare import prepare
    from controller.plan import DataCheck, DataIssue

    spec = head.loaded.spec
    assert spec is not None and head.data is not None
    params = from_finetune(spec)
    rel = params.data_path
    changed = base is None or base.loaded.spec is None or base.data != head.data
    check = DataCheck(path=rel, md5=head.data.md5, changed=changed)
    with tempfile.TemporaryDirectory(prefix="ftops-plan-") as tmp:
        work = Path(workdir or tmp)
        try:
            pulled = source_at(source.repo, head_sha, params, work)
        except FtopsError as exc:
            check.unavailable = str(exc)
            check.unavailable_code = type(exc).__name__
            return check
        scan = scan_file(pulled)
        issues = sorted(scan.issues, key=lambda i: (i.severity != "error", i.line))
        check.issues = [DataIssue(rel, i.line, i.kind, i.field, i.message, i.severity) for i in issues[:200]]
        check.issues_total = len(scan.issues)
        check.counts = {kind: n for kind, n in scan.counts().items() if n}
        check.examples, check.valid, check.error_count = scan.examples, len(scan.records), len({i.line for i in scan.errors})
        tok, tok_name, _ = tk.tokenizer_for(spec.spec.base_model.uri, spec.spec.base_model.revision, source.repo)
        counted = tk.count(scan.records, tok, tok_name)
        check.tokens, check.tokens_method = counted.total, counted.method
        check.training_tokens = tk.training_tokens(counted.total, 1 - params.test_fraction, params.epochs)
        if scan.errors or not changed:
            return check
        try:
            prepare(pulled, work, params, tokenizer=tok, tokenizer_name=tok_name, scan=scan)
            prepared, review, ready = prepare_spec(source.repo, head_sha, spec, work, tokenizer=tok, tokenizer_name=tok_name)
        except FtopsError as exc:
            check.prepare_error = str(exc)
            return check
        counts = prepared.manifest["counts"]
        check.prepared = {**{k: counts[k] for k in ("kept", "exactDuplicates", "nearDuplicates", "train", "test")},
                          "leakCheck": bool(prepared.manifest.get("leakCheck", {}).get("passed"))}
        check.review = {"sample": review.sample, "reviewed": review.reviewed, "coverage": review.coverage,
                        "approval": review.approval, "required": params.review_sample_fraction}
        check.data_ready = ready.to_dict()
        if base is not None and base.loaded.spec is not None and base.data is not None and base.data.known \
                and base.data.md5 != head.data.md5 and base_sha is not None:
            _compare_with_base(check, source, base_sha, base, scan.records, work)
    return check


def _compare_with_base(check: "DataCheck", source, base_sha: str, base: "SpecAtRev", head_records, work: Path) -> None:
    """How the answers moved against base (controller.data.shift), as warnings."""
    from controller.data.check import scan_file
    from controller.data.params import from_finetune
    from controller.data.pipeline import source_at
    from controller.data.shift import answer_shift

    assert base.loaded.spec is not None
    try:
        previous = scan_file(source_at(source.repo, base_sha, from_finetune(base.loaded.spec), work / "base"))
    except FtopsError as exc:
        check.warnings.append(f"the base version could not be read to compare answers with: {exc}")
        return
    shift = answer_shift(previous.records, head_records)
    check.shift = shift.to_dict()
    check.warnings.extend(shift.warnings())


def _provider_checked(state, operator):
    """A spec with method api at head, checked against the operator's providers: an unknown
    provider or model is an error of the plan, named at its line, before anything merges."""
    from dataclasses import replace

    from controller.catalog import api_method_problems
    from controller.spec.load import with_issues

    if state.loaded.spec is None:
        return state
    return replace(state, loaded=with_issues(state.loaded, api_method_problems(state.loaded.spec, operator)))
