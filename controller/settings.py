"""The one configuration of the command line: global flags, `FTOPS_*` environment variables and
a config file, resolved the same way for every command.

Precedence, highest first: **flag > environment > config file > default**.

| setting | flag | environment | config file key | default |
|---|---|---|---|---|
| controller home | `--home` | `FTOPS_HOME` | `home` | `.ftops` |
| GitOps repository | `--repo` | `FTOPS_REPO` | `repo` | none |
| backend | `--backend` | `FTOPS_BACKEND` | `backend` | `local` |
| kubeconfig | `--kubeconfig` | `FTOPS_KUBECONFIG` | `kubeconfig` | in-cluster, then `~/.kube/config` |
| operator config | `--operator-config` | `FTOPS_OPERATOR_CONFIG` | `operatorConfig` | the shipped catalog |
| output | `-o/--output` | - | - | `table` |

Config files (the first that exists is read; `FTOPS_CONFIG=FILE` names one instead):
`./.ftops.yaml` (a project's settings, next to where you run ftops), then
`$XDG_CONFIG_HOME/ftops/config.yaml` (default `~/.config/ftops/config.yaml`). Relative paths
in a config file are relative to the file's folder. The output format is a flag only: a config
file must never change what a script parses.

Global flags work before or after the subcommand (`ftops --home H get` = `ftops get --home H`):
the top-level parser defines them with default None, and each subcommand that uses one declares
it again with default SUPPRESS (`uses`), so a value given before the subcommand is never
overwritten by the subcommand's default.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from controller.errors import FtopsError
from controller.exitcodes import USAGE

DEFAULT_HOME = ".ftops"
PROJECT_FILE = ".ftops.yaml"


class SettingsError(FtopsError):
    """A setting that cannot be used (a config file or variable that is wrong, a required one
    missing): the command was called wrong, so it exits USAGE (2), not FAILURE."""

    exit_code = USAGE


@dataclass(frozen=True)
class Global:
    dest: str
    flag: str
    env: str | None
    key: str | None
    """The config file key (camelCase, as in specs)."""
    default: str | None
    help: str
    path: bool = False
    """A file or folder: relative values in a config file are relative to the file."""
    choices: tuple[str, ...] | None = None


GLOBALS: tuple[Global, ...] = (
    Global("home", "--home", "FTOPS_HOME", "home", DEFAULT_HOME,
           f"controller home: ledger, artifact store, status (default: {DEFAULT_HOME})", path=True),
    Global("repo", "--repo", "FTOPS_REPO", "repo", None, "the GitOps repository: a local path or a git URL", path=True),
    Global("backend", "--backend", "FTOPS_BACKEND", "backend", "local", "where runs and servers live (default: local)",
           choices=("local", "kubernetes")),
    Global("kubeconfig", "--kubeconfig", "FTOPS_KUBECONFIG", "kubeconfig", None,
           "kubeconfig for --backend kubernetes (default: in-cluster, then ~/.kube/config)", path=True),
    Global("operator_config", "--operator-config", "FTOPS_OPERATOR_CONFIG", "operatorConfig", None,
           "operator config: GPU catalog, prices, tenancy, cluster defaults (default: the shipped one)", path=True),
)
BY_DEST = {g.dest: g for g in GLOBALS}


def _add(parser: argparse.ArgumentParser | argparse._ArgumentGroup, g: Global, default: object) -> None:
    metavar = None if g.choices else g.dest.upper().replace("_", "-")
    parser.add_argument(g.flag, dest=g.dest, choices=g.choices, default=default, metavar=metavar, help=g.help)


def add_globals(parser: argparse.ArgumentParser) -> None:
    """The top-level parser's global options (before the subcommand)."""
    from controller.output import add_output_flag

    group = parser.add_argument_group("global options (before or after the command)")
    for g in GLOBALS:
        _add(group, g, None)
    add_output_flag(group, global_=True)


def uses(parser: argparse.ArgumentParser, *dests: str) -> None:
    """Declare the global options a subcommand reads, so they work after it too and show in its
    help. Their default is SUPPRESS: a value given before the subcommand stays."""
    group = parser.add_argument_group("global options (also before the command)")
    for dest in dests:
        _add(group, BY_DEST[dest], argparse.SUPPRESS)


# ----------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Value:
    value: str | None
    source: str
    """Where it came from: `--home`, `FTOPS_HOME`, `.ftops.yaml:3`, `default`."""


def config_file(env: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to read: $FTOPS_CONFIG, ./.ftops.yaml, then the user's."""
    named = env.get("FTOPS_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise SettingsError(f"FTOPS_CONFIG={named}: no such file")
        return path
    base = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")).expanduser() / ".config")
    for candidate in (cwd / PROJECT_FILE, base / "ftops" / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, Value]:
    """The settings in a config file, each with its line; an unknown key or a wrong type is
    an error naming the file and line (and the key it resembles)."""
    import difflib

    from controller.spec.yamlsafe import YamlProblem, load_located

    try:
        located = load_located(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except YamlProblem as exc:
        raise SettingsError(f"{path}:{exc.line}:{exc.column}: {exc.message}") from None
    if located.problems:  # anchors, aliases, tags, duplicate keys: refused as in specs
        first = located.problems[0]
        raise SettingsError(f"{path}:{first.line}:{first.column}: {first.message}")
    data = located.data
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}:1: a config file is a mapping of settings ({', '.join(_keys())})")
    out: dict[str, Value] = {}
    for key, value in data.items():
        line = located.line_of((key,))
        g = next((g for g in GLOBALS if g.key == key), None)
        if g is None:
            close = difflib.get_close_matches(str(key), _keys(), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise SettingsError(f"{path}:{line}: unknown setting '{key}'.{hint} Known: {', '.join(_keys())}")
        if not isinstance(value, str) or not value:
            raise SettingsError(f"{path}:{line}: {key} must be a non-empty string")
        if g.choices and value not in g.choices:
            raise SettingsError(f"{path}:{line}: {key} must be one of {', '.join(g.choices)}, not '{value}'")
        if g.path and "://" not in value and not value.startswith("git@"):
            value = str((path.parent / Path(value).expanduser()).resolve()) if not Path(value).expanduser().is_absolute() \
                else str(Path(value).expanduser())
        out[g.dest] = Value(value, f"{path}:{line}")
    return out


def _keys() -> list[str]:
    return [g.key for g in GLOBALS if g.key]


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> dict[str, Value]:
    """Fill every global setting into `args` (flag > environment > config file > default) and
    return where each came from (also kept as `args.settings`, for messages)."""
    from controller.output import output_format

    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    file_values: dict[str, Value] | None = None
    found: dict[str, Value] = {}
    for g in GLOBALS:
        given = getattr(args, g.dest, None)
        if given is not None:
            found[g.dest] = Value(str(given), g.flag)
            continue
        if g.env and env.get(g.env):
            value = env[g.env]
            if g.choices and value not in g.choices:
                raise SettingsError(f"{g.env}={value}: must be one of {', '.join(g.choices)}")
            found[g.dest] = Value(value, g.env)
            continue
        if file_values is None:
            path = config_file(env, cwd)
            file_values = read_config_file(path) if path is not None else {}
        found[g.dest] = file_values.get(g.dest) or Value(g.default, "default")
    for dest, v in found.items():
        setattr(args, dest, v.value)
    args.output = output_format(getattr(args, "output", None) or "table")
    args.settings = found
    return found


def where(args: argparse.Namespace, dest: str) -> str:
    """' (from FTOPS_HOME)' when a setting did not come from the command line itself."""
    v = (getattr(args, "settings", None) or {}).get(dest)
    if v is None or v.source.startswith("--") or v.source == "default":
        return ""
    return f" (from {v.source})"


def require_home(args: argparse.Namespace) -> Path:
    """The controller home the command reads; an error when there is none (a typo in --home
    must not look like "nothing reconciled yet")."""
    home = Path(getattr(args, "home", None) or DEFAULT_HOME)
    if not home.is_dir():
        raise FtopsError(f"no controller home at {home}{where(args, 'home')}: run `ftops reconcile` first or pass --home")
    return home


def require_repo(args: argparse.Namespace, command: str) -> str:
    repo = getattr(args, "repo", None)
    if not repo:
        raise SettingsError(f"`ftops {command}` needs the GitOps repository: pass --repo PATH|URL, set FTOPS_REPO, "
                         f"or write `repo:` in {PROJECT_FILE}")
    return str(repo)


__all__ = ["DEFAULT_HOME", "GLOBALS", "SettingsError", "Value", "add_globals", "config_file", "read_config_file", "require_home",
           "require_repo", "resolve", "uses", "where"]
