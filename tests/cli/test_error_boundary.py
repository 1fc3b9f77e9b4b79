"""`controller.cli.main` is the one place an FtopsError becomes `error: <message>` and an exit code.

Behavioural: real commands are run in-process with bad input, and a spy on `cli.report` proves
the error travelled up to the boundary instead of being printed and swallowed by the command.
Every registered subcommand is also run with its function replaced by one that raises, so a
new command gets the boundary without doing anything."""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from controller import cli, exitcodes
from controller.errors import FtopsError, PermanentError, TemporaryError

COMMANDS_DIR = Path(cli.__file__).parent / "commands"


@pytest.fixture
def boundary(monkeypatch):
    """The FtopsErrors that reached cli.report, in order."""
    seen: list[FtopsError] = []
    original = cli.report

    def spy(exc: FtopsError, code: int) -> int:
        seen.append(exc)
        return original(exc, code)

    monkeypatch.setattr(cli, "report", spy)
    return seen


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace", "some-spec", "--home", "{tmp}/home"], "no ledger at {tmp}/home/ledger.db"),
        (["audit", "verify", "--home", "{tmp}/home"], "no ledger at {tmp}/home/ledger.db"),
        (["audit", "export", "--home", "{tmp}/home"], "no ledger at {tmp}/home/ledger.db"),
        (["data", "check", "{tmp}/missing.jsonl"], "{tmp}/missing.jsonl: no such file"),
        (["data", "prepare", "--data", "{tmp}/missing.jsonl", "--workdir", "{tmp}/w"], "missing.jsonl: no such file"),
        (["data", "review-import", "{tmp}/filled.csv"], "give a SPEC, or --reviews FILE"),
        (["deploy", "{tmp}/missing.yaml", "--run", "{tmp}/run", "--store", "{tmp}/store"],
         "{tmp}/missing.yaml: cannot read the spec"),
        (["rollback", "triage", "--store", "{tmp}/store"], "spec 'triage' has no earlier run to return to"),
        (["serve", "--config", "{tmp}/serve.json"], "{tmp}/serve.json: serve config not found"),
        (["render", "{tmp}/missing.yaml"], "{tmp}/missing.yaml: no such file"),
        (["eval", "{tmp}/run", "--spec", "{tmp}/missing.yaml"], "{tmp}/missing.yaml: No such file"),
    ],
    ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None,
)
def test_bad_input_reaches_the_boundary_and_exits_1(argv, message, tmp_path, capsys, boundary):
    code, out, err = _run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == exitcodes.FAILURE, err
    assert len(boundary) == 1, f"the command printed the error itself instead of raising it: {err!r}"
    assert err == f"error: {boundary[0]}\n" and message.format(tmp=tmp_path) in err
    assert out == ""  # nothing half-done is printed as if it worked


def test_a_bad_revision_names_the_revision_and_exits_1(git_repo, tmp_path, capsys, boundary):
    git_repo.write("README.md", "x\n")
    git_repo.commit("first")
    code, _, err = _run(["data", "pull", "data/x.jsonl", "--rev", "no-such-rev", "--out", str(tmp_path / "x.jsonl"),
                         "--repo", str(git_repo.root)], capsys)
    assert code == exitcodes.FAILURE and len(boundary) == 1
    assert "'no-such-rev'" in err and err.startswith("error: ")
    assert not (tmp_path / "x.jsonl").exists()


def test_validate_and_plan_exit_usage_when_the_repository_cannot_be_read(git_repo, tmp_path, capsys, boundary):
    git_repo.write("README.md", "x\n")
    git_repo.commit("first")
    code, _, err = _run(["validate", "--rev", "no-such-rev", "--repo", str(git_repo.root)], capsys)
    assert code == exitcodes.USAGE and "revision 'no-such-rev' does not exist" in err
    code, _, err = _run(["plan", "--head", "HEAD", "--repo", str(tmp_path / "nowhere")], capsys)
    assert code == exitcodes.USAGE and "nowhere" in err
    assert len(boundary) == 2
    # ... and invalid input of their own (not an error reading it) stays FAILURE: see tests/spec, tests/plan


# ----------------------------------------------------------------------------- every command


def _leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix, parser) for every subcommand that runs a function."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, (*prefix, name))
    if "func" in parser._defaults:
        yield prefix, parser


def _minimal_argv(parser: argparse.ArgumentParser) -> list[str]:
    argv: list[str] = []
    for action in parser._actions:
        value = str(next(iter(action.choices))) if action.choices else "x"
        if not action.option_strings and action.nargs not in ("?", "*") and not isinstance(action, argparse._SubParsersAction):
            argv.append(value)
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], value]
    return argv


@pytest.fixture
def root(monkeypatch) -> argparse.ArgumentParser:
    """One parser, returned by every build_parser() call, so functions patched into its leaves run."""
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    return parser


def test_every_command_is_covered(root):
    names = {" ".join(prefix) for prefix, _ in _leaves(root)}
    # a floor, not a census: new commands only add to it
    assert {"validate", "plan", "render", "reconcile", "trace", "audit verify", "data check", "data pull", "deploy",
            "rollback", "serve", "eval", "train", "demo", "model init-tiny", "get", "status", "describe", "logs",
            "events", "wait", "version", "completion"} <= names


@pytest.mark.parametrize("raised", [PermanentError, TemporaryError])
def test_an_ftops_error_from_any_command_becomes_its_message_and_exit_code(raised, root, capsys):
    for prefix, parser in _leaves(root):
        message = f"{' '.join(prefix)} could not run: fix the thing at line 3"

        def fail(args, message=message):
            raise raised(message)

        parser.set_defaults(func=fail)
        code = cli.main([*prefix, *_minimal_argv(parser)])
        out, err = capsys.readouterr()
        expected = exitcodes.USAGE if prefix[0] in ("validate", "plan") else exitcodes.FAILURE
        assert (code, err, out) == (expected, f"error: {message}\n", ""), prefix


def test_interrupt_and_closed_pipe(root):
    leaf = dict((" ".join(p), q) for p, q in _leaves(root))["schema"]
    for exc, code in ((KeyboardInterrupt, exitcodes.INTERRUPTED), (BrokenPipeError, exitcodes.OK)):
        leaf.set_defaults(func=lambda args, exc=exc: (_ for _ in ()).throw(exc()))
        assert cli.main(["schema"]) == code


def test_a_programming_error_is_not_dressed_up_as_a_user_error(root):
    """Only FtopsError is a message for a person; anything else keeps its traceback."""
    leaf = dict((" ".join(p), q) for p, q in _leaves(root))["schema"]
    leaf.set_defaults(func=lambda args: {}["missing"])
    with pytest.raises(KeyError):
        cli.main(["schema"])


# ----------------------------------------------------------------------------- no wrappers


def _swallowing_handlers(source: str) -> list[int]:
    """Lines of `except FtopsError` (or a subclass) handlers whose body only prints and returns:
    the boundary's job, done again by hand."""
    names = {"FtopsError", "PermanentError", "TemporaryError"}
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ExceptHandler) or node.type is None:
            continue
        caught = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(node.type) if isinstance(n, ast.Attribute)}
        if not caught & names:
            continue
        def prints(stmt: ast.stmt) -> bool:
            return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                    and getattr(stmt.value.func, "id", None) == "print")

        def returns_a_code(stmt: ast.stmt) -> bool:  # `return 1`, `return USAGE`, `return _fail(exc)`
            if not isinstance(stmt, ast.Return):
                return False
            value = stmt.value
            hands_on = (isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords
                        and isinstance(value.args[0], ast.Name) and value.args[0].id == node.name)
            return hands_on or isinstance(value, (ast.Constant, ast.Name, ast.Attribute))

        if all(prints(s) or returns_a_code(s) for s in node.body) and any(map(returns_a_code, node.body)):
            lines.append(node.lineno)
    return lines


def test_the_detector_finds_a_wrapper():
    wrapped = "try:\n    f()\nexcept FtopsError as exc:\n    print(f'error: {exc}')\n    return 1\n"
    handed_on = "try:\n    f()\nexcept PermanentError as exc:\n    return _fail(exc)\n"
    kept = "try:\n    f()\nexcept FtopsError as exc:\n    return _crash(run, str(exc))\n"
    assert _swallowing_handlers(wrapped) == [3] and _swallowing_handlers(handed_on) == [3]
    assert _swallowing_handlers(kept) == []


def test_no_command_prints_and_returns_an_ftops_error_itself():
    found = {p.name: _swallowing_handlers(p.read_text()) for p in sorted(COMMANDS_DIR.glob("*.py"))}
    assert {name: lines for name, lines in found.items() if lines} == {}
