"""The FineTune mirror against the fake API server (with the committed CRD installed): specs
from git become CRs, edits to a CR's spec are reverted (with an Event), git changes update it,
removed specs are pruned, and status round-trips through the status subresource and shows in
`kubectl get finetunes` columns."""
from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import yaml

from cluster_helpers import example_specs
from controller.backends.kubernetes import KubernetesBackend, load_api_client
from controller.backends.kubernetes_crd import CRD_FILE, HASH_ANNOTATION, FineTuneMirror, crd
from controller.backends.kubernetes_lease import LeaderElector, NotLeader
from controller.status import Condition, SpecStatus, summarize

API = ("ftops.dev/v1alpha1", "FineTune")


@pytest.fixture
def cluster(fake_kube, tmp_path):
    specs = example_specs()
    for ft in specs:
        fake_kube.ensure_namespace("ftops-" + ft.metadata.owner)
    fake_kube.ensure_namespace("ftops-system")
    path = tmp_path / "kubeconfig"
    path.write_text(fake_kube.kubeconfig())
    api = load_api_client(str(path))
    # over HTTP, so the fake registers the resource the way the API server starts serving a CRD
    KubernetesBackend(api)._request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                    body=yaml.safe_load(CRD_FILE.read_text()))
    return fake_kube, api, specs


def mirror_for(api, fence=None) -> FineTuneMirror:
    return FineTuneMirror(KubernetesBackend(api, fence=fence), lambda ft: "ftops-" + ft.metadata.owner)


def cr_of(fake, ft) -> dict:
    return fake.get(*API, "ftops-" + ft.metadata.owner, ft.name)


def test_sync_creates_one_cr_per_spec_and_a_second_sync_writes_nothing(cluster):
    fake, api, specs = cluster
    result = mirror_for(api).sync(specs)
    assert sorted(result.created) == sorted(f"ftops-{ft.metadata.owner}/{ft.name}" for ft in specs)
    for ft in specs:
        cr = cr_of(fake, ft)
        assert cr["spec"] == ft.spec.model_dump(by_alias=True, mode="json", exclude_unset=True)
        assert cr["metadata"]["labels"]["ftops.dev/owner"] == ft.metadata.owner
        assert cr["metadata"]["annotations"]["ftops.dev/source"] == f"specs/{ft.name}.yaml"
    rv = fake.resource_version
    again = mirror_for(api).sync(specs)  # a restarted controller
    assert fake.resource_version == rv and len(again.unchanged) == len(specs) and not again.created


def test_an_edit_to_the_cr_spec_is_reverted_and_explained(cluster, kubectl):
    fake, api, specs = cluster
    mirror = mirror_for(api)
    mirror.sync(specs)
    ft = specs[0]
    ns = "ftops-" + ft.metadata.owner
    before = cr_of(fake, ft)
    # an operator edits the CR with kubectl, e.g. to "just bump the epochs"
    out = subprocess.run([kubectl, "--server", fake.url, "--token", "t", "--kubeconfig", os.devnull, "-n", ns,
                          "patch", "finetune", ft.name, "--type", "merge",
                          "-p", '{"spec": {"training": {"epochs": 99}, "budget": {"maxUsd": 1}}}'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    edited = cr_of(fake, ft)
    assert edited["spec"]["training"]["epochs"] == 99 and edited["metadata"]["generation"] == 2
    result = mirror.sync(specs)
    assert result.reverted == [f"{ns}/{ft.name}"] and not result.updated
    after = cr_of(fake, ft)
    assert after["spec"] == before["spec"]  # every edited field is back as git says, the added one gone
    events = fake.list("v1", "Event", ns)["items"]
    assert [e["reason"] for e in events] == ["SpecEditReverted"]
    assert events[0]["involvedObject"]["name"] == ft.name and "git" in events[0]["message"]


def test_a_change_in_git_updates_the_cr_and_is_not_called_a_revert(cluster):
    fake, api, specs = cluster
    mirror = mirror_for(api)
    mirror.sync(specs)
    ft = specs[0]
    changed = ft.model_copy(update={"spec": ft.spec.model_copy(update={"training": ft.spec.training.model_copy(
        update={"epochs": ft.spec.training.epochs + 1})})})
    # model_copy keeps fields_set: mark the field as set so the mirror writes it
    changed.spec.training.__pydantic_fields_set__.add("epochs")
    changed.spec.__pydantic_fields_set__.add("training")
    result = mirror.sync([changed] + specs[1:])
    assert result.updated == [f"ftops-{ft.metadata.owner}/{ft.name}"] and not result.reverted
    cr = cr_of(fake, ft)
    assert cr["spec"]["training"]["epochs"] == ft.spec.training.epochs + 1
    assert fake.list("v1", "Event", "ftops-" + ft.metadata.owner)["items"] == []


def test_specs_removed_from_git_are_pruned_but_foreign_crs_are_left_alone(cluster):
    fake, api, specs = cluster
    mirror = mirror_for(api)
    mirror.sync(specs)
    foreign = {"apiVersion": API[0], "kind": API[1], "metadata": {"name": "handmade", "namespace": "ftops-system"},
               "spec": {}}
    fake.create(foreign)
    result = mirror.sync(specs[1:])
    assert result.deleted == [f"ftops-{specs[0].metadata.owner}/{specs[0].name}"]
    names = sorted(i["metadata"]["name"] for i in fake.list(*API)["items"])
    assert names == sorted([ft.name for ft in specs[1:]] + ["handmade"])


def test_status_round_trips_through_the_status_subresource(cluster, kubectl):
    fake, api, specs = cluster
    mirror = mirror_for(api)
    mirror.sync(specs)
    ft = specs[0]
    ns = "ftops-" + ft.metadata.owner
    conds = summarize((Condition("DataReady", "True", "Succeeded", "prepared 812 examples", "abc123"),
                       Condition("Trained", "True", "Succeeded", "", "abc123"),
                       Condition("Evaluated", "True", "Succeeded", "", "abc123"),
                       Condition("GatePassed", "False", "GateFailed", "accuracy 0.71 < 0.80", "abc123")),
                      True, "abc123")
    status = SpecStatus(ft.name, conds, "abc123", "3f2a9c1d", "11aa22bb", "gate failed; previous model serves")
    spec_before = cr_of(fake, ft)
    mirror.write_status(ns, ft.name, status)
    assert mirror.read_status(ns, ft.name) == status
    stored = cr_of(fake, ft)
    assert stored["spec"] == spec_before["spec"] and stored["metadata"]["generation"] == spec_before["metadata"]["generation"]
    assert stored["status"]["observedGeneration"] == stored["metadata"]["generation"]
    assert stored["status"]["phase"] == "GateFailed"
    status_writes = [r for r in fake.requests if r["method"] == "PATCH" and r["path"].endswith(f"/{ft.name}/status")]
    assert len(status_writes) == 1

    # a spec write (here: the mirror reverting an edit) keeps the status, and vice versa
    fake.update(dict(stored, spec=dict(stored["spec"], needs=["lowerCost"])), manager="kubectl-edit")
    mirror.sync(specs)
    assert mirror.read_status(ns, ft.name) == status
    later = SpecStatus(ft.name, conds, "def456", "3f2a9c1d", None)
    mirror.write_status(ns, ft.name, later)
    got = mirror.read_status(ns, ft.name)
    assert got == later and "servingRunId" not in cr_of(fake, ft)["status"]  # a None removes the key

    # what `kubectl get finetunes` shows, with the CRD's own printer-column paths
    columns = ",".join(f"{c['name'].upper()}:{c['jsonPath']}" for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]
                       if c["name"] != "Age")
    out = subprocess.run([kubectl, "--server", fake.url, "--token", "t", "--kubeconfig", os.devnull, "-n", ns,
                          "get", "finetunes", ft.name, "-o", f"custom-columns={columns}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["PHASE", "RUN", "GATE", "DEPLOYED", "REVISION"]
    assert row.split() == ["GateFailed", "3f2a9c1d", "GateFailed", "<none>", "def456"]


def test_a_status_write_for_a_missing_cr_is_a_temporary_error(cluster):
    from controller.errors import TemporaryError

    _, api, _ = cluster
    with pytest.raises(TemporaryError, match="sync the mirror first"):
        mirror_for(api).write_status("ftops-system", "nope", SpecStatus("nope"))


def test_a_follower_mirror_writes_nothing(cluster):
    fake, api, specs = cluster
    leader = LeaderElector(api, namespace="ftops-system", identity="a")
    follower = LeaderElector(api, namespace="ftops-system", identity="b")
    assert leader.try_acquire_or_renew() and not follower.try_acquire_or_renew()
    with pytest.raises(NotLeader):
        mirror_for(api, fence=follower.ensure_leader).sync(specs)
    assert fake.list(*API)["items"] == []
    assert len(mirror_for(api, fence=leader.ensure_leader).sync(specs).created) == len(specs)
    with pytest.raises(NotLeader):
        mirror_for(api, fence=follower.ensure_leader).write_status(
            "ftops-" + specs[0].metadata.owner, specs[0].name, SpecStatus(specs[0].name))


def test_watch_reverts_an_edit_without_waiting_for_the_next_sync(cluster):
    fake, api, specs = cluster
    mirror = mirror_for(api)
    stop = threading.Event()
    thread = threading.Thread(target=mirror.watch_edits, args=(lambda: specs, stop, 2), daemon=True)
    thread.start()
    ft = specs[0]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(fake.list(*API)["items"]) < len(specs):  # the first sync is done
        time.sleep(0.05)
    time.sleep(0.3)  # let the watch start
    cr = cr_of(fake, ft)
    fake.update(dict(cr, spec=dict(cr["spec"], needs=["lowerCost"])), manager="kubectl-edit")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "lowerCost" in (cr_of(fake, ft)["spec"].get("needs") or []):
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    reverted = cr_of(fake, ft)
    assert reverted["spec"].get("needs") == cr["spec"].get("needs")
    assert reverted["metadata"]["annotations"][HASH_ANNOTATION] == cr["metadata"]["annotations"][HASH_ANNOTATION]


def test_extra_labels_and_annotations_go_on_every_cr_and_are_restored(cluster):
    fake, api, specs = cluster
    mirror = FineTuneMirror(KubernetesBackend(api), lambda ft: "ftops-" + ft.metadata.owner,
                            labels={"app.kubernetes.io/instance": "ml-platform", "ftops.dev/owner": "spoofed"},
                            annotations={"argocd.argoproj.io/compare-options": "IgnoreExtraneous"})
    mirror.sync(specs)
    for ft in specs:
        meta = cr_of(fake, ft)["metadata"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "ml-platform"
        assert meta["labels"]["ftops.dev/owner"] == ft.metadata.owner  # ours win
        assert meta["annotations"]["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"
    cr = cr_of(fake, specs[0])
    cr["metadata"]["labels"].pop("app.kubernetes.io/instance")
    fake.update(cr, manager="kubectl-edit")
    result = mirror.sync(specs)
    assert result.updated == [f"ftops-{specs[0].metadata.owner}/{specs[0].name}"]
    assert cr_of(fake, specs[0])["metadata"]["labels"]["app.kubernetes.io/instance"] == "ml-platform"
