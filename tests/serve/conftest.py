"""Session fixtures for the serving tests: a tiny base model, two runs trained by the real trainer
(`python -m controller.train --config run.json`, in parallel, a few steps each), their gate
decisions, a repo with a spec and a small corpus, and one in-process server for the API tests.

The gate decisions are written in the gate's agreed shape (`eval/gate.json`,
`{"runId", "passed", ...}`); the serving code only reads them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))  # fakekube

from built_once import built_once  # noqa: E402
from fakekube.fixtures import fake_kube, kubelet  # noqa: E402,F401

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_helpers

from serve_helpers import RUN_A, RUN_B, SPEC_NAME, CORPUS, Env, spec_text, wait_ready, write_gate  # noqa: E402


def _train_runs(folder: Path) -> None:
    """The tiny base and the two runs every serving test reads (built once per test run)."""
    from controller.tiny.model import init_tiny_model
    from controller.tiny.task import write_task

    base = init_tiny_model(folder / "base")
    train, test = write_task(folder / "data", n_train=32, n_test=8)
    procs = []
    for i, run_id in enumerate((RUN_A, RUN_B)):
        rc = {"runId": run_id, "specName": SPEC_NAME, "baseModel": {"uri": str(base)},
              "method": {"type": "lora", "r": 4, "alpha": 8}, "device": "cpu",
              # B trains for longer, on longer sequences, with another seed: two adapters over one
              # base that answer differently (test_engine).
              "training": {"epochs": 1 + i, "batchSize": 16, "learningRate": 0.01, "maxSeqLength": 128 * (1 + i),
                           "seed": 7 + i},
              "data": {"train": str(train), "test": str(test), "md5": "0" * 32},
              "outputDir": str(folder / "runs" / run_id), "checkpointDir": str(folder / "ckpt" / run_id)}
        cfg = folder / f"{run_id}.json"
        cfg.write_text(json.dumps(rc))
        log = (folder / f"{run_id}.log").open("w")
        procs.append((run_id, subprocess.Popen([sys.executable, "-m", "controller.train", "--config", str(cfg)],
                                               stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                               env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})))
    for run_id, proc in procs:
        assert proc.wait(timeout=600) == 0, (folder / f"{run_id}.log").read_text()[-3000:]


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> Env:
    """The base and the two trained runs (trained once per test run, shared by the xdist workers;
    read only), and this worker's own store (copies of the runs, with their gate decisions) and repo."""
    trained = built_once(tmp_path_factory, "serve-runs", _train_runs)
    root = tmp_path_factory.mktemp("serve")
    base = trained / "base"
    store = root / "store"
    for run_id in (RUN_A, RUN_B):
        shutil.copytree(trained / "runs" / run_id, store / SPEC_NAME / run_id)
        write_gate(store / SPEC_NAME / run_id, passed=True)
    repo = root / "repo"
    (repo / "specs").mkdir(parents=True)
    for name, text in CORPUS.items():
        path = repo / "corpora" / "kb" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    spec_file = repo / "specs" / f"{SPEC_NAME}.yaml"
    spec_file.write_text(spec_text())
    return Env(root, base, store, repo, spec_file)


@pytest.fixture(scope="session")
def server(env):
    """One in-process gateway + embedded engine for run A (controller.serve.node; the API tests
    share it; none of them changes its routes)."""
    from controller.commands.serve_commands import config_from_spec
    from controller.serve.node import Node

    config = config_from_spec(str(env.spec_file), str(env.run_dir(RUN_A))).replace(
        port=0, index_cache=str(env.root / "index-cache"))
    node = Node(config, threads=1).start()
    wait_ready(node.url)
    yield node
    node.stop()



@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
