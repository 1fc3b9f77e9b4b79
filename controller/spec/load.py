"""Turn a spec file into a validated FineTune, or into errors a person can act on.

Every problem becomes a `SpecIssue` naming the file, line, column and field path (in the
YAML's own camelCase) with a message that says what to write instead. Loading never stops at
the first problem in a file, and one bad file never hides another: callers collect issues.

Like a compiler, one run reports every mistake of every kind: refused YAML constructs, the
schema, the name against the file name, the GPU catalog, the repository paths and the data
versions they point at. The checks after the schema read the YAML's own data, so they run even
when the schema check failed (a typo elsewhere does not hide a missing dataset). `render`
prints an issue with its source line and a caret under the part that is wrong, and enum values
and GPU types that are close to a known one get a "did you mean".
"""
from __future__ import annotations

import difflib
import re
import typing
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from pathlib import PurePosixPath
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from controller.spec.base import check_repo_path
from controller.spec.finetune import FineTune
from controller.spec.method import METHOD_TYPES
from controller.spec.yamlsafe import (
    YAML11_BOOLS,
    YAML11_EXPONENT_STRING,
    Located,
    Path_,
    YamlProblem,
    load_located,
)

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class SpecIssue:
    """One problem in one spec file."""

    file: str
    line: int
    field: str
    message: str
    severity: Severity = "error"
    column: int = 1
    """Where the wrong part starts: the value for a wrong value, the key for a wrong key."""
    length: int = 1
    """How many characters from `column` are wrong (what the caret underlines)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self, file: str | None = None) -> str:
        """`file:line:col: severity: field: message` (as compilers print it); `file` overrides
        the path shown (e.g. relative to the current directory)."""
        where = f"{file or self.file}:{self.line}:{self.column}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}: {self.severity}:{field} {self.message}"


def render(issue: SpecIssue, source: str | None, file: str | None = None) -> str:
    """The issue, then its source line and a caret under the wrong part:

        specs/triage.yaml:16:5: error: spec.training.epocs: unknown field 'epocs'. Did you mean 'epochs'?
           16 |     epocs: 3
              |     ^~~~~
    """
    head = issue.format(file)
    lines = source.splitlines() if source else []
    if not 1 <= issue.line <= len(lines):
        return head
    text = lines[issue.line - 1].expandtabs(1)
    number = str(issue.line)
    gutter = " " * (len(number) + 4)
    start = max(1, min(issue.column, len(text) + 1))
    width = max(1, min(issue.length, max(1, len(text) - start + 1)))
    caret = " " * (start - 1) + "^" + "~" * (width - 1)
    return f"{head}\n   {number} | {text}\n{gutter}| {caret}"


@dataclass(frozen=True)
class LoadedSpec:
    """The outcome of loading one file: the model when valid, and every issue found."""

    file: str
    spec: FineTune | None
    issues: tuple[SpecIssue, ...]
    located: Located | None = dc_field(default=None, compare=False, repr=False)
    source: str | None = dc_field(default=None, compare=False, repr=False)
    """The file's text, for `render` (its source lines under each issue)."""

    @property
    def ok(self) -> bool:
        return self.spec is not None and not any(i.severity == "error" for i in self.issues)

    @property
    def errors(self) -> tuple[SpecIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "error")


PathKind = Literal["file", "dir", "missing", "escapes"]


class RepoView(Protocol):
    """What validation needs to know about the repository a spec lives in (a working tree or a
    git revision). `kind` reports 'escapes' when a symlink on the way leads outside the repo."""

    def kind(self, rel: str) -> PathKind: ...

    def data_problem(self, rel: str) -> str | None:
        """What is wrong with the data version the DVC pointer `rel`.dvc records (no md5, not a
        pointer file), or None when it is usable."""
        ...


# ----------------------------------------------------------------------------- field paths


def format_path(path: Path_) -> str:
    """('spec', 'compare', 'models', 0, 'name') -> 'spec.compare.models[0].name'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _data_path(loc: tuple, data: Any) -> tuple[Path_, bool]:
    """Map a pydantic error location onto the path in the YAML data.

    Pydantic inserts the discriminator value of a tagged union ('lora') into locations; drop it.
    Returns the path and whether it exists in the data (a missing field does not)."""
    path: list[str | int] = []
    current = data
    exists = True
    for part in loc:
        if isinstance(current, dict) and isinstance(part, str) and part in current:
            path.append(part)
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            path.append(part)
            current = current[part]
        elif isinstance(current, dict) and isinstance(part, str) and current.get("type") == part:
            continue  # tagged-union branch name, not a key
        elif isinstance(part, str) and ("[" in part or part.startswith("function-")):
            continue  # pydantic-internal schema names
        else:
            path.append(part)
            exists = False
            current = None
    return tuple(path), exists


def _unwrap(annotation: Any, value: Any) -> Any:
    """The model class behind an annotation, choosing a tagged-union member by the data's `type`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0], value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        for member in members:
            cls = _unwrap(member, value)
            if isinstance(cls, type) and issubclass(cls, BaseModel):
                tag = cls.model_fields.get("type")
                if tag is None or (isinstance(value, dict) and value.get("type") in typing.get_args(tag.annotation)):
                    return cls
        return _unwrap(members[0], value) if members else None
    if origin in (tuple, list):
        return annotation
    return annotation


def _model_at(path: Path_, data: Any) -> type[BaseModel] | None:
    """The pydantic model class describing the mapping at `path` in the data."""
    cls: Any = FineTune
    current = data
    for part in path:
        if isinstance(part, int):
            args = typing.get_args(cls)
            cls = _unwrap(args[0], current[part] if isinstance(current, list) else None) if args else None
            current = current[part] if isinstance(current, list) and part < len(current) else None
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = _field_by_alias(cls, part)
        if field is None:
            return None
        current = current.get(part) if isinstance(current, dict) else None
        cls = _unwrap(field.annotation, current)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _field_by_alias(cls: type[BaseModel], alias: str):
    for name, field in cls.model_fields.items():
        if (field.alias or name) == alias:
            return field
    return None


def _aliases(cls: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in cls.model_fields.items()]


# ----------------------------------------------------------------------------- messages


def _message(err: Any, path: Path_, located: Located, data: Any) -> str:
    kind = err["type"]
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    scalar = located.scalars.get(path)
    raw = scalar.raw if scalar else None

    if kind == "extra_forbidden":
        parent = _model_at(path[:-1], data)
        name = path[-1]
        known = _aliases(parent) if parent else []
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        listing = f" Known fields here: {', '.join(known)}." if known else ""
        return f"unknown field '{name}'.{hint}{listing}"
    if kind == "missing":
        field_name = path[-1]
        parent = _model_at(path[:-1], data)
        field = _field_by_alias(parent, str(field_name)) if parent else None
        about = f" ({field.description})" if field is not None and field.description else ""
        return f"required field '{field_name}' is missing{about}"
    if kind == "union_tag_not_found":
        return f"needs `type:` set to one of {', '.join(METHODS)}"
    if kind == "union_tag_invalid":
        tag = str(err.get("ctx", {}).get("tag"))
        return f"type '{tag}' is not a method: write one of {', '.join(METHODS)}.{did_you_mean(tag, METHODS)}".rstrip(".")
    if kind == "string_type" and scalar is not None and scalar.plain:
        value = _value_at(data, path)
        what = "a boolean" if isinstance(value, bool) else "nothing (null)" if value is None else f"the number {value!r}"
        return f"must be a string, but YAML reads the unquoted {raw} as {what}: write it in quotes, '{raw}'"
    if kind == "bool_type" and raw is not None and raw in YAML11_BOOLS:
        meaning = "true" if raw.lower() in ("y", "yes", "on") else "false"
        return f"must be true or false: '{raw}' is a boolean only in YAML 1.1 and other tools read it differently; write {meaning}"
    if kind in ("float_type", "int_type", "bool_type") and scalar is not None and not scalar.plain:
        return f"{msg.lower()}, but the value is quoted: remove the quotes around {raw!r}"
    if kind == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", ""))
        hint = did_you_mean(raw, re.findall(r"'([^']*)'", expected)) if raw is not None else ""
        return f"must be one of {expected}" + (f", not '{raw}'" if raw is not None else "") + (f".{hint}" if hint else "")
    if kind in ("int_from_float", "int_type") and isinstance(_value_at(data, path), float):
        return f"must be a whole number, not {raw}"
    return msg[0].lower() + msg[1:] if msg else kind


METHODS = METHOD_TYPES


def did_you_mean(typed: str, known: typing.Iterable[str], cutoff: float = 0.6) -> str:
    """` Did you mean 'hybrid'?` for a value close to a known one (a prefix counts: a100 ->
    a100-40gb), else ''."""
    options = sorted(set(known))
    close = sorted(o for o in options if typed and o.startswith(typed) and o != typed) or \
        difflib.get_close_matches(typed, options, n=1, cutoff=cutoff)
    return f" Did you mean '{close[0]}'?" if close else ""


def _span(located: Located, path: Path_, at_value: bool) -> tuple[int, int, int]:
    """(line, column, length) of what is wrong at `path`: its value when `at_value` and the value
    is a scalar on the key's line, else its key (or its nearest ancestor's, for a missing key)."""
    line = located.line_of(path)
    scalar = located.scalars.get(tuple(path))
    if at_value and scalar is not None and scalar.line == line:
        return line, scalar.column, max(1, len(scalar.raw) + (0 if scalar.plain else 2))
    probe = tuple(path)
    while probe and probe not in located.columns:
        probe = probe[:-1]
    if not probe:
        return line, 1, 1
    key = probe[-1]
    return located.lines.get(probe, line), located.columns[probe], len(str(key)) if isinstance(key, str) else 1


def _value_at(data: Any, path: Path_) -> Any:
    current = data
    for part in path:
        try:
            current = current[part]
        except (KeyError, IndexError, TypeError):
            return None
    return current


# ----------------------------------------------------------------------------- credentials

_CREDENTIAL_KEY = re.compile(
    r"^(password|passwd|pwd|token|apikey|api_key|api-key|secret|secretkey|secret_key|accesskey|access_key|"
    r"accesskeyid|secretaccesskey|privatekey|private_key|bearer|auth|authorization|credentials?|hftoken)$",
    re.IGNORECASE,
)
_CREDENTIAL_VALUE = [
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "an OpenAI-style API key"),
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "a Hugging Face token"),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), "a GitHub token"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"), "a URL with a password in it"),
]


def _credential_issues(data: Any, located: Located, file: str, path: Path_ = ()) -> list[SpecIssue]:
    """Literal credentials are refused without ever echoing them."""
    found: list[SpecIssue] = []
    if isinstance(data, dict):
        for key, value in data.items():
            child = path + (key,)
            if _CREDENTIAL_KEY.match(str(key)) and isinstance(value, (str, int, float)) and value not in ("", None):
                line, column, length = _span(located, child, at_value=False)
                found.append(
                    SpecIssue(
                        file,
                        line,
                        format_path(child),
                        "looks like a literal credential (value not shown). Remove it from the spec and the git history, "
                        "store it in a Kubernetes Secret, and reference it: `secretRef: {name: <secret>, key: <key>}`",
                        column=column,
                        length=length,
                    )
                )
            else:
                found.extend(_credential_issues(value, located, file, child))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(_credential_issues(value, located, file, path + (index,)))
    elif isinstance(data, str):
        for pattern, what in _CREDENTIAL_VALUE:
            if pattern.search(data):
                line, column, length = _span(located, path, at_value=True)
                found.append(
                    SpecIssue(
                        file,
                        line,
                        format_path(path),
                        f"contains what looks like {what} (value not shown). Never commit credentials: store it in a "
                        "Kubernetes Secret and reference it with `secretRef: {name: <secret>, key: <key>}`",
                        column=column,
                        length=length,
                    )
                )
                break
    return found


# ----------------------------------------------------------------------------- YAML 1.1 traps


def _yaml11_warnings(located: Located, file: str, skip: set[Path_]) -> list[SpecIssue]:
    warnings = []
    for path, scalar in located.scalars.items():
        if not scalar.plain or path in skip:
            continue
        if scalar.raw in YAML11_BOOLS:
            warnings.append(
                SpecIssue(
                    file,
                    scalar.line,
                    format_path(path),
                    f"unquoted '{scalar.raw}' is the string \"{scalar.raw}\" here (YAML 1.2) but a boolean to YAML 1.1 "
                    f"tools such as PyYAML: write '{scalar.raw}' in quotes, or true/false if you meant a boolean",
                    "warning",
                    scalar.column,
                    len(scalar.raw),
                )
            )
        elif YAML11_EXPONENT_STRING.match(scalar.raw):
            mantissa, _, exponent = scalar.raw.lower().partition("e")
            warnings.append(
                SpecIssue(
                    file,
                    scalar.line,
                    format_path(path),
                    f"{scalar.raw} is read as the number {float(scalar.raw):g} here, but YAML 1.1 tools (PyYAML) read it as "
                    f"a string: write {mantissa}.0e{exponent} so every tool agrees",
                    "warning",
                    scalar.column,
                    len(scalar.raw),
                )
            )
    return warnings


# ----------------------------------------------------------------------------- repo checks


def _text(data: Any, *path: str | int) -> str | None:
    """The string at `path` in the YAML data, or None (absent, not a string)."""
    value = _value_at(data, tuple(path))
    return value if isinstance(value, str) else None


def _lexically_ok(rel: str) -> bool:
    try:
        check_repo_path(rel)
    except ValueError:
        return False  # the schema check reports it
    return True


def _repo_path_fields(data: Any) -> list[tuple[Path_, str, tuple[str, ...]]]:
    """(field path, repo path, acceptable kinds) for every field that names a file in the repo,
    read from the YAML data itself, so the checks run even when the schema check failed."""
    out: list[tuple[Path_, str, tuple[str, ...]]] = []

    def add(path: Path_, kinds: tuple[str, ...], skip: tuple[str, ...] = ()) -> None:
        rel = _text(data, *path)
        if rel is not None and rel not in skip and "://" not in rel and _lexically_ok(rel):
            out.append((path, rel, kinds))

    add(("spec", "baseModel", "uri"), ("dir",))
    add(("spec", "dataset", "path"), ("file", "dvc"))
    add(("spec", "dataset", "review", "file"), ("file", "missing"))
    add(("spec", "training", "replay", "path"), ("file", "dvc"))
    add(("spec", "evaluation", "format", "schemaPath"), ("file",))
    add(("spec", "evaluation", "regression", "suite"), ("file", "dvc"), skip=("default",))
    models = _value_at(data, ("spec", "evaluation", "compare", "models"))
    for index in range(len(models) if isinstance(models, list) else 0):
        add(("spec", "evaluation", "compare", "models", index, "path"), ("dir",))
    add(("spec", "evaluation", "bias", "path"), ("file", "dvc"))
    add(("spec", "serving", "corpus"), ("dir", "dvc"))
    return out


def _path_problem(rel: str, acceptable: tuple[str, ...], repo: RepoView) -> str | None:
    """What is wrong with a repo path that a spec names, or None. A DVC-tracked file or folder
    counts as present when its `.dvc` pointer is committed and records a version."""
    kind = repo.kind(rel)
    if kind == "escapes":
        return f"'{rel}' goes through a symlink that leads outside the repository: commit the real file instead"
    if kind in acceptable:
        return None
    if "dvc" in acceptable:
        dvc_kind = repo.kind(rel + ".dvc")
        if dvc_kind == "file":
            return repo.data_problem(rel)
        if dvc_kind == "escapes":
            return f"'{rel}.dvc' goes through a symlink that leads outside the repository"
    if kind == "missing":
        tracked = f" or its DVC pointer '{rel}.dvc' (run `ftops data version`)" if "dvc" in acceptable else ""
        return f"'{rel}' does not exist in the repository: commit it{tracked}"
    want = " or ".join(k for k in acceptable if k in ("file", "dir"))
    return f"'{rel}' is a {kind}, expected a {want}"


def _repo_issues(data: Any, located: Located, file: str, repo: RepoView, flagged: set[Path_]) -> list[SpecIssue]:
    issues = []
    for path, rel, acceptable in _repo_path_fields(data):
        if path in flagged:
            continue
        problem = _path_problem(rel, acceptable, repo)
        if problem:
            line, column, length = _span(located, path, at_value=True)
            issues.append(SpecIssue(file, line, format_path(path), problem, column=column, length=length))
    return issues


# ----------------------------------------------------------------------------- entry point


def load_spec_text(
    text: str,
    file: str,
    repo: RepoView | None = None,
    gpu_types: typing.Collection[str] | None = None,
) -> LoadedSpec:
    """Validate one spec file's text. `repo` adds the existence and symlink checks of
    `check_against_repo`; `gpu_types` (from the operator catalog) adds the GPU type check."""
    loaded = parse_spec(text, file, gpu_types)
    return check_against_repo(loaded, repo) if repo is not None else loaded


def parse_spec(text: str, file: str, gpu_types: typing.Collection[str] | None = None) -> LoadedSpec:
    """Everything that depends only on the file's path and bytes, so the result can be cached by
    (path, blob hash) and reused while the file is unchanged."""
    try:
        located = load_located(text)
    except YamlProblem as exc:
        issue = SpecIssue(file, exc.line, format_path(exc.path), exc.message, column=exc.column, length=exc.length)
        return LoadedSpec(file, None, (issue,), source=text)
    issues: list[SpecIssue] = [SpecIssue(file, p.line, format_path(p.path), p.message, column=p.column, length=p.length)
                               for p in located.problems]
    data = located.data
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        issues.append(SpecIssue(file, 1, "", f"a spec must be a mapping with apiVersion, kind, metadata and spec; this file is {what}"))
        return _result(file, None, issues, located, text)

    credentials = _credential_issues(data, located, file)
    issues.extend(credentials)
    secret_paths = {tuple(_split(i.field)) for i in credentials}

    spec: FineTune | None = None
    try:
        spec = FineTune.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            path, exists = _data_path(err["loc"], data)
            if any(path[: len(s)] == s for s in secret_paths):
                continue  # already reported, and its message must not echo the value
            if any(path[: len(a)] == a for a in located.aliased):
                continue  # the value was an alias (reported): nothing is known about it
            at = path + ("type",) if err["type"] == "union_tag_invalid" else path  # point at `type: dora`
            line, column, length = _span(located, at, at_value=exists and err["type"] != "extra_forbidden")
            issues.append(SpecIssue(file, line, format_path(path), _message(err, path, located, data),
                                    column=column, length=length))
    flagged = {tuple(_split(i.field)) for i in issues}
    issues.extend(_semantic_issues(data, located, file, gpu_types, flagged))
    # A YAML 1.1 trap that already caused an error is explained there; warn about the rest.
    warnings = _yaml11_warnings(located, file, secret_paths | {tuple(_split(i.field)) for i in issues})
    return _result(file, spec, issues + warnings, located, text)


def repo_paths(loaded: LoadedSpec) -> tuple[str, ...]:
    """Every repository path the repo checks of `loaded` look at (each named path and its .dvc
    pointer): their tree entries decide the outcome, so callers can cache on them."""
    if loaded.located is None or not isinstance(loaded.located.data, dict):
        return ()
    return tuple(p for _, rel, _ in _repo_path_fields(loaded.located.data) for p in (rel, rel + ".dvc"))


def check_against_repo(loaded: LoadedSpec, repo: RepoView) -> LoadedSpec:
    """Add the checks that depend on the repository: referenced files exist (directly or through a
    committed .dvc pointer that records a version) and no symlink on the way leads outside the
    repo. They read the YAML data, so a spec that failed the schema check gets them too."""
    located = loaded.located
    if located is None or not isinstance(located.data, dict):
        return loaded
    flagged = {tuple(_split(i.field)) for i in loaded.issues if i.severity == "error"}
    extra = _repo_issues(located.data, located, loaded.file, repo, flagged)
    if not extra:
        return loaded
    return _result(loaded.file, loaded.spec, list(loaded.issues) + extra, located, loaded.source)


def with_issues(loaded: LoadedSpec, problems: typing.Iterable[tuple[str, str]]) -> LoadedSpec:
    """`loaded` with more errors, each `(field, message)` placed at its field's line (checks that
    need what a spec file does not hold, such as the operator's providers)."""
    located = loaded.located
    extra = []
    for field, message in problems:
        path = tuple(_split(field))
        line, column, length = _span(located, path, at_value=True) if located is not None else (1, 1, 1)
        extra.append(SpecIssue(loaded.file, line, field, message, column=column, length=length))
    if not extra or located is None:
        return loaded if not extra else LoadedSpec(loaded.file, None, loaded.issues + tuple(extra), None, loaded.source)
    return _result(loaded.file, loaded.spec, list(loaded.issues) + extra, located, loaded.source)


def _result(file: str, spec: FineTune | None, issues: list[SpecIssue], located: Located, source: str | None) -> LoadedSpec:
    # Problems with the YAML itself (no field) come first on their line, then by column.
    ordered = sorted(issues, key=lambda i: (i.line, bool(i.field), i.column, i.severity))
    valid = not any(i.severity == "error" for i in ordered)
    return LoadedSpec(file, spec if valid else None, tuple(ordered), located, source)


def _split(field: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", field):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return parts


def _semantic_issues(data: Any, located: Located, file: str, gpu_types: typing.Collection[str] | None,
                     flagged: set[Path_]) -> list[SpecIssue]:
    """The name against the file name, and the GPU type against the operator's catalog, read
    from the YAML data (so they are checked even when the schema check failed elsewhere)."""
    issues: list[SpecIssue] = []
    stem = PurePosixPath(file).name
    for suffix in (".yaml", ".yml"):
        stem = stem.removesuffix(suffix)
    name = _text(data, "metadata", "name")
    path: Path_ = ("metadata", "name")
    if name is not None and name != stem and path not in flagged:
        line, column, length = _span(located, path, at_value=True)
        issues.append(SpecIssue(
            file, line, "metadata.name",
            f"'{name}' does not match the file name: rename the file to specs/{name}.yaml or set name: {stem}",
            column=column, length=length))
    gpu = _text(data, "spec", "hardware", "gpuType")
    path = ("spec", "hardware", "gpuType")
    if gpu_types is not None and gpu is not None and gpu not in gpu_types and path not in flagged:
        line, column, length = _span(located, path, at_value=True)
        hint = did_you_mean(gpu, gpu_types, cutoff=0.5)
        issues.append(SpecIssue(
            file, line, "spec.hardware.gpuType",
            f"'{gpu}' is not in the operator's GPU catalog.{hint} Known: {', '.join(sorted(gpu_types))}",
            column=column, length=length))
    return issues
