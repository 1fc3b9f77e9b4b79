"""Read rendered template text fast: the YAML subset our templates write.

Every value in a template reaches the YAML through `tojson`, so each line is `key: <one JSON
document>` or a list item of one; an indentation parser plus json.loads reads that ~10x faster
than PyYAML. Anything outside the subset goes to PyYAML's safe loader (tests hold the two to
the same result for every template)."""
from __future__ import annotations

import json
import re
from typing import Any

import yaml


def load_manifests(text: str) -> list[dict]:
    """Parse rendered template text. Our templates write block YAML whose every value is a
    one-line JSON document (tojson), so a small indentation parser plus json.loads reads them
    ~10x faster than PyYAML. Anything outside that subset goes to PyYAML's safe loader, and
    tests check both give the same result for every template."""
    try:
        return [doc for doc in (_fast_load(chunk) for chunk in _documents(text)) if doc is not None]
    except _NotSubset:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return [doc for doc in yaml.load_all(text, Loader=loader) if doc is not None]


class _NotSubset(Exception):
    pass


_KEY_LINE = re.compile(r'^([A-Za-z_][A-Za-z0-9_.-]*|"(?:[^"\\]|\\.)*"):(?: (.*))?$')
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9./_-]*$")
_YAML11_WORDS = {w for base in ("yes", "no", "true", "false", "on", "off", "null") for w in (base, base.title(), base.upper())}


def _documents(text: str) -> list[list[tuple[int, str]]]:
    docs: list[list[tuple[int, str]]] = [[]]
    for raw in text.split("\n"):
        if not raw.strip():
            continue
        if raw == "---":
            docs.append([])
            continue
        content = raw.lstrip(" ")
        if content.startswith("#") or "\t" in raw[: len(raw) - len(content)]:
            raise _NotSubset
        docs[-1].append((len(raw) - len(content), content))
    return [d for d in docs if d]


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    text = text.rstrip()
    if _PLAIN.match(text) and text not in _YAML11_WORDS:
        return text
    raise _NotSubset


def _fast_load(lines: list[tuple[int, str]]) -> Any:
    pos = 0

    def block(indent: int) -> Any:
        nonlocal pos
        if lines[pos][1].startswith("- "):
            seq = []
            while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
                rest = lines[pos][1][2:]
                if _KEY_LINE.match(rest):
                    lines[pos] = (indent + 2, rest)
                    seq.append(block(indent + 2))
                else:
                    seq.append(_scalar(rest))
                    pos += 1
            return seq
        mapping: dict = {}
        while pos < len(lines) and lines[pos][0] == indent and not lines[pos][1].startswith("- "):
            m = _KEY_LINE.match(lines[pos][1])
            if not m:
                raise _NotSubset
            key = json.loads(m.group(1)) if m.group(1).startswith('"') else m.group(1)
            if key in mapping:
                raise _NotSubset
            pos += 1
            if m.group(2) is not None and m.group(2).strip():
                mapping[key] = _scalar(m.group(2))
            elif pos < len(lines) and (lines[pos][0] > indent or (lines[pos][0] == indent and lines[pos][1].startswith("- "))):
                mapping[key] = block(lines[pos][0])
            else:
                mapping[key] = None
        return mapping

    result = block(lines[0][0])
    if pos != len(lines):
        raise _NotSubset
    return result
