"""Safe YAML loading that remembers where every value came from.

Specs are written by people and reviewed in pull requests, so the loader is stricter than
`yaml.safe_load` and keeps line numbers for error messages:

- anchors, aliases and explicit tags (`!!python/...`, `!custom`) are refused: a spec is plain data;
- duplicate keys are refused (PyYAML silently keeps the last one);
- plain scalars are resolved with the YAML 1.2 core schema, not PyYAML's YAML 1.1 rules, so
  `no` stays the string "no" and `1e-4` is the number 0.0001. Where a YAML 1.1 reader (PyYAML,
  many CI tools) would read the same text differently, the loader remembers the raw text so
  validation can explain the trap instead of failing cryptically.

Like a compiler, the loader reports every refused construct of a document at once
(`Located.problems`) and goes on building the rest: an alias is never expanded (its value is
None, and its path is in `Located.aliased` so nothing is said about what it would have held),
a duplicate key keeps its first value, a tag is ignored. Only text that is not YAML at all stops
it (`YamlProblem` is raised then).
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
    problems: list["YamlProblem"] = field(default_factory=list)
    """Refused constructs (anchors, aliases, tags, duplicate keys, more documents), in order."""
    aliased: set[Path_] = field(default_factory=set)
    """Paths whose value was an alias, so is unknown (None stands in)."""

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
    """A YAML document that is not plain, safe spec data. `length` is how many characters of
    the line the problem covers (what a caret underlines)."""

    def __init__(self, message: str, line: int, column: int = 1, path: Path_ = (), length: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.path = path
        self.length = length


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


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: ~10x faster


def _problem(message: str, mark, path: Path_ = (), length: int = 1) -> YamlProblem:
    return YamlProblem(message, mark.line + 1, mark.column + 1, path, length)


def _span(event: yaml.Event) -> int:
    """Characters the event covers on its first line (at least 1)."""
    start, end = event.start_mark, event.end_mark
    return max(1, end.column - start.column) if end.line == start.line else 1


def _check_event(event: yaml.Event, located: Located) -> None:
    """Record anchors, aliases and custom tags. Checked on the event stream, before anything is
    built, so an alias bomb ("billion laughs") never expands."""
    if isinstance(event, yaml.AliasEvent):
        located.problems.append(_problem(f"YAML alias '*{event.anchor}' is not allowed in specs: write the value out in full",
                                         event.start_mark, length=len(event.anchor or "") + 1))
        return
    anchor = getattr(event, "anchor", None)
    if anchor is not None:
        located.problems.append(_problem(
            f"YAML anchor '&{anchor}' is not allowed in specs: write values out in full so reviewers see them",
            event.start_mark, length=len(anchor) + 1))
    tag = getattr(event, "tag", None)
    if tag is not None and tag != "!" and tag not in _ALLOWED_TAGS:
        located.problems.append(_problem(
            f"YAML tag '{tag.replace('tag:yaml.org,2002:', '!!')}' is not allowed in specs: remove it and write a plain value",
            event.start_mark, length=len(tag.replace("tag:yaml.org,2002:", "!!"))))


def load_located(text: str) -> Located:
    """Parse one YAML document into plain Python data with positions, in one pass over the
    parser's events (no composer: it would expand aliases and resolve with YAML 1.1 rules).
    Refused constructs are collected in `problems`; raises YamlProblem only for text that is
    not YAML at all."""
    located = Located(data=None)
    try:
        events = iter(yaml.parse(text, Loader=_Loader))
        documents = 0
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    located.problems.append(_problem(
                        "more than one YAML document ('---'): put each FineTune in its own file", event.start_mark, length=3))
                    break
                first = next(events)
                if isinstance(first, yaml.DocumentEndEvent):
                    continue
                located.lines[()] = first.start_mark.line + 1
                located.data = _build(first, events, (), located)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlProblem(f"not valid YAML: {problem} (check indentation and quoting)", line, column) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {exc}", 1) from None
    return located


def _skip(event: yaml.Event, events) -> None:
    """Consume the rest of a node whose value is not kept (a duplicate key's, a complex key)."""
    if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
        depth = 1
        for inner in events:
            if isinstance(inner, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
            elif isinstance(inner, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
                if depth == 0:
                    return


def _build(event: yaml.Event, events, path: Path_, located: Located) -> Any:
    _check_event(event, located)
    if isinstance(event, yaml.AliasEvent):
        located.aliased.add(path)
        return None
    if isinstance(event, yaml.MappingStartEvent):
        result: dict[str, Any] = {}
        for key_event in events:
            if isinstance(key_event, yaml.MappingEndEvent):
                return result
            _check_event(key_event, located)
            if not isinstance(key_event, yaml.ScalarEvent):
                located.problems.append(_problem("mapping keys must be plain words", key_event.start_mark, path))
                _skip(key_event, events)
                _skip(next(events), events)
                continue
            key = key_event.value
            child = path + (key,)
            if key in result:
                located.problems.append(_problem(
                    f"duplicate key '{key}' (first set on line {located.lines.get(child, '?')}): keep one",
                    key_event.start_mark, child, length=len(key)))
                value_event = next(events)
                _check_event(value_event, located)
                _skip(value_event, events)
                continue
            located.lines[child] = key_event.start_mark.line + 1
            located.columns[child] = key_event.start_mark.column + 1
            result[key] = _build(next(events), events, child, located)
        return result
    if isinstance(event, yaml.SequenceStartEvent):
        items: list[Any] = []
        for item_event in events:
            if isinstance(item_event, yaml.SequenceEndEvent):
                return items
            child = path + (len(items),)
            located.lines[child] = item_event.start_mark.line + 1
            located.columns[child] = item_event.start_mark.column + 1
            items.append(_build(item_event, events, child, located))
        return items
    if not isinstance(event, yaml.ScalarEvent):
        raise _problem(f"unexpected YAML structure ({type(event).__name__})", event.start_mark, path)
    plain = event.style is None or event.style == ""
    mark = event.start_mark
    located.scalars[path] = Scalar(event.value, plain, mark.line + 1, mark.column + 1)
    if path and path not in located.lines:
        located.lines[path] = mark.line + 1
    # Resolve with YAML 1.2 rules ourselves; only an explicit !!str keeps a plain scalar a string.
    if not plain or event.tag == "tag:yaml.org,2002:str":
        return event.value
    return resolve_plain(event.value)
