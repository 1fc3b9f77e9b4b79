"""The fake API server behaves like the real one for what ftops (and later leader election
and the FineTune CRD) rely on. Everything here goes over real HTTP."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from fakekube.server import FakeKube

CM = "/api/v1/namespaces/default/configmaps"
JOBS = "/apis/batch/v1/namespaces/default/jobs"


def call(fake: FakeKube, method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(fake.url + path, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw and resp.headers.get("Content-Type") == "application/json" else raw
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def cm(name: str, labels: dict | None = None, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}}, "data": data}


def test_create_sets_identity_and_global_monotonic_resource_version(fake_kube):
    code, a = call(fake_kube, "POST", CM, cm("a", x="1"))
    assert code == 201
    code, b = call(fake_kube, "POST", JOBS, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
                                             "spec": {"template": {"spec": {"containers": []}}}})
    assert code == 201
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])  # one counter for all kinds
    assert a["metadata"]["uid"] != b["metadata"]["uid"]
    assert a["metadata"]["creationTimestamp"].endswith("Z")
    assert a["metadata"]["namespace"] == "default"


def test_not_found_already_exists_and_missing_namespace(fake_kube):
    code, status = call(fake_kube, "GET", CM + "/nope")
    assert code == 404 and status["reason"] == "NotFound" and status["kind"] == "Status"
    call(fake_kube, "POST", CM, cm("a"))
    code, status = call(fake_kube, "POST", CM, cm("a"))
    assert code == 409 and status["reason"] == "AlreadyExists"
    code, status = call(fake_kube, "POST", "/api/v1/namespaces/ghost/configmaps", cm("a"))
    assert code == 404 and "namespaces \"ghost\" not found" in status["message"]


def test_update_with_stale_resource_version_conflicts(fake_kube):
    _, a = call(fake_kube, "POST", CM, cm("a", x="1"))
    first = json.loads(json.dumps(a))
    a["data"]["x"] = "2"
    code, updated = call(fake_kube, "PUT", CM + "/a", a)
    assert code == 200 and updated["data"]["x"] == "2"
    assert int(updated["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    first["data"]["x"] = "3"
    code, status = call(fake_kube, "PUT", CM + "/a", first)  # written against the old version
    assert code == 409 and status["reason"] == "Conflict"
    # A write that changes nothing keeps the resourceVersion.
    code, same = call(fake_kube, "PUT", CM + "/a", updated)
    assert same["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]


def test_label_selectors(fake_kube):
    call(fake_kube, "POST", CM, cm("a", {"app": "x", "tier": "1"}))
    call(fake_kube, "POST", CM, cm("b", {"app": "y", "tier": "2"}))
    call(fake_kube, "POST", CM, cm("c", {"app": "x"}))

    def names(selector: str) -> list[str]:
        code, listed = call(fake_kube, "GET", CM + "?labelSelector=" + urllib.request.quote(selector))
        assert code == 200 and listed["kind"] == "ConfigMapList" and listed["metadata"]["resourceVersion"]
        return [i["metadata"]["name"] for i in listed["items"]]

    assert names("app=x") == ["a", "c"]
    assert names("app==x,tier=1") == ["a"]
    assert names("app!=x") == ["b"]
    assert names("tier in (1,2)") == ["a", "b"]
    assert names("tier notin (1)") == ["b", "c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    code, status = call(fake_kube, "GET", CM + "?labelSelector=" + urllib.request.quote("a in b"))
    assert code == 400


def test_status_subresource_separates_spec_and_status(fake_kube):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"parallelism": 1},
           "status": {"active": 9}}
    _, created = call(fake_kube, "POST", JOBS, job)
    assert created["status"] == {}  # status is not settable on create
    code, patched = call(fake_kube, "PATCH", JOBS + "/j/status", {"status": {"active": 1}}, "application/merge-patch+json")
    assert code == 200 and patched["status"] == {"active": 1}
    code, patched = call(fake_kube, "PATCH", JOBS + "/j", {"status": {"active": 5}, "spec": {"parallelism": 2}},
                         "application/merge-patch+json")
    assert patched["status"] == {"active": 1} and patched["spec"]["parallelism"] == 2
    assert patched["metadata"]["generation"] == 2


def test_patch_flavours(fake_kube):
    call(fake_kube, "POST", CM, cm("a", x="1", y="2"))
    _, out = call(fake_kube, "PATCH", CM + "/a", {"data": {"y": None, "z": "3"}}, "application/merge-patch+json")
    assert out["data"] == {"x": "1", "z": "3"}
    _, out = call(fake_kube, "PATCH", CM + "/a", [{"op": "replace", "path": "/data/x", "value": "9"}],
                  "application/json-patch+json")
    assert out["data"]["x"] == "9"
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}}}}
    call(fake_kube, "POST", "/apis/apps/v1/namespaces/default/deployments", dep)
    _, out = call(fake_kube, "PATCH", "/apis/apps/v1/namespaces/default/deployments/d",
                  {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "2"}]}}}},
                  "application/strategic-merge-patch+json")
    assert out["spec"]["template"]["spec"]["containers"] == [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]


def test_server_side_apply_ownership_conflicts_and_force(fake_kube):
    url = CM + "/a?fieldManager=alice"
    code, status = call(fake_kube, "PATCH", CM + "/a", json.dumps(cm("a", x="1")), "application/apply-patch+yaml")
    assert code == 400 and "fieldManager" in status["message"]
    code, out = call(fake_kube, "PATCH", url, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: {}}\ndata: {x: '1', y: '1'}\n",
                     "application/apply-patch+yaml")
    assert code == 201 and out["data"] == {"x": "1", "y": "1"}
    assert out["metadata"]["managedFields"][0]["manager"] == "alice"
    assert out["metadata"]["managedFields"][0]["operation"] == "Apply"
    rv = out["metadata"]["resourceVersion"]
    _, again = call(fake_kube, "PATCH", url, json.dumps(cm("a", x="1", y="1")), "application/apply-patch+yaml")
    assert again["metadata"]["resourceVersion"] == rv  # same config: no change
    code, status = call(fake_kube, "PATCH", CM + "/a?fieldManager=bob", json.dumps(cm("a", x="2")),
                        "application/apply-patch+yaml")
    assert code == 409 and status["reason"] == "Conflict" and 'conflict with "alice"' in status["message"]
    code, out = call(fake_kube, "PATCH", CM + "/a?fieldManager=bob&force=true", json.dumps(cm("a", x="2")),
                     "application/apply-patch+yaml")
    assert code == 200 and out["data"] == {"x": "2", "y": "1"}
    # alice drops y from her config: the field she alone owned goes away.
    _, out = call(fake_kube, "PATCH", url, json.dumps(cm("a")), "application/apply-patch+yaml")
    assert "y" not in out.get("data", {}) and out["data"]["x"] == "2"


def test_delete_preconditions_and_cascade(fake_kube):
    _, job = call(fake_kube, "POST", JOBS, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {}})
    owned = cm("owned")
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": job["metadata"]["uid"]}]
    call(fake_kube, "POST", CM, owned)
    code, status = call(fake_kube, "DELETE", JOBS + "/j", {"preconditions": {"uid": "other"}})
    assert code == 409
    code, _ = call(fake_kube, "DELETE", JOBS + "/j", {"propagationPolicy": "Background",
                                                      "preconditions": {"uid": job["metadata"]["uid"]}})
    assert code == 200
    assert call(fake_kube, "GET", CM + "/owned")[0] == 404  # garbage-collected with its owner
    assert call(fake_kube, "DELETE", JOBS + "/j")[0] == 404


def _watch(fake: FakeKube, query: str) -> list[dict]:
    with urllib.request.urlopen(fake.url + CM + "?watch=1&" + query, timeout=10) as resp:
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


def test_watch_from_resource_version_and_410_after_compaction(fake_kube):
    _, a = call(fake_kube, "POST", CM, cm("a", {"app": "x"}))
    start = a["metadata"]["resourceVersion"]
    call(fake_kube, "POST", CM, cm("b", {"app": "y"}))
    a["data"] = {"k": "v"}
    call(fake_kube, "PUT", CM + "/a", a)
    call(fake_kube, "DELETE", CM + "/a")
    events = _watch(fake_kube, f"resourceVersion={start}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "a")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(start)
    selected = _watch(fake_kube, f"resourceVersion={start}&timeoutSeconds=1&labelSelector=app%3Dx")
    assert [e["type"] for e in selected] == ["MODIFIED", "DELETED"]
    # No resourceVersion: the current state as ADDED events first.
    assert [e["object"]["metadata"]["name"] for e in _watch(fake_kube, "timeoutSeconds=1")] == ["b"]
    fake_kube.compact()
    gone = _watch(fake_kube, f"resourceVersion={start}&timeoutSeconds=1")
    assert gone[0]["type"] == "ERROR" and gone[0]["object"]["code"] == 410 and gone[0]["object"]["reason"] == "Expired"


def test_watch_streams_live_events(fake_kube):
    rv = fake_kube.resource_version
    got: list[dict] = []
    t = threading.Thread(target=lambda: got.extend(_watch(fake_kube, f"resourceVersion={rv}&timeoutSeconds=2")))
    t.start()
    call(fake_kube, "POST", CM, cm("live"))
    t.join(10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [("ADDED", "live")]


def test_discovery_and_crd_registration(fake_kube):
    _, groups = call(fake_kube, "GET", "/apis")
    names = {g["name"] for g in groups["groups"]}
    assert {"batch", "apps", "coordination.k8s.io", "kubeflow.org", "jobset.x-k8s.io"} <= names
    _, core = call(fake_kube, "GET", "/api/v1")
    assert {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]} in core["resources"]
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "finetunes.ftops.dev"},
           "spec": {"group": "ftops.dev", "scope": "Namespaced",
                    "names": {"kind": "FineTune", "plural": "finetunes", "singular": "finetune"},
                    "versions": [{"name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}}}]}}
    assert call(fake_kube, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)[0] == 201
    code, _ = call(fake_kube, "POST", "/apis/ftops.dev/v1alpha1/namespaces/default/finetunes",
                   {"apiVersion": "ftops.dev/v1alpha1", "kind": "FineTune", "metadata": {"name": "x"}, "spec": {}})
    assert code == 201
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
             "spec": {"holderIdentity": "a"}}
    assert call(fake_kube, "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", lease)[0] == 201


def test_pod_logs(fake_kube):
    call(fake_kube, "POST", "/api/v1/namespaces/default/pods",
         {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}})
    fake_kube.logs[("default", "p")] = "hello\n"
    code, text = call(fake_kube, "GET", "/api/v1/namespaces/default/pods/p/log")
    assert code == 200 and text == b"hello\n"
    assert call(fake_kube, "GET", "/api/v1/namespaces/default/pods/q/log")[0] == 404
