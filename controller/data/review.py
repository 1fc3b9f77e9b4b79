"""Expert review: a domain expert checks a random sample before any training starts.

The seed: "Have a domain expert review a random 10% of examples. If quality is below 95%, clean
more data - don't start training." Here:

- The sample is the `ceil(sampleFraction * n)` examples with the smallest
  sha256("ftops-review:" + example hash). It depends only on the examples, so it is the same
  for a given data version, nobody can choose which examples get reviewed, and when the dataset
  changes, examples that were sampled before and are still present (nearly always) stay sampled:
  only new examples need new reviews.
- Reviewers commit verdicts through a pull request to the reviews file (`reviews/<spec>.jsonl`,
  or the spec's `review.file`), one JSON object a line:
      {"example": "<example hash>", "verdict": "approve"|"reject", "reviewer": "ana", "note": "..."}
  A later line by the same reviewer replaces that reviewer's earlier verdict; an example counts
  as approved only when every reviewer's latest verdict on it approves.
- Ready when every sampled example has a verdict (coverage >= sampleFraction) and at least
  minApproval of them are approved. Reviews of examples outside the sample are shown but do not
  count: the approval rate is an estimate of quality only if the sample is random.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from controller.status import Reason
from controller.errors import PermanentError

VERDICTS = ("approve", "reject")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_REVIEW_KEYS = {"example", "verdict", "reviewer", "note"}


@dataclass(frozen=True)
class Review:
    example: str
    verdict: str
    reviewer: str
    note: str
    line: int


class ReviewsInvalid(PermanentError):
    """The reviews file has malformed lines; the message names each one."""


def parse_reviews(text: str, file: str) -> list[Review]:
    """Every line must be a review object; all problems are reported at once, by line and field."""
    reviews: list[Review] = []
    problems: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{file}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); each line is one review object")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{file}:{lineno}: a review must be a JSON object with example, verdict, reviewer and note")
            continue
        bad = False
        for key in sorted(obj.keys() - _REVIEW_KEYS):
            problems.append(f"{file}:{lineno}: {key}: unknown key; a review has only example, verdict, reviewer and note")
            bad = True
        example, verdict, reviewer, note = obj.get("example"), obj.get("verdict"), obj.get("reviewer"), obj.get("note", "")
        if not isinstance(example, str) or not _HASH.match(example):
            problems.append(f"{file}:{lineno}: example: must be the 64-hex example hash from the review sample (column 'example'), not {example!r}")
            bad = True
        if verdict not in VERDICTS:
            problems.append(f"{file}:{lineno}: verdict: must be \"approve\" or \"reject\", not {verdict!r}")
            bad = True
        if not isinstance(reviewer, str) or not reviewer.strip():
            problems.append(f"{file}:{lineno}: reviewer: write who reviewed the example (a name or handle)")
            bad = True
        if not isinstance(note, str):
            problems.append(f"{file}:{lineno}: note: must be a string (may be empty)")
            bad = True
        if not bad:
            reviews.append(Review(example, verdict, reviewer.strip(), note, lineno))
    if problems:
        raise ReviewsInvalid(f"{file}: {len(problems)} problem(s) in the reviews file; fix these lines:\n  " + "\n  ".join(problems))
    return reviews


def load_reviews(path: str | Path, display: str | None = None) -> list[Review]:
    """A missing reviews file means no reviews yet (not an error)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as exc:
        raise ReviewsInvalid(f"{display or p}: not UTF-8 text (byte {exc.start}); save the reviews file as UTF-8") from None
    return parse_reviews(text, display or str(p))


def _rank(example_hash: str) -> bytes:
    return hashlib.sha256(b"ftops-review:" + example_hash.encode()).digest()


def sample_size(n: int, fraction: float) -> int:
    return min(n, math.ceil(fraction * n - 1e-9))


def review_sample(hashes: Sequence[str], fraction: float) -> list[str]:
    """The sampled example hashes, in review order (a pure function of the set of examples)."""
    unique = sorted(set(hashes), key=_rank)
    return unique[: sample_size(len(unique), fraction)]


def verdicts(reviews: Sequence[Review]) -> dict[str, str]:
    """example hash -> "approve" | "reject", combining each reviewer's latest verdict."""
    latest: dict[tuple[str, str], str] = {}
    for r in reviews:
        latest[(r.example, r.reviewer)] = r.verdict
    combined: dict[str, str] = {}
    for (example, _), verdict in latest.items():
        if combined.get(example) != "reject":
            combined[example] = verdict
    return combined


@dataclass
class ReviewStatus:
    examples: int
    sample: int
    reviewed: int
    approved: int
    sample_fraction: float
    min_approval: float
    missing: list[str] = field(default_factory=list)  # sampled hashes without a verdict
    rejected: list[str] = field(default_factory=list)  # sampled hashes rejected
    outside_sample: int = 0  # verdicts on current examples that were not sampled
    stale: int = 0  # verdicts on examples no longer in the data (earlier versions)

    @property
    def coverage(self) -> float:
        return self.reviewed / self.examples if self.examples else 0.0

    @property
    def approval(self) -> float:
        return self.approved / self.reviewed if self.reviewed else 0.0

    @property
    def covered(self) -> bool:
        return self.examples > 0 and self.reviewed >= math.ceil(self.sample_fraction * self.examples - 1e-9)

    @property
    def approved_enough(self) -> bool:
        return self.reviewed > 0 and self.approved >= math.ceil(self.min_approval * self.reviewed - 1e-9)

    @property
    def ready(self) -> bool:
        return self.covered and self.approved_enough

    @property
    def reason(self) -> str:
        if not self.covered:
            return Reason.REVIEW_PENDING
        if not self.approved_enough:
            return Reason.REVIEW_REJECTED
        return Reason.REVIEWED

    @property
    def message(self) -> str:
        base = (f"{self.reviewed} of {self.examples} examples reviewed ({self.coverage:.1%}, {self.sample_fraction:.0%} required), "
                f"{self.approved} approved ({self.approval:.1%}, {self.min_approval:.0%} required)")
        if not self.covered:
            return f"{base}: {len(self.missing)} sampled example(s) still need a verdict; export them with `ftops data review-sample`"
        if not self.approved_enough:
            return f"{base}: quality is below the bar; fix or remove the {len(self.rejected)} rejected example(s) and clean more data before training"
        return base

    def to_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready, "reason": self.reason, "message": self.message,
            "examples": self.examples, "sample": self.sample, "reviewed": self.reviewed, "approved": self.approved,
            "rejected": len(self.rejected), "coverage": round(self.coverage, 4), "approval": round(self.approval, 4),
            "sampleFraction": self.sample_fraction, "minApproval": self.min_approval,
            "missing": len(self.missing), "outsideSample": self.outside_sample, "stale": self.stale,
        }


def review_status(hashes: Sequence[str], reviews: Sequence[Review], sample_fraction: float, min_approval: float) -> ReviewStatus:
    current = set(hashes)
    sample = review_sample(hashes, sample_fraction)
    in_sample = set(sample)
    combined = verdicts(reviews)
    status = ReviewStatus(len(current), len(sample), 0, 0, sample_fraction, min_approval)
    for h in sample:
        v = combined.get(h)
        if v is None:
            status.missing.append(h)
        else:
            status.reviewed += 1
            if v == "approve":
                status.approved += 1
            else:
                status.rejected.append(h)
    for h in combined:
        if h not in current:
            status.stale += 1
        elif h not in in_sample:
            status.outside_sample += 1
    return status


def _flatten(messages: list[dict[str, Any]], roles: tuple[str, ...]) -> str:
    out = []
    for m in messages:
        if m.get("role") in roles:
            c = m.get("content")
            text = c if isinstance(c, str) else " ".join(p.get("text", "") for p in c or () if isinstance(p, dict))
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                text += f"\n[tool call] {fn.get('name')}({fn.get('arguments')})"
            out.append(text)
    return "\n---\n".join(out)


def export_sample(
    examples: Sequence[tuple[int, str, dict[str, Any]]],
    fraction: float,
    out_dir: str | Path,
    reviews: Sequence[Review] = (),
) -> tuple[Path, Path, int]:
    """Write `review-sample.jsonl` and `review-sample.csv` for (line, hash, example) triples.

    Each row carries the example hash the verdict must name, its source line, the conversation
    and any verdict already recorded, so reviewers only work on what is new. Returns the two
    paths and how many sampled examples still need a verdict."""
    by_hash = {h: (line, ex) for line, h, ex in examples}
    sample = review_sample(list(by_hash), fraction)
    combined = verdicts(reviews)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = io.StringIO()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["example", "line", "system", "user", "assistant", "current_verdict", "verdict", "reviewer", "note"])
    todo = 0
    for h in sample:
        line, ex = by_hash[h]
        current = combined.get(h, "")
        todo += not current
        jsonl.write(json.dumps({"example": h, "line": line, "current_verdict": current, "messages": ex["messages"]}, ensure_ascii=False) + "\n")
        msgs = ex["messages"]
        writer.writerow([h, line, _flatten(msgs, ("system", "developer")), _flatten(msgs, ("user", "tool")), _flatten(msgs, ("assistant",)), current, "", "", ""])
    jpath, cpath = out / "review-sample.jsonl", out / "review-sample.csv"
    jpath.write_text(jsonl.getvalue(), encoding="utf-8")
    cpath.write_text(buf.getvalue(), encoding="utf-8")
    return jpath, cpath, todo


def import_filled_sample(path: str | Path, reviewer: str | None = None) -> list[dict[str, str]]:
    """Turn a filled-in review-sample.csv (columns example, verdict, reviewer, note) into review
    lines. Rows without a verdict are skipped (not reviewed yet); every other problem is reported
    by row and column, and nothing is returned unless all rows are valid."""
    p = Path(path)
    try:
        rows = list(csv.DictReader(p.read_text(encoding="utf-8").splitlines()))
    except FileNotFoundError:
        raise ReviewsInvalid(f"{p}: no such file") from None
    problems: list[str] = []
    out: list[dict[str, str]] = []
    for n, row in enumerate(rows, 2):  # row 1 is the header
        verdict = (row.get("verdict") or "").strip().lower()
        if not verdict:
            continue
        example = (row.get("example") or "").strip()
        who = (row.get("reviewer") or "").strip() or (reviewer or "")
        if not _HASH.match(example):
            problems.append(f"{p}:{n}: column example: must be the 64-hex example hash exported in the sample, not {example!r}")
        if verdict not in VERDICTS:
            problems.append(f"{p}:{n}: column verdict: write approve or reject, not {verdict!r}")
        if not who:
            problems.append(f"{p}:{n}: column reviewer: write who reviewed it (or pass --reviewer)")
        out.append({"example": example, "verdict": verdict, "reviewer": who, "note": (row.get("note") or "").strip()})
    if problems:
        raise ReviewsInvalid(f"{p}: {len(problems)} problem(s); nothing was imported:\n  " + "\n  ".join(problems))
    return out
