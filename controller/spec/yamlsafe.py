"""Safe YAML loading that remembers where every value came from.

Specs are written by people and reviewed in pull requests, so the loader is stricter than
`yaml.safe_load` and keeps line numbers for error messages:

- anchors, aliases and explicit tags (`!!python/...`, `!custom`) are refused: a spec is plain data;
- duplicate keys are refused (PyYAML silently keeps the last one);
- plain scalars are resolved with the YAML 1.2 core schema, not PyYAML's YAML 1.1 rules, so
  `no` stays the string "no" and `1e-4` is the number 0.0001. Where a YAML 1.1 reader (PyYAML,
  many CI tools) would read the same text differently, the loader remembers the raw text so
  validation can explain the trap instead of failing cryptically.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution).
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL_TRUE = re.compile(r"^(?:true|True|TRUE)$")
_BOOL_FALSE = re.compile(r"^(?:false|False|FALSE)$")
_INT10 = re.compile(r"^[-+]?[0-9]+$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")

# Words YAML 1.1 reads as booleans but YAML 1.2 reads as strings.
YAML11_BOOLS = frozenset(
    "y Y yes Yes YES n N no No NO on On ON off Off OFF".split()
)
# Numbers written with an exponent but no dot: YAML 1.1 (PyYAML) reads them as strings.
YAML11_EXPONENT_STRING = re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$")

_ALLOWED_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


@dataclass(frozen=True)
class Scalar:
    """How a scalar was written: its raw text and whether it was quoted."""

    raw: str
    plain: bool
    line: int
    column: int


@dataclass
class Located:
    """Loaded data plus the line (1-based) of every key and item, keyed by path."""

    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    columns: dict[Path_, int] = field(default_factory=dict)
    scalars: dict[Path_, Scalar] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int:
        """Line of `path`, or of its nearest ancestor that exists (a missing key is reported
        at its parent mapping)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def column_of(self, path: Path_) -> int:
        path = tuple(path)
        while path:
            if path in self.columns:
                return self.columns[path]
            path = path[:-1]
        return 1


class YamlProblem(Exception):
    """A YAML document that is not plain, safe spec data."""

    def __init__(self, message: str, line: int, column: int = 1, path: Path_ = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.path = path


def resolve_plain(text: str) -> Any:
    """Resolve an unquoted scalar with the YAML 1.2 core schema."""
    if _NULL.match(text):
        return None
    if _BOOL_TRUE.match(text):
        return True
    if _BOOL_FALSE.match(text):
        return False
    if _INT10.match(text):
        return int(text, 10)
    if _INT8.match(text):
        return int(text[2:], 8)
    if _INT16.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.match(text):
        return math.nan
    return text


def _check_events(text: str) -> set[tuple[int, int]]:
    """Refuse anchors, aliases and custom tags before composing (composing would expand aliases,
    and a billion-laughs document would blow up memory). Returns the positions of scalars
    explicitly tagged `!!str`, which stay strings whatever they look like."""
    documents = 0
    explicit_strings: set[tuple[int, int]] = set()
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        mark = event.start_mark
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise YamlProblem(
                    "more than one YAML document ('---'): put each FineTune in its own file", mark.line + 1, mark.column + 1
                )
        if isinstance(event, yaml.AliasEvent):
            raise YamlProblem(
                f"YAML alias '*{event.anchor}' is not allowed in specs: write the value out in full",
                mark.line + 1,
                mark.column + 1,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise YamlProblem(
                f"YAML anchor '&{anchor}' is not allowed in specs: write values out in full so reviewers see them",
                mark.line + 1,
                mark.column + 1,
            )
        tag = getattr(event, "tag", None)
        if isinstance(event, yaml.ScalarEvent) and tag == "tag:yaml.org,2002:str":
            explicit_strings.add((mark.line, mark.column))
        if tag is not None and tag != "!" and tag not in _ALLOWED_TAGS:
            raise YamlProblem(
                f"YAML tag '{tag.replace('tag:yaml.org,2002:', '!!')}' is not allowed in specs: remove it and write a plain value",
                mark.line + 1,
                mark.column + 1,
            )
    return explicit_strings


def load_located(text: str) -> Located:
    """Parse one YAML document into plain Python data with positions. Raises YamlProblem."""
    try:
        explicit_strings = _check_events(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlProblem(f"not valid YAML: {problem} (check indentation and quoting)", line, column) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {exc}", 1) from None
    located = Located(data=None)
    if node is None:
        return located
    located.lines[()] = node.start_mark.line + 1
    located.data = _convert(node, (), located, explicit_strings)
    return located


def _convert(node: yaml.Node, path: Path_, located: Located, explicit_strings: set[tuple[int, int]]) -> Any:
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(
                    "mapping keys must be plain words", key_node.start_mark.line + 1, key_node.start_mark.column + 1, path
                )
            key = key_node.value
            if key in result:
                first = located.lines.get(path + (key,), "?")
                raise YamlProblem(
                    f"duplicate key '{key}' (first set on line {first}): keep one",
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                    path + (key,),
                )
            child = path + (key,)
            located.lines[child] = key_node.start_mark.line + 1
            located.columns[child] = key_node.start_mark.column + 1
            result[key] = _convert(value_node, child, located, explicit_strings)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = path + (index,)
            located.lines[child] = item.start_mark.line + 1
            located.columns[child] = item.start_mark.column + 1
            items.append(_convert(item, child, located, explicit_strings))
        return items
    assert isinstance(node, yaml.ScalarNode)
    plain = node.style is None
    located.scalars[path] = Scalar(node.value, plain, node.start_mark.line + 1, node.start_mark.column + 1)
    if path and path not in located.lines:
        located.lines[path] = node.start_mark.line + 1
    # Ignore node.tag: PyYAML resolved it with YAML 1.1 rules. Only an explicit !!str is honoured.
    if not plain or (node.start_mark.line, node.start_mark.column) in explicit_strings:
        return node.value
    return resolve_plain(node.value)
