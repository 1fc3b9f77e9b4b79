"""Expert review: the sample, the reviews file, gating at 94% vs 95%, and changed datasets."""
from __future__ import annotations

import csv
import json

import pytest
from data_helpers import diverse_examples, run_ftops, write_lines

from controller.data.review import (
    Review,
    ReviewsInvalid,
    load_reviews,
    parse_reviews,
    review_sample,
    review_status,
)


def hashes(n: int, tag: str = "") -> list[str]:
    import hashlib

    return [hashlib.sha256(f"{tag}{i}".encode()).hexdigest() for i in range(n)]


def verdicts_for(sample: list[str], approve: int, reviewer: str = "ana") -> list[Review]:
    return [Review(h, "approve" if i < approve else "reject", reviewer, "", i + 1) for i, h in enumerate(sample)]


@pytest.mark.parametrize("approve, ready, reason", [(94, False, "ReviewRejected"), (95, True, "Reviewed")])
def test_gate_at_94_vs_95_percent(approve, ready, reason):
    data = hashes(1000)
    sample = review_sample(data, 0.10)
    assert len(sample) == 100
    status = review_status(data, verdicts_for(sample, approve), 0.10, 0.95)
    assert (status.ready, status.reason) == (ready, reason)
    assert status.approval == approve / 100 and status.coverage == 0.10


def test_coverage_must_reach_the_sample_fraction():
    data = hashes(1000)
    sample = review_sample(data, 0.10)
    status = review_status(data, verdicts_for(sample[:99], 99), 0.10, 0.95)
    assert not status.ready and status.reason == "ReviewPending" and len(status.missing) == 1
    # Verdicts on examples outside the sample do not count towards coverage.
    outside = [h for h in data if h not in set(sample)][:50]
    status = review_status(data, verdicts_for(sample[:99], 99) + verdicts_for(outside, 50, "bo"), 0.10, 0.95)
    assert not status.ready and status.outside_sample == 50
    # The spec can ask for more.
    status = review_status(data, verdicts_for(sample, 100), 0.20, 0.95)
    assert not status.ready and status.sample == 200


def test_sample_is_stable_and_a_changed_dataset_needs_reviews_only_for_new_examples():
    data = hashes(1000)
    sample = review_sample(data, 0.10)
    assert review_sample(list(reversed(data)), 0.10) == sample  # order of the file does not matter
    reviews = verdicts_for(sample, 100)
    # 100 examples added, 20 old ones removed: the old reviews still count where they apply.
    changed = data[20:] + hashes(100, "new")
    status = review_status(changed, reviews, 0.10, 0.95)
    new_sample = review_sample(changed, 0.10)
    assert len(new_sample) == 108
    still = set(new_sample) & set(sample)
    assert status.reviewed == len(still) and len(status.missing) == 108 - len(still)
    assert all(h in set(changed) - set(data) or h not in set(sample) for h in status.missing)
    assert len(status.missing) < 20  # a handful of new examples, not a new 10%
    assert status.stale == sum(1 for h in sample if h not in set(changed))


def test_latest_verdict_per_reviewer_and_any_reject_wins():
    data = hashes(100)
    sample = review_sample(data, 0.10)
    reviews = verdicts_for(sample, 10)
    h = sample[0]
    reviews += [Review(h, "reject", "ana", "typo in answer", 50), Review(h, "approve", "ana", "fixed", 51)]
    assert review_status(data, reviews, 0.10, 0.95).ready
    reviews.append(Review(h, "reject", "bo", "wrong label", 52))
    status = review_status(data, reviews, 0.10, 0.95)
    assert not status.ready and status.rejected == [h]


def test_reviews_file_errors_name_line_and_field(tmp_path):
    good = hashes(1)[0]
    text = "\n".join([
        json.dumps({"example": good, "verdict": "approve", "reviewer": "ana", "note": ""}),
        "not json",
        json.dumps({"example": "abc", "verdict": "ok", "reviewer": "", "extra": 1}),
    ])
    with pytest.raises(ReviewsInvalid) as err:
        parse_reviews(text, "reviews/s.jsonl")
    msg = str(err.value)
    assert "reviews/s.jsonl:2: not valid JSON" in msg
    for fragment in ("reviews/s.jsonl:3: extra: unknown key", "reviews/s.jsonl:3: example:", "reviews/s.jsonl:3: verdict:", "reviews/s.jsonl:3: reviewer:"):
        assert fragment in msg
    assert load_reviews(tmp_path / "missing.jsonl") == []


SPEC = """apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata:
  name: reviewed
  owner: data-team
spec:
  baseModel:
    uri: models/none
  dataset:
    path: data/reviewed.jsonl
    review:
      file: reviews/custom.jsonl
      sampleFraction: 0.10
      minApproval: 0.95
  method:
    type: lora
"""


def test_cli_review_sample_and_status_with_a_spec(git_repo, tmp_path):
    root = git_repo.root
    write_lines(root / "data" / "reviewed.jsonl", diverse_examples(400))
    git_repo.write("specs/reviewed.yaml", SPEC)
    work = tmp_path / "work"
    proc = run_ftops("data", "review-status", "specs/reviewed.yaml", "--workdir", str(work), cwd=root)
    assert proc.returncode == 1 and "ReviewPending" in proc.stdout, proc.stdout + proc.stderr
    proc = run_ftops("data", "review-sample", "specs/reviewed.yaml", "--workdir", str(work), "--out", str(tmp_path / "out"), "--output", "json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["needVerdict"] == 40
    rows = list(csv.DictReader(open(out["csv"], encoding="utf-8")))
    sample = [json.loads(x) for x in open(out["jsonl"], encoding="utf-8")]
    assert [r["example"] for r in rows] == [s["example"] for s in sample] and len(rows) == 40
    assert rows[0]["user"].startswith("ticket ") and rows[0]["verdict"] == ""
    # An expert fills in the CSV: 38 approved, 2 rejected (95%), and imports it into review.file.
    for i, r in enumerate(rows):
        r["verdict"] = "approve" if i < 38 else "reject"
    filled = tmp_path / "filled.csv"
    with open(filled, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:39] + [{**rows[39], "verdict": "maybe"}])
    proc = run_ftops("data", "review-import", str(filled), "specs/reviewed.yaml", "--reviewer", "ana", cwd=root)
    assert proc.returncode == 1 and "filled.csv:41: column verdict: write approve or reject, not 'maybe'" in proc.stderr
    assert not (root / "reviews" / "custom.jsonl").exists()
    with open(filled, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    proc = run_ftops("data", "review-import", str(filled), "specs/reviewed.yaml", "--reviewer", "ana", cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = (root / "reviews" / "custom.jsonl").read_text().splitlines()
    assert len(lines) == 40 and json.loads(lines[0]) == {"example": rows[0]["example"], "verdict": "approve", "reviewer": "ana", "note": ""}
    proc = run_ftops("data", "review-status", "specs/reviewed.yaml", "--workdir", str(work), "--output", "json", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads(proc.stdout)
    assert status["ready"] and status["approved"] == 38 and status["reviews"] == "reviews/custom.jsonl"
    # One more rejection drops it to 37/40 = 92.5%.
    git_repo.write("reviews/custom.jsonl", "\n".join(lines[:37] + [lines[37].replace("approve", "reject")] + lines[38:]) + "\n")
    proc = run_ftops("data", "review-status", "specs/reviewed.yaml", "--workdir", str(work), cwd=root)
    assert proc.returncode == 1 and "ReviewRejected" in proc.stdout
