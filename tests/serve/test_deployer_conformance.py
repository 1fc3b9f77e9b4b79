"""The Deployer seam's conformance suite: the same cases against every implementation. Local
server processes (real runs trained by the real trainer, real servers), Deployments on the
fake API server (with a fake Deployment controller marking pods ready), and the in-memory fake
the step tests use: promotion needs this run's passed gate, is idempotent, stop stops, and
rollback serves the earlier run again."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for fakes

from fake_deployments import FakeDeployments  # noqa: E402
from fakes import FakeDeployer, MemoryStore  # noqa: E402
from serve_helpers import CORPUS, RUN_A, RUN_B, SPEC_NAME, copy_run, corpus_version, served_config, spec_text, write_gate  # noqa: E402

from controller.seams import Deployer, DeployRequest, Lineage  # noqa: E402

MD5 = "0123456789abcdef0123456789abcdef"
COMMIT = "1234567abcdef1234567abcdef1234567abcdef0"


def finetune():
    from controller.spec import load_spec_text

    return load_spec_text(spec_text(), f"specs/{SPEC_NAME}.yaml").spec


class Local:
    def __init__(self, env, tmp: Path) -> None:
        from controller.serve.deploy import LocalServing

        self.store = tmp / "store"
        for run_id in (RUN_A, RUN_B):
            copy_run(env.run_dir(run_id), self.store)
        self.deployer = LocalServing(self.store, ready_timeout=240)
        self.env = env

    def run_uri(self, run_id: str) -> str:
        return str(self.store / SPEC_NAME / run_id)

    def gate(self, run_id: str, passed: bool) -> None:
        write_gate(Path(self.run_uri(run_id)), passed=passed)

    def close(self) -> None:
        for spawn in self.store.glob(f"{SPEC_NAME}/serving/*/spawn.json"):
            try:
                os.killpg(json.loads(spawn.read_text())["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class Kubernetes:
    def __init__(self, env, tmp: Path, fake_kube) -> None:
        from controller.backends.kubernetes import KubernetesBackend
        from controller.catalog import load_operator_config
        from controller.render import owner_namespace
        from controller.serve.kube import KubernetesServing

        self.store = tmp / "store"
        for run_id in (RUN_A, RUN_B):
            copy_run(env.run_dir(run_id), self.store)
        operator = load_operator_config()
        namespace = owner_namespace(finetune(), operator)
        fake_kube.ensure_namespace(namespace)
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(fake_kube.kubeconfig())
        kube = KubernetesBackend(kubeconfig=str(kubeconfig), namespaces=[namespace], operator=operator)
        self.deployer = KubernetesServing(kube, operator, self.store, ready_timeout=30, poll_interval=0.05)
        self.controller = FakeDeployments(fake_kube).__enter__()

    def run_uri(self, run_id: str) -> str:
        return str(self.store / SPEC_NAME / run_id)

    def gate(self, run_id: str, passed: bool) -> None:
        write_gate(Path(self.run_uri(run_id)), passed=passed)

    def close(self) -> None:
        self.controller.__exit__(None, None, None)


class Fake:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.deployer = FakeDeployer(self.store)

    def run_uri(self, run_id: str) -> str:
        return self.store.run_uri(SPEC_NAME, run_id)

    def gate(self, run_id: str, passed: bool) -> None:
        self.store.put(self.store.join(self.run_uri(run_id), "eval/gate.json"),
                       json.dumps({"runId": run_id, "passed": passed, "servingConfigSha256": served_config()}).encode())

    def close(self) -> None:
        pass


@pytest.fixture(params=["local", "kubernetes", "fake"])
def world(request, env, tmp_path):
    if request.param == "local":
        w = Local(env, tmp_path)
    elif request.param == "kubernetes":
        w = Kubernetes(env, tmp_path, request.getfixturevalue("fake_kube"))
    else:
        w = Fake()
    yield w
    w.close()


def deploy_request(world, run_id: str, serving_id: str = "s1", version: str | None = None,
                   config: str | None = None) -> DeployRequest:
    """A request to serve `run_id` over the test corpus (or over corpus `version`, presenting the
    serving-configuration hash `config`; by default the hash of what it serves)."""
    corpus = None
    if isinstance(world, Local):
        corpus = str(world.env.repo / "corpora" / "kb")
        assert sorted(p.name for p in Path(corpus).iterdir()) == sorted(CORPUS)
    version = version or corpus_version()
    return DeployRequest(finetune=finetune(), run_id=run_id, run_uri=world.run_uri(run_id), serving_id=serving_id,
                         lineage=Lineage(MD5, COMMIT), base_model=str(world.env.base) if isinstance(world, Local) else "hf://x",
                         serving_config_sha256=config or served_config(version), corpus_dir=corpus, corpus_version=version)


def settle(deployer, request: DeployRequest, limit: float = 300):
    """Call promote until the rollout is no longer `rolling_out` (what reconcile passes do, each
    after the time the deployer names): the first non-`rolling_out` result, with every event of
    the calls before it. Each call must return promptly: none may wait for the rollout itself."""
    import time
    from dataclasses import replace

    events: list = []
    deadline = time.monotonic() + limit
    while True:
        result = deployer.promote(request)
        events.extend(result.events)
        if result.outcome != "rolling_out":
            return replace(result, events=tuple(events))
        assert result.after is not None and result.after > 0, result
        assert time.monotonic() < deadline, f"still rolling out after {limit}s: {result.message}"
        time.sleep(min(result.after, 0.5))


def _wait_until_the_gateway_names(url: str, run_id: str, limit: float = 60) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + limit
    while True:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as resp:  # noqa: S310 - the test's own gateway
            if json.loads(resp.read()).get("runId") == run_id:
                return
        assert time.monotonic() < deadline, f"the gateway at {url} did not take the route to {run_id} in {limit}s"
        time.sleep(0.1)


def test_deployer_promotes_only_a_passed_run_and_is_idempotent(world):
    deployer = world.deployer
    assert isinstance(deployer, Deployer)
    assert deployer.current(SPEC_NAME) is None
    world.gate(RUN_A, passed=False)
    refused = deployer.promote(deploy_request(world, RUN_A))
    assert refused.outcome == "refused" and deployer.current(SPEC_NAME) is None
    assert [e["kind"] for e in refused.events] == ["deploy.refused"]
    world.gate(RUN_A, passed=True)
    promoted = settle(deployer, deploy_request(world, RUN_A))
    assert promoted.outcome == "promoted" and promoted.serving_run_id == RUN_A, promoted.message
    assert [e["kind"] for e in promoted.events] == ["deploy.started", "deploy.promoted"]
    current = deployer.current(SPEC_NAME)
    assert current is not None and current.run_id == RUN_A and current.healthy
    again = deployer.promote(deploy_request(world, RUN_A))
    assert again.outcome == "unchanged" and again.events == ()


def test_deployer_stop_and_rollback(world):
    deployer = world.deployer
    for run_id in (RUN_A, RUN_B):
        world.gate(run_id, passed=True)
    assert settle(deployer, deploy_request(world, RUN_A)).outcome == "promoted"
    assert settle(deployer, deploy_request(world, RUN_B, "s2")).serving_run_id == RUN_B
    back = deployer.rollback(SPEC_NAME)
    assert back.outcome == "rolled_back" and back.serving_run_id == RUN_A, back.message
    assert deployer.current(SPEC_NAME).run_id == RUN_A
    stopped = deployer.stop(SPEC_NAME)
    assert stopped.outcome == "stopped" and [e["kind"] for e in stopped.events] == ["deploy.stopped"]
    assert deployer.current(SPEC_NAME) is None
    assert deployer.stop(SPEC_NAME).events == ()  # nothing left to stop


def test_deployer_refuses_a_serving_configuration_the_run_was_not_evaluated_on(world):
    """The run passed its gate on one corpus version; a request to serve it over another (a new
    corpus commit, not yet evaluated) is refused and nothing changes, and so is a request whose
    presented hash is not what its own serving block and corpus version are."""
    deployer = world.deployer
    world.gate(RUN_A, passed=True)
    newer = deploy_request(world, RUN_A, version="git:" + "e" * 40)
    refused = deployer.promote(newer)
    assert refused.outcome == "refused" and deployer.current(SPEC_NAME) is None, refused.message
    assert [e["kind"] for e in refused.events] == ["deploy.refused"]
    lying = deploy_request(world, RUN_A, version="git:" + "e" * 40, config=served_config())
    assert deployer.promote(lying).outcome == "refused" and deployer.current(SPEC_NAME) is None
    promoted = settle(deployer, deploy_request(world, RUN_A))
    assert promoted.outcome == "promoted", promoted.message
    again = deployer.promote(newer)
    assert again.outcome == "refused" and again.serving_run_id == RUN_A
    assert deployer.current(SPEC_NAME).run_id == RUN_A


def test_a_rollout_in_progress_never_blocks_and_the_old_run_serves_until_it_is_done(world):
    """The reconcile loop never blocks on a rollout: promote of a new run returns at once
    (`rolling_out`, or done already), what served before stays the serving run and healthy until
    the new one is, and repeating the call finishes it."""
    import time

    deployer = world.deployer
    for run_id in (RUN_A, RUN_B):
        world.gate(run_id, passed=True)
    if isinstance(world, Fake):
        deployer.rolling[RUN_B] = 2
    assert settle(deployer, deploy_request(world, RUN_A)).outcome == "promoted"
    started = time.monotonic()
    first = deployer.promote(deploy_request(world, RUN_B, "s2"))
    assert time.monotonic() - started < 30, "promote waited for the rollout"
    assert first.outcome in ("rolling_out", "promoted"), first.message
    if first.outcome == "rolling_out":
        assert first.serving_run_id == RUN_A and [e["kind"] for e in first.events] == ["deploy.started"]
        current = deployer.current(SPEC_NAME)
        assert current.run_id == RUN_A and current.healthy
        if isinstance(world, Local):
            # in place (one process, the adapter loaded beside A's): once the gateway takes the new
            # route its /readyz names B before the switch is recorded; the process serves all along
            _wait_until_the_gateway_names(current.url, RUN_B)
            current = deployer.current(SPEC_NAME)
            assert current.run_id == RUN_A and current.healthy
    done = settle(deployer, deploy_request(world, RUN_B, "s2"))
    assert done.outcome == "promoted" and done.serving_run_id == RUN_B, done.message
    assert deployer.current(SPEC_NAME).run_id == RUN_B
