"""The train/test split and the leak check.

The split is a pure function of the data: groups of examples (a near-duplicate cluster, or one
example on its own) are ordered by sha256(seed + the group's smallest example hash), with the
seed taken from the data hash (the md5 DVC pins), and whole groups go to test in that order
until the test set holds round(test_fraction * n) examples. A group that would overshoot is
left in train and the next one is tried, so the fraction is met exactly whenever the groups
allow. The same data therefore always gives the same split, on any machine, and a cluster of
near-duplicates never straddles the boundary.

`check_leaks` is the independent safety net: it looks for test examples that appear in train,
exactly (same example hash) or as a near-duplicate (fresh LSH candidates over both sides, then
the exact Jaccard), and `prepare` refuses to write a split that leaks.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

from controller.errors import PermanentError


@dataclass(frozen=True)
class Split:
    train: list[int]  # indices into the caller's list, in the original order
    test: list[int]
    target_test: int

    @property
    def test_fraction(self) -> float:
        total = len(self.train) + len(self.test)
        return len(self.test) / total if total else 0.0


def split_groups(groups: Sequence[Sequence[int]], hashes: Sequence[str], test_fraction: float, seed: str) -> Split:
    """Assign whole groups to train or test. `groups` must partition range(len(hashes))."""
    n = sum(len(g) for g in groups)
    target = round(test_fraction * n)
    seed_bytes = seed.encode()
    sha256 = hashlib.sha256
    keyed = sorted(
        (sha256(seed_bytes + (hashes[g[0]] if len(g) == 1 else min(hashes[i] for i in g)).encode()).digest(), k)
        for k, g in enumerate(groups)
    )
    test: list[int] = []
    for _, k in keyed:
        if len(test) == target:
            break
        group = groups[k]
        if len(test) + len(group) <= target:
            test.extend(group)
    in_test = bytearray(n)
    for i in test:
        in_test[i] = 1
    return Split(train=[i for i in range(n) if not in_test[i]], test=sorted(test), target_test=target)


def deterministic_split(hashes: Sequence[str], clusters: Sequence[Sequence[int]], test_fraction: float, seed: str) -> Split:
    """Split n examples; `clusters` lists the groups of two or more that must stay together."""
    in_cluster = {i for c in clusters for i in c}
    groups = [list(c) for c in clusters] + [(i,) for i in range(len(hashes)) if i not in in_cluster]
    return split_groups(groups, hashes, test_fraction, seed)


@dataclass
class LeakReport:
    exact: list[tuple[int, int]] = field(default_factory=list)  # (test index, train index)
    near: list[tuple[int, int, float]] = field(default_factory=list)  # (test, train, similarity)

    @property
    def clean(self) -> bool:
        return not self.exact and not self.near

    def to_dict(self, test_lines: Sequence[int] | None = None, train_lines: Sequence[int] | None = None) -> dict:
        def tl(i: int, lines: Sequence[int] | None) -> int:
            return lines[i] if lines is not None else i

        return {
            "passed": self.clean,
            "exact": [{"test": tl(t, test_lines), "train": tl(r, train_lines)} for t, r in self.exact],
            "near": [{"test": tl(t, test_lines), "train": tl(r, train_lines), "similarity": s} for t, r, s in self.near],
        }


def check_leaks(
    train_hashes: Sequence[str],
    train_texts: Sequence[str],
    test_hashes: Sequence[str],
    test_texts: Sequence[str],
    threshold: float,
    signatures: tuple[Any, Any] | None = None,
) -> LeakReport:
    """Find every test example that is in train, exactly or as a near-duplicate.

    Candidates come from a band layout tuned for a lower threshold than the spec's (more
    candidates, fewer misses) than the one dedupe used, so a bug in one does not hide in the
    other; each candidate is then decided by the exact Jaccard. `signatures` (test, train) may
    pass MinHash signatures already computed for these texts (they are a pure function of the text)."""
    from controller.data import dedupe

    report = LeakReport()
    train_at = {h: i for i, h in enumerate(train_hashes)}
    for t, h in enumerate(test_hashes):
        if h in train_at:
            report.exact.append((t, train_at[h]))
    if not test_texts or not train_texts:
        return report
    texts = list(test_texts) + list(train_texts)
    nt = len(test_texts)
    if signatures is not None:
        import numpy as np

        sig = np.concatenate(signatures)
    else:
        sig = dedupe.signatures(texts)
    bands, rows = dedupe.lsh_params(max(0.5, threshold - 0.1))
    seen: set[tuple[int, int]] = set()
    for i, j in dedupe.candidate_pairs(sig, bands, rows):
        if i < nt <= j:  # test-train pairs only (test indices come first)
            pair = (i, j - nt)
            if pair in seen:
                continue
            seen.add(pair)
            sim = dedupe.jaccard(texts[i], texts[j])
            if sim >= threshold:
                report.near.append((pair[0], pair[1], round(sim, 4)))
    report.near.sort()
    return report


class LeakError(PermanentError):
    """The split would put a test example (or its near-twin) into train. Never written."""


def require_no_leaks(report: LeakReport, source: str, test_lines: Sequence[int], train_lines: Sequence[int]) -> None:
    if report.clean:
        return
    items = [f"test line {test_lines[t]} = train line {train_lines[r]}" for t, r in report.exact[:5]]
    items += [f"test line {test_lines[t]} ~ train line {train_lines[r]} (similarity {s})" for t, r, s in report.near[:5]]
    raise LeakError(
        f"{source}: the split leaks {len(report.exact)} exact and {len(report.near)} near-duplicate test "
        f"example(s) into train ({'; '.join(items)}). Nothing was written. This is a bug in ftops' split: "
        "please report it with this message."
    )
