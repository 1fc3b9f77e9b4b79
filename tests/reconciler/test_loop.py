"""The controller loop and its limits: temporary errors back off exponentially and recover,
concurrent runs are capped per owner, `ftops controller --watch` reacts to a commit at once,
and Prometheus metrics are served."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from controller import demo
from controller.backends.local import LocalBackend
from controller.reconcile import ControllerConfig, Reconciler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for fakes
from fakes import FakeClock  # noqa: E402


def conditions(status) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_a_dead_dvc_remote_backs_off_exponentially_and_recovers(demo_repo, tmp_path):
    """On a fake clock (controller.clock): the backoff is measured in the controller's own time,
    so a slow machine cannot make it pass or fail."""
    clock = FakeClock()
    home = tmp_path / "home"
    rec = Reconciler(ControllerConfig(repo=str(demo_repo.root), home=home, backoff_base_s=5, backoff_cap_s=600),
                     LocalBackend(home / "runs"), clock=clock)
    hidden = demo_repo.remote.with_name("remote-offline")
    shutil.move(demo_repo.remote, hidden)  # the remote is unreachable
    try:
        first = rec.reconcile_once()
        status = first.statuses[demo.SPEC_NAME]
        assert conditions(status)["Stalled"] == ("False", "Retrying")
        assert "retry 1 in 5s" in status.condition("Stalled").message
        state = json.loads((home / "state" / f"{demo.SPEC_NAME}.json").read_text())
        assert state["failures"] == 1 and first.requeue_after == 5 and state["retryAt"] == clock.time() + 5
        clock.advance(4.9)
        again = rec.reconcile_once()  # before retryAt: no new attempt
        assert json.loads((home / "state" / f"{demo.SPEC_NAME}.json").read_text())["failures"] == 1
        assert again.requeue_after == pytest.approx(0.1)
        clock.advance(0.2)
        rec.reconcile_once()
        state = json.loads((home / "state" / f"{demo.SPEC_NAME}.json").read_text())
        assert state["failures"] == 2 and state["retryAt"] == clock.time() + 10  # the wait doubled
        assert not any(rec.ledger.events(kind="data.versioned"))  # nothing half-recorded
    finally:
        shutil.move(hidden, demo_repo.remote)
    clock.advance(10)
    recovered = rec.reconcile_once().statuses[demo.SPEC_NAME]
    assert conditions(recovered)["DataReady"] == ("True", "DataReady")
    assert "Stalled" not in conditions(recovered)
    for run in LocalBackend(home / "runs").runs():
        LocalBackend(home / "runs").cancel(run)


def test_concurrent_runs_are_capped_per_owner(demo_repo, tmp_path):
    (demo_repo.root / "specs" / "second.yaml").write_text(demo.spec_text(name="second"))
    demo.write_reviews(demo_repo.root, "second")
    demo.commit(demo_repo.root, "a second spec of the same owner")
    home = tmp_path / "home"
    backend = LocalBackend(home / "runs")
    rec = Reconciler(ControllerConfig(repo=str(demo_repo.root), home=home, max_runs_per_owner=1), backend)
    try:
        statuses = rec.reconcile_once().statuses
        trained = {name: conditions(s)["Trained"] for name, s in statuses.items()}
        running = [n for n, c in trained.items() if c[1] in ("Pending", "Running")]
        queued = [n for n, c in trained.items() if c[1] == "Queued"]
        assert len(running) == 1 and len(queued) == 1, trained
        assert "per-owner limit is 1" in statuses[queued[0]].condition("Trained").message
        assert len(backend.runs()) == 1
    finally:
        for run in backend.runs():
            backend.cancel(run, grace_seconds=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_controller_watch_reacts_to_a_commit_and_serves_metrics(demo_repo, tmp_path):
    subprocess.run(["git", "rm", "-q", "-r", "reviews"], cwd=demo_repo.root, check=True)  # stop before training
    demo.commit(demo_repo.root, "no reviews yet")
    home, port = tmp_path / "home", _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "controller", "--repo", str(demo_repo.root), "--home", str(home),
         "--interval", "3600", "--watch", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ},
    )
    try:
        first = home / "status" / f"{demo.SPEC_NAME}.json"
        assert _wait_for(first.exists), "the first pass never ran"
        (demo_repo.root / "specs" / "late.yaml").write_text(demo.spec_text(name="late"))
        demo.commit(demo_repo.root, "a new spec")
        # the poll interval is an hour: only the watch can make this happen
        assert _wait_for((home / "status" / "late.json").exists, timeout=90), "the watch did not trigger a pass"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "ftops_reconcile_passes_total" in metrics
        assert 'ftops_specs{phase="Stalled"}' in metrics
        assert "ftops_reconcile_duration_seconds_count" in metrics
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    logs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "reconciled" for entry in logs)  # structured JSON logs
