"""The deploy step on Kubernetes, against the fake API server (tests/fakekube) and a fake
Deployment controller: rolling and canary rollouts rendered by controller.render.render_serving,
applied and observed through controller.backends.kubernetes; automatic rollback on
ProgressDeadlineExceeded; gate refusal; rollback --to."""
from __future__ import annotations

import json

import pytest

from fake_deployments import FakeDeployments
from serve_helpers import RUN_A, RUN_B, SPEC_NAME, copy_run, served_config, spec_text, write_gate

MD5 = "0123456789abcdef0123456789abcdef"
COMMIT = "1234567abcdef1234567abcdef1234567abcdef0"


@pytest.fixture
def cluster(env, fake_kube, tmp_path):
    """(serving, finetune factory, fake controller, store) over a fresh fake cluster."""
    from controller.backends.kubernetes import KubernetesBackend
    from controller.catalog import load_operator_config
    from controller.render import owner_namespace
    from controller.serve.kube import KubernetesServing
    from controller.spec import load_spec_text

    store = tmp_path / "store"
    for run_id in (RUN_A, RUN_B):
        copy_run(env.run_dir(run_id), store)
    operator = load_operator_config()

    def finetune(**kw):
        return load_spec_text(spec_text(**kw), f"specs/{SPEC_NAME}.yaml").spec

    namespace = owner_namespace(finetune(), operator)
    fake_kube.ensure_namespace(namespace)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(fake_kube.kubeconfig())
    kube = KubernetesBackend(kubeconfig=str(kubeconfig), namespaces=[namespace])
    serving = KubernetesServing(kube, operator, store, ready_timeout=30, poll_interval=0.05)
    with FakeDeployments(fake_kube) as controller:
        yield serving, finetune, controller, namespace


def fake_kube_repo():
    from pathlib import Path

    return Path("/opt/ftops/repo")


def _dep(fake_kube, namespace: str, name: str) -> dict:
    return fake_kube.get("apps/v1", "Deployment", namespace, name)


def _template_run(dep: dict) -> str:
    return dep["spec"]["template"]["metadata"]["annotations"]["ftops.dev/run-id"]


def test_rolling_rollout_failing_readiness_is_rolled_back_and_old_version_serves(cluster, fake_kube):
    serving, finetune, controller, ns = cluster
    ft = finetune()
    first = serving.rollout(ft, RUN_A, MD5, COMMIT, serving_config=served_config())
    assert first.outcome == "promoted", first.message
    dep = _dep(fake_kube, ns, f"{SPEC_NAME}-serve")
    assert _template_run(dep) == RUN_A
    # the run, fetched from the artifact store by the inputs container, is mounted where serve.json says
    mount = next(v for v in dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if v["name"] == "adapter")
    assert mount["readOnly"] is True
    config = json.loads(fake_kube.get("v1", "ConfigMap", ns, next(
        v["configMap"]["name"] for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "serve-config"))["data"]["serve.json"])
    assert config["adapter"] == mount["mountPath"] and config["runId"] == RUN_A and config["corpus"] == "/workspace/corpus"
    # the pod's `ftops serve --config` reads exactly this file
    from controller.serve.config import from_json

    parsed = from_json(config, base=fake_kube_repo())
    assert parsed.run_dir == "/workspace/adapter" and parsed.run_id == RUN_A and parsed.top_k == 2
    assert parsed.corpus_dir == "/workspace/corpus" and parsed.base_uri.startswith("/models/")  # the model cache
    svc = fake_kube.get("v1", "Service", ns, f"{SPEC_NAME}-serve")
    assert "ftops.dev/track" not in svc["spec"]["selector"]

    controller.failing.add(RUN_B)
    failed = serving.rollout(ft, RUN_B, MD5, COMMIT, serving_config=served_config())
    assert failed.outcome == "rolled_back" and failed.serving_run_id == RUN_A
    assert "ProgressDeadlineExceeded" in failed.message
    assert [e["kind"] for e in failed.events] == ["deploy.started", "deploy.rolled_back"]
    assert _template_run(_dep(fake_kube, ns, f"{SPEC_NAME}-serve")) == RUN_A
    # run A's pods answered all along: the served run never went to B or to nothing
    served = [run for name, run, _ in controller.timeline if name == f"{SPEC_NAME}-serve"]
    assert served == [RUN_A]
    current = serving.current(SPEC_NAME)
    assert current is not None and current.run_id == RUN_A and current.healthy, current
    json.dumps([e for e in failed.events])


def test_gate_not_passed_applies_nothing(cluster, fake_kube):
    serving, finetune, _, ns = cluster
    write_gate(serving.store / SPEC_NAME / RUN_B, passed=False)
    result = serving.rollout(finetune(), RUN_B, MD5, COMMIT, serving_config=served_config())
    assert result.outcome == "refused"
    assert fake_kube.list("apps/v1", "Deployment", ns)["items"] == []
    assert fake_kube.list("v1", "ConfigMap", ns)["items"] == []


def test_canary_then_promotion_then_rollback_to(cluster, fake_kube):
    serving, finetune, controller, ns = cluster
    ft = finetune(replicas=4, rollout="{strategy: canary, canaryPercent: 25, stableSeconds: 1}")
    assert serving.rollout(ft, RUN_A, MD5, COMMIT, serving_config=served_config()).outcome == "promoted"
    assert fake_kube.list("apps/v1", "Deployment", ns)["items"][0]["metadata"]["name"] == f"{SPEC_NAME}-serve"

    result = serving.rollout(ft, RUN_B, MD5, COMMIT, serving_config=served_config())
    assert result.outcome == "promoted", result.message
    assert [e["kind"] for e in result.events] == ["deploy.started", "deploy.canary_ready", "deploy.promoted"]
    assert result.events[1]["canaryReplicas"] == 1 and result.events[1]["stableReplicas"] == 3
    canary = _dep(fake_kube, ns, f"{SPEC_NAME}-canary")
    assert canary["spec"]["replicas"] == 0 and _template_run(canary) == RUN_B
    assert canary["spec"]["selector"]["matchLabels"]["ftops.dev/track"] == "canary"
    stable = _dep(fake_kube, ns, f"{SPEC_NAME}-serve")
    assert _template_run(stable) == RUN_B and stable["spec"]["replicas"] == 4
    # the canary served (1 replica of B) while the stable kept 4 of A, then B took over
    assert (f"{SPEC_NAME}-canary", RUN_B, 1) in controller.timeline
    stable = [(run, n) for name, run, n in controller.timeline if name == f"{SPEC_NAME}-serve"]
    assert stable == [(RUN_A, 4), (RUN_A, 3), (RUN_B, 4)]  # the canary held 1 of 4 replicas while observed

    # `ftops rollback SPEC_FILE --to A --backend kubernetes` against the same cluster and store
    import subprocess
    import sys

    from serve_helpers import ROOT

    spec_file = serving.store.parent / "specs" / f"{SPEC_NAME}.yaml"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(spec_text(replicas=4, rollout="{strategy: canary, canaryPercent: 25, stableSeconds: 1}"))
    kubeconfig = serving.store.parent / "kubeconfig"
    out = subprocess.run([sys.executable, "-m", "controller.cli", "-o", "json", "rollback", str(spec_file), "--to", RUN_A[:6],
                          "--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "--store", str(serving.store),
                          "--timeout", "30"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    back = json.loads(out.stdout)
    assert back["servingRunId"] == RUN_A and back["events"][-1]["kind"] == "deploy.rolled_back"
    assert _template_run(_dep(fake_kube, ns, f"{SPEC_NAME}-serve")) == RUN_A


def test_failing_canary_never_touches_the_stable_deployment(cluster, fake_kube):
    serving, finetune, controller, ns = cluster
    ft = finetune(replicas=2, rollout="{strategy: canary, canaryPercent: 50, stableSeconds: 0}")
    assert serving.rollout(ft, RUN_A, MD5, COMMIT, serving_config=served_config()).outcome == "promoted"
    generation = _dep(fake_kube, ns, f"{SPEC_NAME}-serve")["metadata"]["generation"]
    controller.failing.add(RUN_B)
    result = serving.rollout(ft, RUN_B, MD5, COMMIT, serving_config=served_config())
    assert result.outcome == "rolled_back" and result.serving_run_id == RUN_A
    assert _dep(fake_kube, ns, f"{SPEC_NAME}-serve")["metadata"]["generation"] == generation
    assert _dep(fake_kube, ns, f"{SPEC_NAME}-canary")["spec"]["replicas"] == 0


def test_canary_that_stops_being_ready_is_withdrawn_and_stable_restored(cluster, fake_kube):
    """Ready at first, then failing during stableSeconds: canary to 0, stable back to full size."""
    serving, finetune, controller, ns = cluster
    ft = finetune(replicas=2, rollout="{strategy: canary, canaryPercent: 50, stableSeconds: 30}")
    assert serving.rollout(ft, RUN_A, MD5, COMMIT, serving_config=served_config()).outcome == "promoted"

    def break_canary_once_observed():
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stable = _dep(fake_kube, ns, f"{SPEC_NAME}-serve")
            if stable["spec"]["replicas"] == 1 and (stable.get("status") or {}).get("readyReplicas") == 1:
                fake_kube.patch_status("apps/v1", "Deployment", ns, f"{SPEC_NAME}-canary",
                                       {"readyReplicas": 0, "availableReplicas": 0, "unavailableReplicas": 1})
                return
            time.sleep(0.02)

    import threading

    breaker = threading.Thread(target=break_canary_once_observed, daemon=True)
    breaker.start()
    result = serving.rollout(ft, RUN_B, MD5, COMMIT, serving_config=served_config())
    breaker.join()
    assert result.outcome == "rolled_back" and result.serving_run_id == RUN_A, result.message
    stable = _dep(fake_kube, ns, f"{SPEC_NAME}-serve")
    assert _template_run(stable) == RUN_A and stable["spec"]["replicas"] == 2
    assert _dep(fake_kube, ns, f"{SPEC_NAME}-canary")["spec"]["replicas"] == 0
