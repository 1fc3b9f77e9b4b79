"""Validate + plan over 10,000 specs: a cold pass (nothing cached) against a warm pass (the
blob cache filled by an earlier pass, as in a long-running controller or a repeated plan).
Target: the warm pass over unchanged specs costs under 5% of the cold one.

And what a CI job sees: `ftops plan` runs in a fresh process each time, so the in-memory cache
is always cold there. The spec cache on disk (controller.source.SpecDiskCache, restored by the
CI cache) makes that fresh process warm: measured as a cold fresh process (empty cache folder)
against a fresh process over the folder the first one filled, both in child processes.

    .venv/bin/python -m bench spec            (FTOPS_BENCH_SPECS=2000 for a quicker run)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import report
from controller.catalog import load_operator_config
from controller.plan import plan_change
from controller.render import template_version
from controller.source import GitSource, SpecCache, load_specs_at

N_SPECS = int(os.environ.get("FTOPS_BENCH_SPECS", "10000"))

SPEC = """apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata:
  name: {name}
  owner: team-{team}
spec:
  needs: [consistentFormat, domainBehavior]
  baseModel: {{uri: hf://org/model, revision: {rev}, parametersBillions: 7}}
  dataset: {{path: data/{name}.jsonl, testFraction: 0.15}}
  method: {{type: lora, r: {r}}}
  training: {{epochs: 3, learningRate: 2.0e-4, batchSize: 8}}
  hardware: {{gpuType: a100-80gb}}
  evaluation:
    task: {{metric: exact_match, min: 0.9}}
    format: {{regex: '^\\\\{{.*\\\\}}$'}}
  serving: {{replicas: 2}}
  budget: {{maxUsd: 500}}
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(root: Path, n: int) -> tuple[str, str]:
    git(root, "init", "-q", "-b", "main")
    (root / "specs").mkdir()
    (root / "data").mkdir()
    for i in range(n):
        name = f"spec-{i:05d}"
        (root / "specs" / f"{name}.yaml").write_text(SPEC.format(name=name, team=i % 50, rev="a" * 40, r=8 + i % 4))
        (root / "data" / f"{name}.jsonl.dvc").write_text(
            f"outs:\n- md5: '{i:032x}'\n  size: {1000000 + i}\n  path: {name}.jsonl\nmeta:\n  ftops:\n    examples: {1000 + i}\n"
        )
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "base"], cwd=root, check=True, env=env)
    base = git(root, "rev-parse", "HEAD")
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "head"], cwd=root, check=True, env=env)
    return base, git(root, "rev-parse", "HEAD")


def one_pass(root: Path, base: str, head: str, cache: SpecCache, source: GitSource | None = None) -> int:
    """One validate + plan pass. Without `source` a fresh GitSource lists the trees again (only
    parsed specs are cached); with one, its per-commit tree cache is reused too, as in the
    long-running controller polling an unchanged commit."""
    operator = load_operator_config()
    gpus = sorted(operator.gpus)
    own = source is None
    source = source or GitSource(root)
    try:
        b = load_specs_at(source, base, cache, gpus)
        h = load_specs_at(source, head, cache, gpus)
        plan = plan_change(b, h, operator, template_version(), base, head)
        invalid = sum(1 for s in h.values() if not s.loaded.ok)
        assert invalid == 0, f"{invalid} invalid specs in the benchmark repo"
        return len(plan.specs) + plan.unchanged
    finally:
        if own:
            source.close()


def fresh_process(root: Path, base: str, head: str, cache_dir: Path | None) -> tuple[float, float]:
    """(seconds of the validate + plan pass, seconds of the whole process) in a new interpreter."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.bench_spec", "--one-pass", str(root), base, head, str(cache_dir or "")],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])["pass"], time.perf_counter() - started


def _child(root: str, base: str, head: str, cache_dir: str) -> None:
    started = time.perf_counter()
    cache = SpecCache(Path(cache_dir) if cache_dir else None)
    one_pass(Path(root), base, head, cache)
    cache.save()
    print(json.dumps({"pass": time.perf_counter() - started}))


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        base, head = make_repo(root, N_SPECS)
        print(f"built a repo with {N_SPECS:,} specs in {time.perf_counter() - started:.1f}s")
        cache = SpecCache()
        started = time.perf_counter()
        planned = one_pass(root, base, head, cache)
        cold = time.perf_counter() - started
        warm_times = []
        for _ in range(3):
            started = time.perf_counter()
            one_pass(root, base, head, cache)
            warm_times.append(time.perf_counter() - started)
        warm = min(warm_times)
        source = GitSource(root)
        one_pass(root, base, head, cache, source)
        steady = min(_timed(lambda: one_pass(root, base, head, cache, source)) for _ in range(3))
        source.close()
        disk = root.parent / "spec-cache"
        fresh_cold, fresh_cold_total = fresh_process(root, base, head, disk)  # fills the folder, as the first CI job does
        fresh_warm, fresh_warm_total = min(fresh_process(root, base, head, disk) for _ in range(2))
        no_disk, _ = fresh_process(root, base, head, None)
        report(
            f"validate + plan over {planned:,} specs",
            [
                ("cold (empty blob cache)", f"{cold:.2f}s  ({planned / cold:,.0f} specs/s)"),
                ("warm, fresh git process", f"{warm:.3f}s  ({planned / warm:,.0f} specs/s) = {warm / cold:.1%} of cold"),
                ("warm, controller steady state", f"{steady:.3f}s  ({planned / steady:,.0f} specs/s) = {steady / cold:.1%} of cold"),
                ("target", "warm < 5% of cold"),
                ("fresh process, no disk cache", f"{no_disk:.2f}s pass"),
                ("fresh process, cold disk cache", f"{fresh_cold:.2f}s pass, {fresh_cold_total:.2f}s process (fills the cache)"),
                ("fresh process, warm disk cache", f"{fresh_warm:.2f}s pass, {fresh_warm_total:.2f}s process = "
                                                   f"{fresh_warm / fresh_cold:.1%} of the cold fresh pass "
                                                   f"({fresh_cold / fresh_warm:.1f}x faster)"),
            ],
        )


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--one-pass":
    _child(*sys.argv[2:])
