"""One configuration for every command: global flags before or after the command, FTOPS_*
variables, a config file, with flag > environment > file > default; one -o flag; `version`;
shell completion from the parser itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller import cli
from tests.conftest import REPO_ROOT


def test_global_flags_work_before_and_after_the_command(built, ftops):
    home = str(built.home)
    after = ftops("get", "-o", "json", "--home", home)
    assert after[0] == 0
    assert ftops("--home", home, "-o", "json", "get") == after
    assert ftops("-o", "json", "get", "--home", home) == after
    # the README's own order for audit, and the others
    for argv in (["audit", "--home", home, "verify"], ["--home", home, "audit", "verify"], ["audit", "verify", "--home", home]):
        code, out, err = ftops(*argv)
        assert code == 0 and out.startswith("ledger OK"), (argv, err)


def test_environment_then_config_file_then_default(built, ftops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    code, _, err = ftops("get")  # the default home, ./.ftops, does not exist here
    assert code == 1 and "no controller home at .ftops:" in err

    (tmp_path / ".ftops.yaml").write_text(f"home: {os.path.relpath(built.home, tmp_path)}\n")  # relative to the file
    code, out, _ = ftops("get", "-o", "name")
    assert code == 0 and out.split() == ["finetune/intake", "finetune/triage"]

    monkeypatch.setenv("FTOPS_HOME", str(tmp_path / "from-env"))
    code, _, err = ftops("get")
    assert code == 1 and f"no controller home at {tmp_path / 'from-env'} (from FTOPS_HOME)" in err  # env beats the file

    code, out, _ = ftops("get", "-o", "name", "--home", built.home)  # the flag beats both
    assert code == 0 and "finetune/triage" in out


def test_the_users_config_file_and_ftops_config(built, ftops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user = tmp_path / "xdg" / "ftops" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text(f"home: {built.home}\nbackend: local\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert ftops("get", "-o", "name")[0] == 0
    named = tmp_path / "team.yaml"
    named.write_text("home: /nowhere/at/all\n")
    monkeypatch.setenv("FTOPS_CONFIG", str(named))
    code, _, err = ftops("get")
    assert code == 1 and f"no controller home at /nowhere/at/all (from {named}:1)" in err


@pytest.mark.parametrize(("text", "message"), [
    ("hom: x\n", ":1: unknown setting 'hom'. Did you mean 'home'? Known: home, repo, backend, kubeconfig, operatorConfig"),
    ("home: x\nbackend: k8s\n", ":2: backend must be one of local, kubernetes, not 'k8s'"),
    ("home: [a, b]\n", ":1: home must be a non-empty string"),
    ("home: &h x\n", ":1:7: YAML anchor '&h' is not allowed"),
    ("- home\n", ":1: a config file is a mapping of settings"),
])
def test_a_config_file_that_cannot_be_used_is_a_usage_error_naming_its_line(text, message, ftops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".ftops.yaml").write_text(text)
    code, out, err = ftops("get")
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {tmp_path / '.ftops.yaml'}") and message in err, err


def test_a_bad_variable_and_a_missing_repository_are_usage_errors(ftops, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTOPS_BACKEND", "nomad")
    code, _, err = ftops("get")
    assert code == 2 and "FTOPS_BACKEND=nomad: must be one of local, kubernetes" in err
    monkeypatch.delenv("FTOPS_BACKEND")
    code, _, err = ftops("reconcile", "--home", tmp_path / "h")
    assert code == 2 and "`ftops reconcile` needs the GitOps repository: pass --repo PATH|URL, set FTOPS_REPO" in err


def test_the_repository_from_the_environment_reaches_reconcile(built, ftops, tmp_path, monkeypatch):
    monkeypatch.setenv("FTOPS_REPO", str(built.repo.root))
    seen = {}

    from controller.commands import reconcile_commands

    def spy(args):
        seen.update(repo=args.repo, home=args.home, backend=args.backend)
        return 0

    monkeypatch.setattr(reconcile_commands, "cmd_reconcile", spy)
    parser = cli.build_parser()  # registered after the patch: the wrapper calls the spy
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert ftops("reconcile", "--home", tmp_path / "h")[0] == 0
    assert seen == {"repo": str(built.repo.root), "home": str(tmp_path / "h"), "backend": "local"}


def test_one_output_flag_with_the_same_choices_everywhere():
    """Every command that prints takes -o with the same choices; none spells it another way."""
    import argparse

    parser = cli.build_parser()
    flagged = {}
    for name, sub in next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices.items():
        leaves = [(name, sub)]
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                leaves = [(f"{name} {n}", p) for n, p in action.choices.items()]
        for leaf, p in leaves:
            for action in p._actions:
                if "--output" in action.option_strings or "-o" in action.option_strings:
                    flagged[leaf] = (tuple(action.option_strings), tuple(action.choices or ()))
    assert {"get", "describe", "events", "trace", "validate", "plan", "data check", "data prepare", "data review-sample",
            "data review-status", "data version", "eval", "deploy", "rollback", "version"} <= set(flagged)
    assert set(flagged.values()) == {(("-o", "--output"), ("table", "wide", "json", "yaml", "name"))}, flagged


def test_version(ftops):
    code, out, _ = ftops("version", "-o", "json")
    info = json.loads(out)
    assert code == 0 and set(info) == {"ftops", "python", "platform"}
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete "), ("zsh", "#compdef ftops"), ("fish", "complete ")])
def test_completion_scripts(shell, marker, ftops):
    code, out, _ = ftops("completion", shell)
    assert code == 0 and marker in out and "ftops" in out


def _complete(line: str, tmp_path: Path) -> list[str]:
    """What the shell gets back when it asks ftops to complete `line` (argcomplete's protocol)."""
    answer = tmp_path / "answer"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": "\n",
           "_ARGCOMPLETE_STDOUT_FILENAME": str(answer), "_ARGCOMPLETE_SHELL": "bash"}
    subprocess.run([sys.executable, "-m", "controller.cli"], env=env, cwd=REPO_ROOT, capture_output=True, timeout=60)
    return [word.rstrip() for word in answer.read_text().split("\n")]  # a single match ends in a space


def test_completion_answers_from_the_parser(tmp_path):
    assert {"describe", "deploy"} <= set(_complete("ftops de", tmp_path))
    assert "--home" in _complete("ftops get --ho", tmp_path)
    assert set(_complete("ftops get -o ", tmp_path)) >= {"table", "wide", "json", "yaml", "name"}
    assert set(_complete("ftops completion ", tmp_path)) - {"-h", "--help"} == {"bash", "zsh", "fish"}


def test_building_the_parser_imports_nothing_heavy():
    """Every command's parser is built on every call (and for each completion), so the reading
    commands must not pull in the reconciler, rich or argcomplete until they run."""
    code = ("import sys; from controller import cli; cli.build_parser(); "
            "print(sorted(m for m in ('controller.reconcile', 'rich', 'argcomplete', 'torch', 'kubernetes', 'matplotlib') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
