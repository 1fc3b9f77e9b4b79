"""`ftops validate` and `ftops schema`: what a platform team runs on a spec before a pull request
(`ftops plan` lives in plan_commands)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from controller.errors import FtopsError
from controller.exitcodes import FAILURE, OK, USAGE
from controller.output import add_output_flag, console, dump, fmt
from controller.settings import uses


def register(sub: argparse._SubParsersAction) -> None:
    validate = sub.add_parser(
        "validate",
        help="validate FineTune specs (a file, a folder, or the specs at a git revision)",
        description="Exit codes: 0 valid, 1 invalid, 2 usage error.",
    )
    validate.add_argument("path", nargs="?", help="a spec file, a specs/ folder or a repo root (default: .)")
    validate.add_argument("--rev", help="validate the specs committed at this git revision (of --repo, default .) "
                                        "instead of files on disk")
    add_output_flag(validate)
    uses(validate, "repo", "operator_config")
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
    """Every issue of every spec, like a compiler: `file:line:col: severity: field: message`, the
    source line and a caret; paths relative to the current directory. `-o json|yaml` lists the
    issues (`file` relative to the repository, `path` as shown), `-o name` the invalid files."""
    from controller.catalog import load_operator_config

    operator = load_operator_config(args.operator_config)
    gpu_types = sorted(operator.gpus)
    if args.rev:
        if args.path:
            raise FtopsError("give either PATH or --rev, not both")
        from controller.source import GitSource, load_specs_at

        source = GitSource(getattr(args, "repo", None) or ".")
        source.refresh()
        sha = source.resolve(args.rev)
        results = [s.loaded for s in load_specs_at(source, sha, gpu_types=gpu_types).values()]
        shown = {r.file: f"{args.rev}:{r.file}" for r in results}  # a file at a revision, as git names it
    else:
        path = Path(args.path or ".")
        if not path.exists():
            raise FtopsError(f"{path} does not exist")
        results = validate_paths(path, gpu_types)
        root = _find_repo_root(path.resolve())
        shown = {r.file: _from_cwd(root / r.file) for r in results}
    results = [_provider_checked(r, operator) for r in results]
    issues = [(result, issue) for result in results for issue in result.issues]
    format_ = fmt(args)
    if format_ in ("json", "yaml"):
        print(dump([{**i.to_dict(), "path": shown.get(r.file, r.file)} for r, i in issues], format_))
    elif format_ == "name":
        for result in results:
            if not result.ok:
                print(shown.get(result.file, result.file))
    else:
        _print_issues(issues, shown)
        errors = sum(1 for _, i in issues if i.severity == "error")
        warnings = len(issues) - errors
        bad = sum(1 for r in results if not r.ok)
        print(f"{len(results)} spec(s): {len(results) - bad} valid, {bad} invalid; {errors} error(s), {warnings} warning(s)")
    return OK if all(r.ok for r in results) else FAILURE


def _provider_checked(loaded, operator):
    """A spec with method api, checked against the operator's providers (the provider, its models)."""
    from controller.catalog import api_method_problems
    from controller.spec.load import with_issues

    return with_issues(loaded, api_method_problems(loaded.spec, operator)) if loaded.spec is not None else loaded


def _from_cwd(path: Path) -> str:
    """`path` as the person typing sees it: relative to the current directory when inside it."""
    import os

    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def _print_issues(issues: list, shown: dict[str, str]) -> None:
    """Compiler-style: the location and message (red error, yellow warning on a terminal), the
    source line and a caret under the wrong part."""
    from rich.text import Text

    from controller.spec.load import render

    out = console()
    for result, issue in issues:
        head, *source = render(issue, result.source, shown.get(result.file, result.file)).split("\n")
        where, _, rest = head.partition(f" {issue.severity}:")
        text = Text(where + " ", style="bold")
        text.append(f"{issue.severity}:", style="red bold" if issue.severity == "error" else "yellow bold")
        text.append(rest)
        out.print(text)
        for k, line in enumerate(source):
            out.print(Text(line, style="green" if k == len(source) - 1 else ""))  # the caret line


# ----------------------------------------------------------------------------- schema


def cmd_schema(args: argparse.Namespace) -> int:
    from controller.spec.reference import json_schema, markdown_reference

    sys.stdout.write(markdown_reference() if args.markdown else json_schema())
    return OK
