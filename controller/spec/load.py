"""Turn a spec file into a validated FineTune, or into errors a person can act on.

Every problem becomes a `SpecIssue` naming the file, line, column and field path (in the
YAML's own camelCase) with a message that says what to write instead. Loading never stops at
the first problem in a file, and one bad file never hides another: callers collect issues.
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

from controller.spec.finetune import FineTune
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        where = f"{self.file}:{self.line}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}: {self.severity}:{field} {self.message}"


@dataclass(frozen=True)
class LoadedSpec:
    """The outcome of loading one file: the model when valid, and every issue found."""

    file: str
    spec: FineTune | None
    issues: tuple[SpecIssue, ...]
    located: Located | None = dc_field(default=None, compare=False, repr=False)

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


def _message(err: dict, path: Path_, located: Located, data: Any) -> str:
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
        return "needs `type:` set to one of lora, qlora, full"
    if kind == "union_tag_invalid":
        return f"type '{err.get('ctx', {}).get('tag')}' is not a method: write one of lora, qlora, full"
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
        expected = err.get("ctx", {}).get("expected", "")
        return f"must be one of {expected}" + (f", not '{raw}'" if raw is not None else "")
    if kind in ("int_from_float", "int_type") and isinstance(_value_at(data, path), float):
        return f"must be a whole number, not {raw}"
    return msg[0].lower() + msg[1:] if msg else kind


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
                found.append(
                    SpecIssue(
                        file,
                        located.line_of(child),
                        format_path(child),
                        "looks like a literal credential (value not shown). Remove it from the spec and the git history, "
                        "store it in a Kubernetes Secret, and reference it: `secretRef: {name: <secret>, key: <key>}`",
                        column=located.column_of(child),
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
                found.append(
                    SpecIssue(
                        file,
                        located.line_of(path),
                        format_path(path),
                        f"contains what looks like {what} (value not shown). Never commit credentials: store it in a "
                        "Kubernetes Secret and reference it with `secretRef: {name: <secret>, key: <key>}`",
                        column=located.column_of(path),
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
                )
            )
    return warnings


# ----------------------------------------------------------------------------- repo checks


def _repo_path_fields(spec: FineTune) -> list[tuple[Path_, str, tuple[str, ...]]]:
    """(field path, repo path, acceptable kinds) for every field that names a file in the repo."""
    s = spec.spec
    out: list[tuple[Path_, str, tuple[str, ...]]] = []
    if s.base_model.kind == "path":
        out.append((("spec", "baseModel", "uri"), s.base_model.uri, ("dir",)))
    out.append((("spec", "dataset", "path"), s.dataset.path, ("file", "dvc")))
    if s.dataset.review.file:
        out.append((("spec", "dataset", "review", "file"), s.dataset.review.file, ("file", "missing")))
    fmt = s.evaluation.format
    if fmt is not None and fmt.schema_path:
        out.append((("spec", "evaluation", "format", "schemaPath"), fmt.schema_path, ("file",)))
    if s.evaluation.regression.suite != "default":
        out.append((("spec", "evaluation", "regression", "suite"), s.evaluation.regression.suite, ("file", "dvc")))
    for index, ref in enumerate(s.evaluation.compare.models):
        if ref.path:
            out.append((("spec", "evaluation", "compare", "models", index, "path"), ref.path, ("dir",)))
    if s.evaluation.bias is not None:
        out.append((("spec", "evaluation", "bias", "path"), s.evaluation.bias.path, ("file", "dvc")))
    if s.serving is not None and s.serving.corpus:
        out.append((("spec", "serving", "corpus"), s.serving.corpus, ("dir", "dvc")))
    return out


def _path_problem(rel: str, acceptable: tuple[str, ...], repo: RepoView) -> str | None:
    """What is wrong with a repo path that a spec names, or None. A DVC-tracked file or folder
    counts as present when its `.dvc` pointer is committed."""
    kind = repo.kind(rel)
    if kind == "escapes":
        return f"'{rel}' goes through a symlink that leads outside the repository: commit the real file instead"
    if kind in acceptable:
        return None
    if "dvc" in acceptable:
        dvc_kind = repo.kind(rel + ".dvc")
        if dvc_kind == "file":
            return None
        if dvc_kind == "escapes":
            return f"'{rel}.dvc' goes through a symlink that leads outside the repository"
    if kind == "missing":
        tracked = f" or its DVC pointer '{rel}.dvc' (run `ftops data version`)" if "dvc" in acceptable else ""
        return f"'{rel}' does not exist in the repository: commit it{tracked}"
    want = " or ".join(k for k in acceptable if k in ("file", "dir"))
    return f"'{rel}' is a {kind}, expected a {want}"


def _repo_issues(spec: FineTune, located: Located, file: str, repo: RepoView) -> list[SpecIssue]:
    issues = []
    for path, rel, acceptable in _repo_path_fields(spec):
        problem = _path_problem(rel, acceptable, repo)
        if problem:
            issues.append(SpecIssue(file, located.line_of(path), format_path(path), problem, column=located.column_of(path)))
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
        return LoadedSpec(file, None, (SpecIssue(file, exc.line, format_path(exc.path), exc.message, column=exc.column),))
    data = located.data
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        return LoadedSpec(
            file,
            None,
            (SpecIssue(file, 1, "", f"a spec must be a mapping with apiVersion, kind, metadata and spec; this file is {what}"),),
        )

    issues: list[SpecIssue] = _credential_issues(data, located, file)
    secret_paths = {tuple(_split(i.field)) for i in issues}

    spec: FineTune | None = None
    try:
        spec = FineTune.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            path, _ = _data_path(err["loc"], data)
            if any(path[: len(s)] == s for s in secret_paths):
                continue  # already reported, and its message must not echo the value
            issues.append(
                SpecIssue(
                    file,
                    located.line_of(path),
                    format_path(path),
                    _message(err, path, located, data),
                    column=located.column_of(path),
                )
            )
    if spec is not None:
        issues.extend(_semantic_issues(spec, located, file, gpu_types))
    # A YAML 1.1 trap that already caused an error is explained there; warn about the rest.
    warnings = _yaml11_warnings(located, file, secret_paths | {tuple(_split(i.field)) for i in issues})
    return _result(file, spec, issues + warnings, located)


def repo_paths(loaded: LoadedSpec) -> tuple[str, ...]:
    """Every repository path the repo checks of `loaded` look at (each named path and its .dvc
    pointer): their tree entries decide the outcome, so callers can cache on them."""
    if loaded.spec is None:
        return ()
    return tuple(p for _, rel, _ in _repo_path_fields(loaded.spec) for p in (rel, rel + ".dvc"))


def check_against_repo(loaded: LoadedSpec, repo: RepoView) -> LoadedSpec:
    """Add the checks that depend on the repository: referenced files exist (directly or through a
    committed .dvc pointer) and no symlink on the way leads outside the repo."""
    if loaded.spec is None or loaded.located is None:
        return loaded
    extra = _repo_issues(loaded.spec, loaded.located, loaded.file, repo)
    if not extra:
        return loaded
    return _result(loaded.file, loaded.spec, list(loaded.issues) + extra, loaded.located)


def _result(file: str, spec: FineTune | None, issues: list[SpecIssue], located: Located) -> LoadedSpec:
    ordered = sorted(issues, key=lambda i: (i.line, i.column, i.severity))
    valid = not any(i.severity == "error" for i in ordered)
    return LoadedSpec(file, spec if valid else None, tuple(ordered), located)


def _split(field: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", field):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return parts


def _semantic_issues(
    spec: FineTune, located: Located, file: str, gpu_types: typing.Collection[str] | None
) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    stem = PurePosixPath(file).name
    for suffix in (".yaml", ".yml"):
        stem = stem.removesuffix(suffix)
    if stem != spec.metadata.name:
        path = ("metadata", "name")
        issues.append(
            SpecIssue(
                file,
                located.line_of(path),
                "metadata.name",
                f"'{spec.metadata.name}' does not match the file name: rename the file to specs/{spec.metadata.name}.yaml "
                f"or set name: {stem}",
                column=located.column_of(path),
            )
        )
    if gpu_types is not None and spec.spec.hardware.gpu_type not in gpu_types:
        path = ("spec", "hardware", "gpuType")
        typed = spec.spec.hardware.gpu_type
        close = sorted(g for g in gpu_types if g.startswith(typed)) or difflib.get_close_matches(typed, list(gpu_types), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        issues.append(
            SpecIssue(
                file,
                located.line_of(path),
                "spec.hardware.gpuType",
                f"'{spec.spec.hardware.gpu_type}' is not in the operator's GPU catalog.{hint} Known: {', '.join(sorted(gpu_types))}",
                column=located.column_of(path),
            )
        )
    return issues
