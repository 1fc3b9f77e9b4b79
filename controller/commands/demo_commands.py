"""`ftops demo`: the main job end to end on the embedded default (local backend, tiny model, CPU).

What runs today: validating and planning the example specs, as a platform team does on a pull
request. The reconciler (data -> train -> eval -> gate -> serve) is not built yet, and this
command says so rather than pretending.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from controller.paths import PACKAGE_DIR


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the end-to-end demo on this machine (what exists so far)")
    demo.add_argument("--specs", default=str(PACKAGE_DIR.parent / "specs"), help="folder of example specs")
    demo.set_defaults(func=cmd_demo)


def _step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    def ftops(argv: list[str]) -> int:
        return subprocess.run([sys.executable, "-m", "controller.cli", *argv]).returncode

    specs = Path(args.specs)
    checkout = specs.parent
    _step(f"ftops validate {specs}")
    if ftops(["validate", str(specs)]) != 0:
        return 1
    _step("ftops plan: what merging the example specs into an empty GitOps repo would do")
    with tempfile.TemporaryDirectory(prefix="ftops-demo-") as tmp:
        repo = Path(tmp)
        env_git = ["git", "-c", "user.name=ftops demo", "-c", "user.email=demo@ftops.invalid"]
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        subprocess.run(["cp", "-r", str(specs), str(checkout / "data"), str(checkout / "corpora"), str(repo)], check=True)
        subprocess.run([*env_git, "-C", str(repo), "add", "-A"], check=True)
        subprocess.run([*env_git, "-C", str(repo), "commit", "-q", "-m", "add example specs"], check=True)
        code = ftops(["plan", "--repo", str(repo), "--head", "HEAD"])
    print(
        "\nThat is all the demo does for now: the reconciler that versions data, trains, evaluates,"
        "\ngates and serves is not built yet (see `issues`).",
        flush=True,
    )
    return code


