"""`ftops plan`: what merging a pull request will make the controller do, as a comment."""
from __future__ import annotations

import argparse

from controller.errors import FtopsError
from controller.exitcodes import FAILURE, OK, USAGE


def register(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan",
        help="what merging HEAD into BASE will make the controller do, as a pull-request comment",
        description="Exit codes: 0 head is valid, 1 head has invalid specs or advisor errors, 2 usage error.",
    )
    plan.add_argument("--base", help="base revision, e.g. origin/main (omit to plan HEAD against an empty repo)")
    plan.add_argument("--head", default="HEAD", help="head revision (default: HEAD)")
    plan.add_argument("--repo", default=".", help="the GitOps repository, path or URL (default: .)")
    plan.add_argument("--output", "-o", choices=("markdown", "json"), default="markdown")
    plan.add_argument("--operator-config", help="operator config overriding the shipped GPU catalog and prices")
    plan.add_argument("--no-data", action="store_true", help="skip pulling and checking changed datasets")
    plan.add_argument("--no-manifests", action="store_true", help="skip the rendered Kubernetes manifest diff")
    plan.add_argument("--workdir", help="scratch folder for pulled and prepared data (default: a temporary folder)")
    plan.set_defaults(func=cmd_plan, error_exit=USAGE)


# ----------------------------------------------------------------------------- plan


def cmd_plan(args: argparse.Namespace) -> int:
    from controller.catalog import load_operator_config
    from controller.plan import plan_change, to_json, to_markdown
    from controller.render import template_version
    from controller.source import GitSource, SpecCache, corpus_version, load_specs_at

    operator = load_operator_config(args.operator_config)
    source = GitSource(args.repo)
    source.refresh()
    head = source.resolve(args.head)
    base = source.resolve(args.base) if args.base else None
    cache = SpecCache()
    gpu_types = sorted(operator.gpus)
    head_specs = load_specs_at(source, head, cache, gpu_types)
    base_specs = load_specs_at(source, base, cache, gpu_types) if base else {}
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
        if spec_plan.change not in ("added", "changed"):
            continue
        b, h = base_specs.get(spec_plan.file), head_specs[spec_plan.file]
        if not args.no_manifests:
            spec_plan.sections["Kubernetes manifests"] = _manifest_diff(b, h, base, head, operator)
        data_changed = b is None or b.data != h.data or b.loaded.spec is None
        if not args.no_data and data_changed:
            spec_plan.sections["Data"] = _data_section(source.repo, head, h, args.workdir)
    print(to_json(plan) if args.output == "json" else to_markdown(plan), end="" if args.output == "markdown" else "\n")
    return FAILURE if plan.has_errors else OK


def _manifest_diff(base_state, head_state, base_sha, head_sha, operator) -> str:
    """Unified diff of the rendered training manifests (what `kubectl apply` would change)."""
    from controller.render import input_for, render_for_plan

    def inp(state, sha):
        if state is None or state.loaded.spec is None or state.data is None or not state.data.known:
            return None
        return input_for(state.loaded.spec, state.data.md5, sha, operator)

    try:
        diff = render_for_plan(inp(base_state, base_sha), inp(head_state, head_sha))
    except FtopsError as exc:
        return f"❌ head does not render: {exc}"
    return f"```diff\n{diff}```" if diff else "no manifest changes"


def _data_section(repo, head_sha: str, head_state, workdir: str | None) -> str:
    """Pull and prepare the changed dataset at head: counts, errors, duplicates, split, review."""
    import tempfile

    from controller.data.pipeline import prepare_spec

    spec = head_state.loaded.spec
    with tempfile.TemporaryDirectory(prefix="ftops-plan-") as tmp:
        try:
            prepared, review, ready = prepare_spec(repo, head_sha, spec, workdir or tmp)
        except FtopsError as exc:
            return f"❌ data could not be prepared at head: {exc}"
        m = prepared.manifest
    counts = m.get("counts", {})
    lines = [
        f"- examples: {counts.get('examples', '?')} read, {counts.get('kept', '?')} kept "
        f"({counts.get('exactDuplicates', 0)} exact and {counts.get('nearDuplicates', 0)} near duplicates dropped)",
        f"- split: {counts.get('train', '?')} train / {counts.get('test', '?')} test "
        f"(test fraction {spec.spec.dataset.test_fraction:.2f}); leak check "
        f"{'passed' if m.get('leakCheck', {}).get('passed') else 'FAILED'}",
        f"- review: {review.reviewed} of the {review.sample} sampled examples have a verdict ({review.coverage:.1%} of the "
        f"data reviewed, {spec.spec.dataset.review.sample_fraction:.0%} required), {review.approval:.0%} approved",
        f"- DataReady: {'✅' if ready.status else '❌'} {ready.reason}: {ready.message}",
    ]
    return "\n".join(lines)
