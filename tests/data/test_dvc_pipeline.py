"""The top-level dvc.yaml: `dvc repro` runs the real prepare stage and pins its hashes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_dvc_repro_runs_the_prepare_stage(git_repo):
    root = git_repo.root
    for rel in ("dvc.yaml", "specs", "data/examples", "controller/data"):
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, root / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / rel)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=root, check=True, env=env)
    git_repo.commit("pipeline")
    proc = subprocess.run([*dvc, "repro", "prepare@support-triage"], cwd=root, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [prepared] = (root / ".ftops" / "prepared" / "support-triage").iterdir()
    assert {p.name for p in prepared.iterdir()} == {"train.jsonl", "test.jsonl", "manifest.json"}
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["prepare@support-triage"]
    assert lock["params"]["specs/support-triage.yaml"]["spec.dataset"]["path"] == "data/examples/support-tickets.jsonl"
    assert {d["path"] for d in lock["deps"]} == {"data/examples/support-tickets.jsonl", "controller/data"}
    assert lock["outs"][0]["path"] == ".ftops/prepared/support-triage"
    again = subprocess.run([*dvc, "repro", "prepare@support-triage"], cwd=root, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "didn't change" in again.stdout + again.stderr
