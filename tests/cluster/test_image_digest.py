"""How the controller learns its own image digest for the ledger: FTOPS_IMAGE_DIGEST (set by
the chart when the image is pinned), else its Pod's containerStatuses[].imageID."""
from __future__ import annotations

from controller.backends.kubernetes import KubernetesBackend, load_api_client
from controller.backends.kubernetes_identity import digest_from_image_id, export_image_digest, own_image_digest

DIGEST = "sha256:" + "ab" * 32
NS = "ftops-system"


def backend(fake, tmp_path) -> KubernetesBackend:
    path = tmp_path / "kubeconfig"
    path.write_text(fake.kubeconfig())
    return KubernetesBackend(load_api_client(str(path)))


def test_digest_from_every_runtime_spelling():
    assert digest_from_image_id(f"docker-pullable://ghcr.io/ftops/controller@{DIGEST}") == DIGEST
    assert digest_from_image_id(f"ghcr.io/ftops/controller@{DIGEST}") == DIGEST
    assert digest_from_image_id(DIGEST) == DIGEST
    assert digest_from_image_id("ghcr.io/ftops/controller:0.1.0") is None
    assert digest_from_image_id("") is None


def test_the_environment_wins_and_needs_no_api(tmp_path):
    assert own_image_digest(backend=object(), env={"FTOPS_IMAGE_DIGEST": DIGEST}) == DIGEST
    assert own_image_digest(backend=object(), env={}) is None  # not in a pod


def test_read_from_the_pod_status_and_exported(fake_kube, tmp_path):
    fake_kube.ensure_namespace(NS)
    fake_kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ftops-7d9f-x2", "namespace": NS},
                      "spec": {"containers": [{"name": "controller", "image": "ghcr.io/ftops/controller:0.1.0"}]}})
    env = {"POD_NAME": "ftops-7d9f-x2", "POD_NAMESPACE": NS}
    b = backend(fake_kube, tmp_path)
    assert own_image_digest(b, env) is None  # the kubelet has not reported it yet
    fake_kube.patch_status("v1", "Pod", NS, "ftops-7d9f-x2", {"containerStatuses": [
        {"name": "sidecar", "imageID": "docker-pullable://other@sha256:" + "cd" * 32},
        {"name": "controller", "imageID": f"docker-pullable://ghcr.io/ftops/controller@{DIGEST}"}]})
    assert export_image_digest(b, env) == DIGEST
    assert env["FTOPS_IMAGE_DIGEST"] == DIGEST
    assert own_image_digest(b, {"POD_NAME": "gone", "POD_NAMESPACE": NS}) is None  # 404 is not fatal
