"""Reconcile many specs three ways, in the same run:

- cold: a fresh controller, nothing cached or recorded (every spec is loaded, its data pulled
  from git and prepared, its status and ledger records written);
- no-op: the same commit again (the steady state of a polling controller);
- one change: a commit that edits one spec.

Every spec shares one small dataset committed to git and has no expert reviews yet, so each
one stops at DataReady=False (ReviewPending): the benchmark measures the controller, not
training. It runs at two sizes so the one-change pass can be compared across them.
Targets: no-op <= 1 s and <= 5% of cold at 10,000 specs; one-change cost independent of N.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import report
from controller.backends.local import LocalBackend
from controller.reconcile import ControllerConfig, Reconciler

SIZES = [int(n) for n in os.environ.get("FTOPS_BENCH_RECONCILE_SIZES", "300,3000").split(",")]
"""The cold pass prepares every spec's data (about 0.1 s each on 2 cores), so 10,000 specs take a
quarter of an hour cold; set FTOPS_BENCH_RECONCILE_SIZES=1000,10000 for the full-size run."""
ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}

SPEC = """apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {{name: {name}, owner: team-{team}}}
spec:
  baseModel: {{uri: hf://org/model, revision: {rev}}}
  dataset: {{path: data/tickets.jsonl}}
  method: {{type: lora, r: 8}}
  training: {{epochs: 1}}
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True, env=ENV).stdout.strip()


def make_repo(root: Path, n: int) -> None:
    from controller.tiny.task import generate_examples, write_jsonl

    git(root, "init", "-q", "-b", "main")
    (root / "specs").mkdir()
    write_jsonl(root / "data" / "tickets.jsonl", generate_examples(250, seed=1))
    for i in range(n):
        (root / "specs" / f"s{i:05d}.yaml").write_text(SPEC.format(name=f"s{i:05d}", team=i % 20, rev="a" * 40))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")


def timed(reconciler: Reconciler) -> float:
    started = time.perf_counter()
    result = reconciler.reconcile_once()
    assert result.error is None, result.error
    return time.perf_counter() - started


def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        make_repo(root, n)
        home = Path(tmp) / "home"
        reconciler = Reconciler(ControllerConfig(repo=str(root), home=home), LocalBackend(home / "runs"))
        cold = timed(reconciler)
        statuses = reconciler.load_statuses()
        assert len(statuses) == n and all(s.phase == "Stalled" for s in statuses.values())
        noop = min(timed(reconciler) for _ in range(3))
        spec = root / "specs" / "s00007.yaml"
        spec.write_text(spec.read_text().replace("epochs: 1", "epochs: 2"))
        git(root, "commit", "-q", "-am", "one change")
        one = timed(reconciler)
        assert reconciler.load_statuses()["s00007"].run_id != statuses["s00007"].run_id
        return {"cold": cold, "noop": noop, "one": one}


def main() -> None:
    results = {n: measure(n) for n in SIZES}
    rows = []
    for n, r in results.items():
        rows.append((f"{n:,} specs: cold", f"{r['cold']:.2f}s ({n / r['cold']:,.0f} specs/s)"))
        rows.append((f"{n:,} specs: no-op", f"{r['noop']:.3f}s = {r['noop'] / r['cold']:.2%} of cold (target <= 1 s and 5%)"))
        rows.append((f"{n:,} specs: one change", f"{r['one']:.3f}s"))
    if len(results) > 1:
        small, large = min(results), max(results)
        rows.append((f"one change at {large:,} / at {small:,}",
                     f"{results[large]['one'] / results[small]['one']:.2f}x for {large / small:.0f}x the specs (target ~1x)"))
    report("reconcile passes (specs stop at DataReady: no training)", rows)
