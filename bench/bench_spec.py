"""Validate + plan over 10,000 specs: a cold pass (nothing cached) against a warm pass (the
blob cache filled by an earlier pass, as in a long-running controller or a repeated plan).
Target: the warm pass over unchanged specs costs under 5% of the cold one."""
from __future__ import annotations

import os
import subprocess
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
            f"outs:\n- md5: {i:032x}\n  size: {1000000 + i}\n  path: {name}.jsonl\nmeta:\n  ftops:\n    examples: {1000 + i}\n"
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
        report(
            f"validate + plan over {planned:,} specs",
            [
                ("cold (empty blob cache)", f"{cold:.2f}s  ({planned / cold:,.0f} specs/s)"),
                ("warm, fresh git process", f"{warm:.3f}s  ({planned / warm:,.0f} specs/s) = {warm / cold:.1%} of cold"),
                ("warm, controller steady state", f"{steady:.3f}s  ({planned / steady:,.0f} specs/s) = {steady / cold:.1%} of cold"),
                ("target", "warm < 5% of cold"),
            ],
        )
