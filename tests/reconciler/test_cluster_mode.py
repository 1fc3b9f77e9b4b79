"""Cluster mode against the fake API server: the reconciler (kubernetes backend) mirrors each
spec into a FineTune CR, writes its status through /status, records an Event for each changed
condition, and a fenced (non-leader) controller writes nothing, not even to its ledger."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fakekube package

from controller import demo  # noqa: E402
from controller.backends.kubernetes import KubernetesBackend, load_api_client  # noqa: E402
from controller.backends.kubernetes_crd import CRD_FILE, FineTuneMirror  # noqa: E402
from controller.commands.controller_commands import ClusterSync  # noqa: E402
from controller.errors import TemporaryError  # noqa: E402
from controller.ledger import Ledger  # noqa: E402
from controller.reconciler import ControllerConfig, Reconciler  # noqa: E402
from fakekube.fixtures import fake_kube  # noqa: E402,F401

NAMESPACE = "ftops-support-platform"


@pytest.fixture
def api(fake_kube, tmp_path):
    fake_kube.ensure_namespace(NAMESPACE)
    path = tmp_path / "kubeconfig"
    path.write_text(fake_kube.kubeconfig())
    api = load_api_client(str(path))
    KubernetesBackend(api)._request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                    body=yaml.safe_load(CRD_FILE.read_text()))
    return api


@pytest.fixture
def unreviewed(demo_repo):
    subprocess.run(["git", "rm", "-q", "-r", "reviews"], cwd=demo_repo.root, check=True)
    demo.commit(demo_repo.root, "no reviews yet")
    return demo_repo


def test_status_and_events_reach_the_finetune_cr(fake_kube, api, unreviewed, tmp_path):
    backend = KubernetesBackend(api)
    reconciler = Reconciler(ControllerConfig(repo=str(unreviewed.root), home=tmp_path / "home"), backend)
    sync = ClusterSync(FineTuneMirror(backend, lambda ft: NAMESPACE))
    result = reconciler.reconcile_once()
    sync(reconciler, result)
    cr = fake_kube.get("ftops.dev/v1alpha1", "FineTune", NAMESPACE, demo.SPEC_NAME)
    conditions = {c["type"]: c for c in cr["status"]["conditions"]}
    assert conditions["DataReady"]["status"] == "False" and conditions["DataReady"]["reason"] == "ReviewPending"
    events = fake_kube.list("v1", "Event", NAMESPACE)["items"]
    reasons = {(e["reason"], e["type"]) for e in events if e["involvedObject"]["name"] == demo.SPEC_NAME}
    assert ("ReviewPending", "Normal") in reasons
    assert any(kind == "Warning" for _, kind in reasons)  # Stalled=True is a warning
    count = len(events)
    sync(reconciler, reconciler.reconcile_once())  # nothing changed: no new Event, no status write
    assert len(fake_kube.list("v1", "Event", NAMESPACE)["items"]) == count


def test_a_fenced_controller_writes_nothing(api, unreviewed, tmp_path):
    def fence() -> None:
        raise TemporaryError("not the leader")

    home = tmp_path / "home"
    backend = KubernetesBackend(api, fence=fence)
    reconciler = Reconciler(ControllerConfig(repo=str(unreviewed.root), home=home), backend,
                            ledger=Ledger(home / "ledger.db", before_write=fence))
    result = reconciler.reconcile_once()
    status = result.statuses[demo.SPEC_NAME]
    assert status.condition("Stalled").reason == "Retrying" and "not the leader" in status.condition("Stalled").message
    assert Ledger(home / "ledger.db").count() == 0
