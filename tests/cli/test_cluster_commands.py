"""The reading commands with `--backend kubernetes`, against the fake API server: the reconciler
ran the training Jobs there (the fake kubelet moved them, with the trainer's log on the pod) and
ClusterSync mirrored every pass into FineTune custom resources and their Events."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # fakekube

from fakekube.kubelet import FakeKubelet  # noqa: E402
from fakekube.server import FakeKube  # noqa: E402
from homes import LOSSES, build_home  # noqa: E402

from controller.backends.kubernetes import KubernetesBackend, load_api_client  # noqa: E402
from controller.backends.kubernetes_crd import CRD_FILE, FineTuneMirror  # noqa: E402
from controller.catalog import load_operator_config  # noqa: E402
from controller.commands.reconcile_commands import ClusterSync  # noqa: E402
from tests.conftest import GitRepo  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-home")
    operator = load_operator_config()
    with FakeKube() as fake:
        fake.ensure_namespace("default")
        fake.ensure_namespace(operator.tenancy.namespace_for("support"))
        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(fake.kubeconfig())
        api = load_api_client(str(kubeconfig))
        KubernetesBackend(api)._request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                        body=yaml.safe_load(CRD_FILE.read_text()))
        kube = KubernetesBackend(api, operator=operator)
        sync = ClusterSync(FineTuneMirror(kube, lambda ft: operator.tenancy.namespace_for(ft.metadata.owner)))
        built = build_home(root, GitRepo, kube=kube, kubelet=FakeKubelet(fake), sync=sync)
        yield built, fake, kubeconfig


def test_get_and_describe_read_the_finetune_resources(cluster, ftops):
    built, fake, kubeconfig = cluster
    k = ("--backend", "kubernetes", "--kubeconfig", kubeconfig)
    code, out, err = ftops("get", "-o", "json", *k)
    assert code == 0, err
    crs = {cr["metadata"]["name"]: cr["status"] for cr in fake.list("ftops.dev/v1alpha1", "FineTune", None)["items"]}
    got = {s["name"]: s for s in json.loads(out)}
    assert set(got) == set(crs) == {"triage", "intake"}
    assert got["triage"]["runId"] == crs["triage"]["runId"] == built.second_run
    assert got["triage"]["servingRunId"] == built.first_run
    code, out, _ = ftops("get", *k)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["triage"][1:3] == ["Stalled", built.second_run[:12]] and rows["intake"][1] == "ReviewPending"
    # describe: the status from the resource, the gate and events from the home
    code, out, err = ftops("describe", "finetune", "triage", *k, "--home", built.home)
    assert code == 0, err
    assert f"Gate:         FAILED for run {built.second_run}" in out and "Phase:        Stalled" in out


def test_events_merge_the_ledger_and_the_finetunes_kubernetes_events(cluster, ftops):
    built, fake, kubeconfig = cluster
    code, out, err = ftops("events", "triage", "-o", "json", "--backend", "kubernetes", "--kubeconfig", kubeconfig,
                           "--home", built.home)
    assert code == 0, err
    rows = json.loads(out)
    kube_reasons = {e["reason"] for e in fake.list("v1", "Event", built.namespace)["items"]
                    if e["involvedObject"]["name"] == "triage"}
    assert {r["kind"] for r in rows if r["source"] == "kubernetes"} == kube_reasons
    assert "GateFailed" in kube_reasons
    assert any(r["source"] == "ledger" and r["kind"] == "gate.decided" for r in rows)
    warning = next(r for r in rows if r["source"] == "kubernetes" and r["kind"] == "GateFailed")
    assert warning["type"] == "Warning" and "0.4100 < min 0.9000" in warning["message"]


def test_logs_of_a_spec_come_from_its_jobs_pod(cluster, ftops):
    built, _, kubeconfig = cluster
    code, out, err = ftops("logs", "triage", "--backend", "kubernetes", "--kubeconfig", kubeconfig, "--home", built.home)
    assert code == 0, err
    assert out.splitlines() == [f"step {10 * (i + 1)} loss {loss}" for i, loss in enumerate(LOSSES)]
    code, out, _ = ftops("logs", built.first_run, "--tail", "1", "--backend", "kubernetes", "--kubeconfig", kubeconfig,
                         "--home", built.home)
    assert out == f"step 70 loss {LOSSES[-1]}\n"


def test_wait_reads_the_resources_condition(cluster, ftops):
    built, _, kubeconfig = cluster
    k = ("--backend", "kubernetes", "--kubeconfig", kubeconfig)
    code, out, _ = ftops("wait", "triage", "--for", "condition=GatePassed=False", *k)
    assert code == 0 and out == "finetune/triage condition met: GatePassed=False\n"
    code, _, err = ftops("wait", "nope", "--timeout", "0", *k)
    assert code == 1 and "there is no FineTune of that name in the cluster" in err
