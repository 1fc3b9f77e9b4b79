"""Scoring one output against one reference: pure Python, no model, no I/O.

Task metrics (the spec's `evaluation.task.metric` chooses one):
- `exact_match`: 1 when the normalised output equals the normalised reference. Normalisation is
  the usual one for QA benchmarks (Unicode NFKC, lower case, punctuation and the articles
  a/an/the removed, whitespace collapsed), so "The answer." and "answer" agree; whether the output
  has the required *shape* is format compliance's job, not this metric's.
- `json_field_match`: both sides parsed as JSON objects; the share of the chosen fields (spec
  `fields`, else every field of the reference) whose values are equal. An output that is not a JSON
  object scores 0.
- `token_f1`: harmonic mean of token precision and recall (bag of normalised tokens).
- `rouge_l`: F-measure of the longest common subsequence of normalised tokens.

Format compliance checks the *raw* output (only surrounding whitespace stripped) against a JSON
Schema (jsonschema, the schema's own draft) or a regex that must match the whole output.
"""
from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

TASK_METRICS = ("exact_match", "json_field_match", "token_f1", "rouge_l")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = text.translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def contains(text: str, phrase: str) -> bool:
    """`phrase` appears in `text` as a run of whole normalised tokens (an empty phrase only in an
    empty text)."""
    out, want = tokens(text), tokens(phrase)
    if not want:
        return not out
    return any(out[i : i + len(want)] == want for i in range(len(out) - len(want) + 1))


def exact_match(output: str, reference: str) -> float:
    return 1.0 if normalize(output) == normalize(reference) else 0.0


def token_f1(output: str, reference: str) -> float:
    out, ref = tokens(output), tokens(reference)
    if not out and not ref:
        return 1.0
    common = sum((Counter(out) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(out), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(output: str, reference: str) -> float:
    out, ref = tokens(output), tokens(reference)
    if not out and not ref:
        return 1.0
    lcs = _lcs(out, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(out), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def parse_json_object(text: str) -> dict | None:
    """The output as a JSON object, allowing one surrounding ```json fence (common in chat models)."""
    text = (text or "").strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.S)
    if fence:
        text = fence.group(1)
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def json_field_scores(output: str, reference: str, fields: Sequence[str] = ()) -> dict[str, float]:
    """Per-field 1/0 for one example; every field counts 0 when the output is not a JSON object."""
    ref = parse_json_object(reference)
    if ref is None:
        raise ValueError(f"reference answer is not a JSON object, so json_field_match cannot score it: {reference[:80]!r}")
    names = list(fields) or sorted(ref)
    out = parse_json_object(output)
    return {f: 1.0 if out is not None and f in out and out[f] == ref.get(f) else 0.0 for f in names}


def json_field_match(output: str, reference: str, fields: Sequence[str] = ()) -> float:
    scores = json_field_scores(output, reference, fields)
    return sum(scores.values()) / len(scores) if scores else 0.0


def scorer(metric: str, fields: Sequence[str] = ()) -> Callable[[str, str], float]:
    """The per-example scoring function for a task metric name."""
    if metric == "exact_match":
        return exact_match
    if metric == "token_f1":
        return token_f1
    if metric == "rouge_l":
        return rouge_l
    if metric == "json_field_match":
        return lambda o, r: json_field_match(o, r, fields)
    raise ValueError(f"unknown task metric {metric!r}; expected one of {', '.join(TASK_METRICS)}")


def mean(values: Sequence[float]) -> float:
    """Mean, NaN for no values (an empty set must not look like a perfect score)."""
    return sum(values) / len(values) if values else math.nan


# ---------------------------------------------------------------------------- format compliance


@dataclass(frozen=True)
class FormatResult:
    ok: bool
    reason: str = ""


Checker = Callable[[str], FormatResult]
"""An output -> whether it complies with the spec's format, and why not."""


def format_checker(json_schema: dict | None = None, regex: str | None = None) -> Checker:
    """A function output -> FormatResult for a JSON Schema or a whole-output regex."""
    if json_schema is not None:
        from jsonschema import exceptions, validators

        cls = validators.validator_for(json_schema)
        try:
            cls.check_schema(json_schema)
        except exceptions.SchemaError as exc:
            raise ValueError(f"evaluation.format: the JSON Schema is invalid: {exc.message}") from None
        validator = cls(json_schema)

        def check_schema(output: str) -> FormatResult:
            try:
                value = json.loads(output.strip())
            except (json.JSONDecodeError, ValueError) as exc:
                return FormatResult(False, f"not JSON: {exc.msg if hasattr(exc, 'msg') else exc}")
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
            if errors:
                err = errors[0]
                where = "/".join(str(p) for p in err.absolute_path) or "<root>"
                return FormatResult(False, f"{where}: {err.message}")
            return FormatResult(True)

        return check_schema
    if regex is not None:
        pattern = re.compile(regex)

        def check_regex(output: str) -> FormatResult:
            if pattern.fullmatch(output.strip()):
                return FormatResult(True)
            return FormatResult(False, f"does not match /{regex}/")

        return check_regex
    raise ValueError("format_checker needs a json_schema or a regex")


def win_rates(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, float]:
    """Per-example comparison: share of inputs where ours scored higher, equal, lower."""
    if len(ours) != len(theirs):
        raise ValueError("win_rates needs scores for the same inputs")
    n = len(ours)
    if n == 0:
        return {"win": math.nan, "tie": math.nan, "loss": math.nan}
    win = sum(1 for a, b in zip(ours, theirs) if a > b)
    loss = sum(1 for a, b in zip(ours, theirs) if a < b)
    return {"win": win / n, "tie": (n - win - loss) / n, "loss": loss / n}


def as_number(value: Any) -> float | None:
    """A JSON-safe float (NaN/inf become None in report.json, which JSON cannot hold)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
