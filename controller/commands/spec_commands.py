"""`ftops validate` and `ftops schema`: what a platform team runs on a spec before a pull request
(`ftops plan` lives in plan_commands)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from controller.exitcodes import FAILURE, OK, USAGE


def register(sub: argparse._SubParsersAction) -> None:
    validate = sub.add_parser(
        "validate",
        help="validate FineTune specs (a file, a folder, or the specs at a git revision)",
        description="Exit codes: 0 valid, 1 invalid, 2 usage error.",
    )
    validate.add_argument("path", nargs="?", help="a spec file, a specs/ folder or a repo root (default: .)")
    validate.add_argument("--rev", help="validate the specs committed at this git revision instead of files on disk")
    validate.add_argument("--repo", default=".", help="the GitOps repository (path or URL) for --rev (default: .)")
    validate.add_argument("--output", "-o", choices=("text", "json"), default="text")
    validate.add_argument("--operator-config", help="operator config overriding the shipped GPU catalog and prices")
    # These two run in CI: a repository, revision or operator config that cannot be read (any
    # FtopsError, which cli.main prints) exits USAGE, so "the specs are invalid" (1) is its own answer.
    validate.set_defaults(func=cmd_validate, error_exit=USAGE)

    schema = sub.add_parser("schema", help="print the FineTune JSON Schema (or the markdown field reference)")
    schema.add_argument("--markdown", action="store_true", help="print the field reference (docs/spec.md) instead")
    schema.set_defaults(func=cmd_schema)


# ----------------------------------------------------------------------------- validate


def _find_repo_root(path: Path) -> Path:
    """The git top level containing `path`, else the folder holding specs/, else `path`."""
    from controller.source import toplevel

    start = path if path.is_dir() else path.parent
    top = toplevel(start)
    if top is not None:
        return top
    for candidate in (start, *start.parents):
        if (candidate / "specs").is_dir():
            return candidate
    return start


def _spec_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    folder = path / "specs" if (path / "specs").is_dir() else path
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def validate_paths(path: Path, gpu_types: list[str]) -> list:
    """Validate spec files on disk. Returns LoadedSpec for every file (none stops the others)."""
    from controller.source import WorkingTreeView
    from controller.spec.load import load_spec_text

    root = _find_repo_root(path.resolve())
    view = WorkingTreeView(root)
    results = []
    for file in _spec_files(path):
        try:
            rel = str(file.resolve().relative_to(root))
        except ValueError:
            rel = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            from controller.spec.load import LoadedSpec, SpecIssue

            results.append(LoadedSpec(rel, None, (SpecIssue(rel, 1, "", f"not UTF-8 text ({exc.reason}): save the file as UTF-8"),)))
            continue
        results.append(load_spec_text(text, rel, view, gpu_types))
    return results


def cmd_validate(args: argparse.Namespace) -> int:
    from controller.catalog import load_operator_config

    operator = load_operator_config(args.operator_config)
    gpu_types = sorted(operator.gpus)
    if args.rev:
        if args.path:
            print("error: give either PATH or --rev, not both", file=sys.stderr)
            return USAGE
        from controller.source import GitSource, load_specs_at

        source = GitSource(args.repo)
        source.refresh()
        sha = source.resolve(args.rev)
        results = [s.loaded for s in load_specs_at(source, sha, gpu_types=gpu_types).values()]
    else:
        path = Path(args.path or ".")
        if not path.exists():
            print(f"error: {path} does not exist", file=sys.stderr)
            return USAGE
        results = validate_paths(path, gpu_types)
    issues = [issue for result in results for issue in result.issues]
    if args.output == "json":
        print(json.dumps([i.to_dict() for i in issues], indent=2))
    else:
        for issue in issues:
            print(issue.format())
        errors = sum(1 for i in issues if i.severity == "error")
        warnings = len(issues) - errors
        bad = sum(1 for r in results if not r.ok)
        print(f"{len(results)} spec(s): {len(results) - bad} valid, {bad} invalid; {errors} error(s), {warnings} warning(s)")
    return OK if all(r.ok for r in results) else FAILURE


# ----------------------------------------------------------------------------- schema


def cmd_schema(args: argparse.Namespace) -> int:
    from controller.spec.reference import json_schema, markdown_reference

    sys.stdout.write(markdown_reference() if args.markdown else json_schema())
    return OK
