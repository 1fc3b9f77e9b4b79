"""`ftops data check | prepare | review-sample | review-status | version | pull`.

Every command works from a spec (`SPEC` = a FineTune YAML file) or from explicit flags, so it
can be run by hand on any file; flags override the spec. Only the standard library is imported
here: numpy, transformers and DVC load inside the command that needs them.

Exit codes: 0 ok; 1 errors in the data, not trainable, review not ready, or a failure; 2 usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from controller.output import MACHINE, add_output_flag, dump


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="Check, prepare, review and version training data.")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sub.required = True

    check = sub.add_parser("check", help="Check a chat JSONL file: errors by line, warnings, token statistics.",
                           description="Check OpenAI chat JSONL. Exits 1 when there are errors.")
    check.add_argument("file", help="The chat JSONL file to check (only read).")
    _spec_args(check)
    check.add_argument("--max-issues", type=int, default=50, help="Most issues to print per kind (default 50; JSON lists them all).")
    check.add_argument("--rev", help="Check gold sources against the spec's corpus at this git revision "
                                     "(default: the corpus folder in the working copy).")
    check.set_defaults(func=cmd_check)

    prep = sub.add_parser("prepare", help="Normalise, dedupe, split and write <workdir>/prepared/<spec>/<md5>/.",
                          description="Prepare a dataset for training. Exits 1 when the data has errors or is not trainable.")
    prep.add_argument("spec", nargs="?", help="FineTune spec file (optional when --data and --name are given).")
    prep.add_argument("--data", help="Dataset file (default: spec.dataset.path in the spec's repo).")
    prep.add_argument("--rev", help="Pull the dataset pinned by its .dvc file at this git revision instead of reading the working copy.")
    _param_args(prep)
    prep.set_defaults(func=cmd_prepare)

    sample = sub.add_parser("review-sample", help="Export the expert-review sample (JSONL + CSV).")
    sample.add_argument("spec", nargs="?", help="FineTune spec file.")
    sample.add_argument("--data", help="Dataset file (default: spec.dataset.path).")
    sample.add_argument("--out", help="Directory for review-sample.jsonl/.csv (default <workdir>/review/<spec>/<md5>/).")
    _param_args(sample)
    sample.set_defaults(func=cmd_review_sample)

    status = sub.add_parser("review-status", help="Show review coverage and approval. Exits 1 until the data is approved.")
    status.add_argument("spec", nargs="?", help="FineTune spec file.")
    status.add_argument("--data", help="Dataset file (default: spec.dataset.path).")
    _param_args(status)
    status.set_defaults(func=cmd_review_status)

    imp = sub.add_parser("review-import", help="Append the verdicts of a filled-in review-sample.csv to the reviews file.")
    imp.add_argument("csv", help="The review-sample.csv with the verdict (approve/reject), reviewer and note columns filled in.")
    imp.add_argument("spec", nargs="?", help="FineTune spec file (its review.file is the target).")
    imp.add_argument("--reviews", help="Reviews file to append to (default: the spec's review.file, else reviews/<name>.jsonl).")
    imp.add_argument("--name", help="Spec name when there is no spec.")
    imp.add_argument("--reviewer", help="Reviewer for rows whose reviewer column is empty.")
    imp.set_defaults(func=cmd_review_import)

    ver = sub.add_parser("version", help="dvc add + dvc push a dataset, verified, with counts in the .dvc meta.")
    ver.add_argument("target", help="A FineTune spec file (its dataset is versioned) or the dataset file itself.")
    ver.add_argument("--repo", help="Repository root (default: the git top level of the target).")
    ver.add_argument("--remote", help="Configure this remote (local directory, or s3://... with dvc-s3 installed) as the default.")
    ver.add_argument("--no-push", action="store_true", help="Only dvc add (the pointer must not be committed before a push).")
    add_output_flag(ver)
    ver.set_defaults(func=cmd_version)

    pl = sub.add_parser("pull", help="Pull a dataset as pinned at an exact git revision, verified, into a new file.")
    pl.add_argument("path", help="Dataset path inside the repo (its .dvc pointer is read at REV).")
    pl.add_argument("--rev", required=True, help="Git revision (commit, tag, branch).")
    pl.add_argument("--out", required=True, help="Destination file; never overwritten with different data.")
    pl.add_argument("--repo", default=".", help="Repository (default: current directory).")
    pl.set_defaults(func=cmd_pull)


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="FineTune spec whose maxSeqLength, epochs, testFraction and base model apply.")
    p.add_argument("--base-model", help="Local model directory whose tokenizer and chat template count tokens.")
    p.add_argument("--max-seq-length", type=int, help="Token limit (default: spec, else 2048).")
    p.add_argument("--epochs", type=float, help="Epochs for the training-token estimate (default: spec, else 3).")
    p.add_argument("--test-fraction", type=float, help="Held-out share for the training-token estimate (default: spec, else 0.15).")
    add_output_flag(p)


def _param_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="Spec name (directory under prepared/; default: metadata.name).")
    p.add_argument("--workdir", help="Working directory (default: $FTOPS_WORKDIR or <repo>/.ftops).")
    p.add_argument("--test-fraction", type=float, help="Held-out share, 0.15-0.20 (default: spec, else 0.15).")
    p.add_argument("--near-duplicate-threshold", type=float, help="Jaccard similarity for near-duplicates (default: spec, else 0.85).")
    p.add_argument("--min-examples", type=int, help="Fewest examples that may be trained on, >= 200 (default: spec, else 200).")
    p.add_argument("--complexity", choices=("simple", "moderate", "complex"), help="Task complexity (default: spec, else simple).")
    p.add_argument("--reviews", help="Reviews file (default: spec.dataset.review.file, else reviews/<spec>.jsonl).")
    p.add_argument("--base-model", help="Local model directory whose tokenizer and chat template count tokens.")
    add_output_flag(p)


# ---------------------------------------------------------------- spec -> parameters


def _repo_root(start: Path) -> Path:
    """The git top level holding `start` (where spec paths are relative to), else the current folder."""
    from controller.source import toplevel

    return toplevel(start) or Path.cwd()


def load_finetune(path: str):
    """Load and validate a spec file with the project's loader; errors name file, line and field."""
    from controller.errors import PermanentError
    from controller.spec.load import load_spec_text

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PermanentError(f"{path}: no such spec file") from None
    loaded = load_spec_text(text, str(path))
    errors = [i for i in loaded.issues if i.severity == "error"]
    if loaded.spec is None or errors:
        raise PermanentError(f"{path}: the spec is invalid; fix it first (`ftops validate {path}`):\n  " + "\n  ".join(i.format() for i in errors))
    return loaded.spec


def resolve(args: argparse.Namespace, spec_path: str | None):
    """(params, repo root, dataset file) from a spec and/or flags; flags win."""
    from controller.data.params import DataParams, from_finetune
    from controller.errors import PermanentError

    if spec_path:
        params = from_finetune(load_finetune(spec_path))
        root = _repo_root(Path(spec_path).resolve())
    else:
        if not getattr(args, "data", None) and not getattr(args, "file", None):
            raise PermanentError("give a SPEC file, or --data FILE (and --name NAME) to work without a spec")
        params = DataParams()
        root = _repo_root(Path(getattr(args, "data", None) or args.file).resolve())
    data = getattr(args, "data", None)
    changes: dict[str, Any] = {
        "spec_name": getattr(args, "name", None),
        "test_fraction": getattr(args, "test_fraction", None),
        "near_duplicate_threshold": getattr(args, "near_duplicate_threshold", None),
        "min_examples": getattr(args, "min_examples", None),
        "complexity": getattr(args, "complexity", None),
        "review_file": getattr(args, "reviews", None),
        "max_seq_length": getattr(args, "max_seq_length", None),
        "epochs": getattr(args, "epochs", None),
    }
    if data:
        changes["data_path"] = data
        if not spec_path and not getattr(args, "name", None):
            changes["spec_name"] = Path(data).stem
    params = params.with_(**changes)
    _check_ranges(params)
    source = Path(data) if data else root / params.data_path
    return params, root, source


def _check_ranges(params) -> None:
    from controller.errors import PermanentError

    if not 0.15 <= params.test_fraction <= 0.20:
        raise PermanentError(f"--test-fraction {params.test_fraction}: hold out 15-20% (0.15-0.20) as the seed requires")
    if not 0.5 <= params.near_duplicate_threshold <= 1.0:
        raise PermanentError(f"--near-duplicate-threshold {params.near_duplicate_threshold}: must be between 0.5 and 1.0")
    if params.min_examples < 200:
        raise PermanentError(f"--min-examples {params.min_examples}: never below 200 (the seed's minimum)")


def _workdir(args: argparse.Namespace, root: Path) -> Path:
    return Path(args.workdir or os.environ.get("FTOPS_WORKDIR") or root / ".ftops")


def _tokenizer(base_model: str | None, params, root: Path, required: bool):
    """(tokenizer, name, note): the explicit --base-model must load; the spec's is best effort."""
    from controller.data import tokens as tk

    return tk.tokenizer_for(params.base_model_uri, params.base_model_revision, root, explicit=base_model, required=required)


# ---------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from controller.data import tokens as tk
    from controller.data.check import ERROR_KINDS, Issue, scan_file
    from controller.data.progress import interactive

    params, root, _ = resolve(args, args.spec)
    scan = scan_file(args.file, progress=interactive())
    if args.spec:
        scan.issues.extend(_gold_source_issues(args, root))
    tok, tok_name, note = _tokenizer(args.base_model, params, root, required=False)
    counted = tk.count(scan.records, tok, tok_name, params.max_seq_length, progress=interactive())
    scan.issues.extend(counted.issues)
    if counted.estimated:
        scan.issues.append(Issue(0, "tokenizer_unavailable", "", note or "token counts are estimates", "warning"))
    scan.issues.sort(key=lambda i: (i.line, i.severity != "error"))
    stats = counted.stats()
    train_share = 1 - params.test_fraction
    report = {
        "file": str(args.file),
        "md5": scan.md5,
        "lines": scan.lines,
        "examples": scan.examples,
        "valid": len(scan.records),
        "errors": len(scan.errors),
        "warnings": len(scan.warnings),
        "counts": scan.counts(),
        "tokens": stats.to_dict(),
        "trainingTokens": tk.training_tokens(stats.total, train_share, params.epochs),
        "trainingTokensFormula": f"total x (1 - testFraction {params.test_fraction}) x epochs {params.epochs:g}",
        "maxSeqLength": params.max_seq_length,
        "issues": [i.to_dict() for i in scan.issues],
    }
    if args.output in MACHINE:  # -o json|yaml
        print(dump(report, args.output))
    else:
        shown: dict[str, int] = {}
        for issue in scan.issues:
            shown[issue.kind] = shown.get(issue.kind, 0) + 1
            if shown[issue.kind] <= args.max_issues:
                print(issue.format(str(args.file)))
        for kind, n in shown.items():
            if n > args.max_issues:
                print(f"  ... {n - args.max_issues} more {kind}")
        print(f"\n{args.file}: {scan.lines} lines, {len(scan.records)} valid examples, {len(scan.errors)} error(s), {len(scan.warnings)} warning(s)")
        counted = {k: v for k, v in scan.counts().items() if v}
        if counted:
            width = max(map(len, counted))
            for kind, n in counted.items():
                sev = "error" if kind in ERROR_KINDS else "warning"
                print(f"  {kind.ljust(width)}  {n:>7}  {sev}")
        s = stats
        print(f"tokens ({s.method}): min {s.min}, mean {s.mean:.1f}, p95 {s.p95}, max {s.max}, total {s.total}")
        print(f"estimated training tokens: {report['trainingTokens']} ({report['trainingTokensFormula']})")
    return 1 if scan.errors else 0


def _gold_source_issues(args: argparse.Namespace, root: Path) -> list:
    """The examples' gold sources (`sources`) against the documents of the spec's serving.corpus:
    at --rev (read from git), else in the working copy."""
    from controller.data.check import gold_source_issues, named_sources
    from controller.data.raft import corpus_at, corpus_documents

    serving = load_finetune(args.spec).spec.serving
    named = named_sources(args.file)
    if serving is None or not serving.corpus or not named:
        return []
    if args.rev:
        import tempfile

        from controller.source import GitSource

        with GitSource(root) as source:
            commit = source.resolve(args.rev)
        corpus, where = corpus_at(root, commit, serving.corpus, Path(tempfile.mkdtemp(prefix="ftops-check-")))[0], \
            f"{serving.corpus} at {commit[:12]}"
    else:
        corpus, where = root / serving.corpus, serving.corpus
    return gold_source_issues(named, corpus_documents(corpus), where)


# ---------------------------------------------------------------- prepare


def _source(args: argparse.Namespace, params, root: Path, workdir: Path) -> Path:
    if getattr(args, "rev", None):
        from controller.data.pipeline import source_at

        return source_at(root, args.rev, params, workdir)  # through its .dvc pointer, verified, or the git blob
    return Path(args.data) if args.data else root / params.data_path


def cmd_prepare(args: argparse.Namespace) -> int:
    from controller.data.prepare import prepare
    from controller.data.progress import interactive

    params, root, _ = resolve(args, args.spec)
    workdir = _workdir(args, root)
    source = _source(args, params, root, workdir)
    tok, tok_name, note = _tokenizer(args.base_model, params, root, required=False)
    result = prepare(source, workdir, params, tokenizer=tok, tokenizer_name=tok_name, progress=interactive())
    m = result.manifest
    if args.output in MACHINE:  # -o json|yaml
        print(dump({"dir": str(result.dir), **m}, args.output))
    else:
        c = m["counts"]
        print(f"{source}: {c['examples']} examples, {c['exactDuplicates']} exact and {c['nearDuplicates']} near duplicate(s) dropped "
              f"({len(m['clusters'])} cluster(s)), {c['kept']} kept")
        print(f"split (seed {m['seed'][:12]}): train {c['train']}, test {c['test']} ({c['testFraction']:.1%}); leak check "
              f"{'passed' if m['leakCheck']['passed'] else 'FAILED'}")
        print(f"tokens ({m['tokens']['method']}): total {m['tokens']['total']}, training tokens x epochs {m['trainingTokens']}")
        if note:
            print(f"note: {note}")
        for w in m["readiness"]["warnings"]:
            print(f"warning: {w}")
        print(f"wrote {result.dir}/ (train.jsonl, test.jsonl, manifest.json)")
        if not result.trainable:
            print(f"not trainable [{m['readiness']['reason']}]: {m['readiness']['message']}", file=sys.stderr)
    return 0 if result.trainable else 1


# ---------------------------------------------------------------- review


def _kept_examples(args: argparse.Namespace):
    """Prepare (idempotent: unchanged files are not rewritten) and return what reviews are about:
    the kept examples, as (line, hash, example)."""
    from controller.data.check import scan_file
    from controller.data.prepare import prepare

    params, root, _ = resolve(args, args.spec)
    workdir = _workdir(args, root)
    source = Path(args.data) if args.data else root / params.data_path
    scan = scan_file(source)
    result = prepare(source, workdir, params, scan=scan)
    dropped = {d["line"] for d in result.manifest["dropped"]}
    kept = [(r.line, r.hash, r.example) for r in scan.records if r.line not in dropped]
    return params, root, workdir, result, kept


def _reviews_path(params, root: Path) -> Path:
    p = Path(params.reviews_path)
    return p if p.is_absolute() else root / p


def cmd_review_sample(args: argparse.Namespace) -> int:
    from controller.data.review import export_sample, load_reviews

    params, root, workdir, result, kept = _kept_examples(args)
    reviews = load_reviews(_reviews_path(params, root), params.reviews_path)
    out = Path(args.out) if args.out else workdir / "review" / params.spec_name / result.manifest["source"]["md5"]
    jpath, cpath, todo = export_sample(kept, params.review_sample_fraction, out, reviews)
    if args.output in MACHINE:  # -o json|yaml
        print(dump({"jsonl": str(jpath), "csv": str(cpath), "needVerdict": todo}, args.output))
    else:
        print(f"review sample ({params.review_sample_fraction:.0%} of {len(kept)} examples): {jpath} and {cpath}")
        print(f"{todo} example(s) still need a verdict. Add one line per verdict to {params.reviews_path}:")
        print('  {"example": "<example hash>", "verdict": "approve"|"reject", "reviewer": "<you>", "note": "..."}')
    return 0


def cmd_review_status(args: argparse.Namespace) -> int:
    from controller.data.review import load_reviews, review_status

    params, root, _, _, kept = _kept_examples(args)
    reviews = load_reviews(_reviews_path(params, root), params.reviews_path)
    status = review_status([h for _, h, _ in kept], reviews, params.review_sample_fraction, params.review_min_approval)
    if args.output in MACHINE:  # -o json|yaml
        print(dump({"reviews": params.reviews_path, **status.to_dict()}, args.output))
    else:
        print(f"{params.spec_name}: {'ready' if status.ready else 'not ready'} [{status.reason}]: {status.message}")
        lines = {h: line for line, h, _ in kept}
        for h in status.rejected[:20]:
            print(f"  rejected: line {lines[h]} ({h[:12]})")
        if status.stale:
            print(f"  {status.stale} verdict(s) are for examples no longer in the data (earlier versions); they are ignored")
        if status.outside_sample:
            print(f"  {status.outside_sample} verdict(s) are for examples outside the sample; they do not count")
    return 0 if status.ready else 1


def cmd_review_import(args: argparse.Namespace) -> int:
    from controller.data.params import DataParams, from_finetune
    from controller.data.review import import_filled_sample, load_reviews
    from controller.errors import PermanentError

    if args.spec:
        params = from_finetune(load_finetune(args.spec))
        root = _repo_root(Path(args.spec).resolve())
    else:
        if not (args.reviews or args.name):
            raise PermanentError("give a SPEC, or --reviews FILE (or --name NAME for reviews/<name>.jsonl)")
        params = DataParams(spec_name=args.name or "dataset")
        root = Path.cwd()
    params = params.with_(review_file=args.reviews)
    target = _reviews_path(params, root)
    lines = import_filled_sample(args.csv, args.reviewer)
    load_reviews(target, params.reviews_path)  # refuse to append to a file that is already broken
    target.parent.mkdir(parents=True, exist_ok=True)
    existing = target.read_bytes() if target.exists() else b""
    with open(target, "ab") as fh:
        if existing and not existing.endswith(b"\n"):
            fh.write(b"\n")
        for line in lines:
            fh.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"appended {len(lines)} verdict(s) to {target}; commit it through a pull request")
    return 0


# ---------------------------------------------------------------- version / pull


def version_meta(path: Path, params=None, root: Path | None = None) -> dict[str, Any]:
    """What `ftops plan` reads from `meta.ftops` in the .dvc file without pulling data: examples
    (non-blank lines), valid and errors (lines with and without errors), tokens and how they were
    counted, and, when the file has no errors, what `prepare` would do with the spec's settings:
    exactDuplicates, nearDuplicates, kept, train, test and trainable. The DVC adapter adds md5
    and bytes."""
    from controller.data import tokens as tk
    from controller.data.check import scan_file
    from controller.data.params import DataParams
    from controller.data.prepare import analyse

    scan = scan_file(path)
    tok, name = None, None
    if params is not None and root is not None:
        tok, name, _ = _tokenizer(None, params, root, required=False)
    counted = tk.count(scan.records, tok, name)
    meta: dict[str, Any] = {"examples": scan.examples, "valid": len(scan.records), "errors": len(scan.errors),
                            "tokens": counted.total, "tokensMethod": "estimate:chars/4" if counted.estimated else f"tokenizer:{name}"}
    if not scan.errors and scan.records:
        manifest, _ = analyse(scan, params or DataParams())
        c = manifest["counts"]
        meta.update({"exactDuplicates": c["exactDuplicates"], "nearDuplicates": c["nearDuplicates"], "kept": c["kept"],
                     "train": c["train"], "test": c["test"], "trainable": manifest["readiness"]["trainable"]})
    return meta


def cmd_version(args: argparse.Namespace) -> int:
    from controller.data import dvc

    target = Path(args.target)
    params = None
    if target.suffix in (".yaml", ".yml"):
        from controller.data.params import from_finetune

        params = from_finetune(load_finetune(str(target)))
        root = Path(args.repo).resolve() if args.repo else _repo_root(target.resolve())
        rel = params.data_path
    else:
        absolute = target.resolve()
        root = Path(args.repo).resolve() if args.repo else _repo_root(absolute)
        rel = str(absolute)  # the adapter makes it repo-relative (and refuses paths outside the repo)
    meta = version_meta(root / rel, params, root)
    result = dvc.version(root, rel, remote_url=args.remote, meta=meta, push=not args.no_push)
    if args.output in MACHINE:  # -o json|yaml
        print(dump({"path": result.path, "dvcFile": str(result.dvc_file), "md5": result.md5, "size": result.size,
                          "remote": result.remote, "pushed": result.pushed, "meta": result.meta}, args.output))
    else:
        print(f"{result.path}: md5 {result.md5}, {result.size} bytes, {meta['examples']} examples -> {result.dvc_file.name}"
              + (f", pushed to '{result.remote}'" if result.pushed else " (not pushed: do not commit the pointer yet)"))
        if meta["errors"]:
            print(f"warning: {meta['errors']} line(s) have errors; `ftops data check {result.path}` lists them", file=sys.stderr)
        print(f"commit it: git add {result.dvc_file.relative_to(root)} && git commit")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from controller.data import dvc

    result = dvc.pull(args.repo, args.rev, args.path, args.out)
    print(f"{result.path}: md5 {result.md5} ({result.size} bytes) at {result.rev[:12]}" + (" (already there)" if result.reused else ""))
    return 0
