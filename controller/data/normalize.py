"""Normalisation and the example hash.

`example_hash` is the single identity of a chat example across ftops: dedupe compares it, the
split is keyed on it, reviewers' verdicts are bound to it, and evaluation uses it to prove that no
test example was trained on. Every caller must use this function (never its own JSON dump) so
that the same example always has the same hash.

Normalisation is deliberately conservative: it removes differences a reader cannot see and a
model should not learn (Unicode composition, line endings, invisible characters, trailing
spaces, runs of blank lines) and keeps everything that carries meaning (inner spacing,
indentation, case, punctuation). It is idempotent: normalising a normalised example changes
nothing, so a prepared file hashes to the same values as its source.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

import orjson

NORMALIZATION_VERSION = "nfc-ws-1"
"""Recorded in manifests: a change to the rules below must bump it (hashes would change)."""

# Space separators other than U+0020 become an ordinary space; zero-width characters that only
# carry formatting (ZWSP, word joiner, BOM) are removed. ZWJ/ZWNJ stay: they change meaning in
# some scripts and emoji.
_SPACES = {ord(c): " " for c in "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"}
_INVISIBLE = {ord(c): None for c in "\u200b\u2060\ufeff"}
_TRANSLATE = {**_SPACES, **_INVISIBLE}
_TRAILING = re.compile(r"[ \t\f\v]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC, `\\n` line endings, no trailing spaces on a line, at most one blank line in a row,
    no leading or trailing whitespace. Fast path for plain ASCII, which most data is."""
    if text.isascii() and text.isprintable():
        return text.strip()  # no control characters: no line endings, tabs or blank lines to fix
    if not text.isascii():
        text = unicodedata.normalize("NFC", text).translate(_TRANSLATE)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if " \n" in text or "\t\n" in text or "\f" in text or "\v" in text:
        text = _TRAILING.sub("", text)
    text = text.strip()
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text


def _normalize_content(content: Any) -> Any:
    if isinstance(content, str):
        return normalize_text(content)
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part = {**part, "text": normalize_text(part["text"])}
            parts.append(part)
        return parts
    return content


def normalize_message(message: dict[str, Any]) -> dict[str, Any]:
    out = dict(message)
    if "content" in out:
        out["content"] = _normalize_content(out["content"])
    if isinstance(out.get("name"), str):
        out["name"] = normalize_text(out["name"])
    calls = out.get("tool_calls")
    if isinstance(calls, list):
        fixed = []
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                # Arguments keep their exact spelling (the model learns to emit it); only NFC.
                args = fn["arguments"]
                if not args.isascii():
                    args = unicodedata.normalize("NFC", args)
                call = {**call, "function": {**fn, "arguments": args}}
            fixed.append(call)
        out["tool_calls"] = fixed
    return out


def normalize_example(example: dict[str, Any]) -> dict[str, Any]:
    """A new dict; the input is not modified. Keys other than `messages` are kept as they are."""
    out = dict(example)
    messages = example.get("messages")
    if isinstance(messages, list):
        out["messages"] = [normalize_message(m) if isinstance(m, dict) else m for m in messages]
    return out


def normalize_parsed(example: dict[str, Any]) -> dict[str, Any]:
    """`normalize_example` for an object the caller has just parsed and owns: plain string
    contents are rewritten in place (the hot path of a 200k-line check), anything richer goes
    through `normalize_message`. Same result as `normalize_example`."""
    messages = example["messages"]
    for i, m in enumerate(messages):
        content = m.get("content")
        if content.__class__ is str and len(m) == 2:
            m["content"] = normalize_text(content)
        else:
            messages[i] = normalize_message(m)
    return example


def canonical_json(example: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8. orjson is fast; the rare value it cannot
    encode (an integer beyond 64 bits) falls back to the standard library with the same layout."""
    try:
        return orjson.dumps(example, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(example, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def hash_normalized(normalized: dict[str, Any]) -> str:
    """sha256 of an example that is already normalised (saves a second normalisation pass)."""
    return hashlib.sha256(canonical_json(normalized)).hexdigest()


def example_hash(example: dict[str, Any]) -> str:
    """The identity of a chat example: sha256 hex of the canonical JSON of its normalised form."""
    return hash_normalized(normalize_example(example))
