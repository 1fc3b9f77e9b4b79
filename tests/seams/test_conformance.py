"""One conformance suite per seam, run against every implementation: the real ones (a local
directory, local processes, the Kubernetes backend against the fake API server) and the
in-memory fakes the step tests use, so a fake that drifts from the real thing fails here.

Each implementation comes with a small driver that makes the world do something (a process
finishes, a Job's pods fail) the way that implementation sees it happen."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # fakes, fakekube
sys.path.insert(0, str(TESTS / "render"))  # render_sample

from fakekube.fixtures import fake_kube, kubelet  # noqa: E402,F401
from fakeprovider.fixtures import fake_provider  # noqa: E402,F401
from fakes import FakeBackend, FakeEvaluator, MemoryStore  # noqa: E402
from render_sample import finetune, operator, render_input  # noqa: E402

from controller.artifacts import FsspecStore  # noqa: E402
from controller.evalconfig import EvalConfig, EvalData  # noqa: E402
from controller.seams import (  # noqa: E402
    ArtifactStore,
    Backend,
    EvalRequest,
    Evaluator,
    Lineage,
    ManifestError,
    Phase,
    Run,
    RunNotFound,
    RunReason,
)

# ----------------------------------------------------------------------------- ArtifactStore


def write_run(store: ArtifactStore, run_uri: str, run_id: str, files: dict[str, bytes]) -> None:
    """What the trainer leaves: the files, then the manifest, through the store's own API."""
    for rel, data in files.items():
        store.put(store.join(run_uri, rel), data)
    manifest = {"runId": run_id, "files": {rel: {"sha256": hashlib.sha256(d).hexdigest()} for rel, d in files.items()},
                "provenance": {"runId": run_id}}
    store.put(store.join(run_uri, "manifest.json"), json.dumps(manifest).encode())


@pytest.fixture(params=["directory", "memory"])
def store(request, tmp_path) -> ArtifactStore:
    return FsspecStore(str(tmp_path / "store")) if request.param == "directory" else MemoryStore()


def test_store_files_round_trip_and_list_relative(store):
    assert isinstance(store, ArtifactStore)
    run = store.run_uri("spec", "abc123")
    assert run.endswith("/spec/abc123")
    store.put(store.join(run, "eval/report.json"), b"{}")
    store.put(store.join(run, "model/a.safetensors"), b"A")
    store.put(store.join(run, "model/a.safetensors"), b"AA")  # replaced whole
    assert store.get(store.join(run, "model/a.safetensors")) == b"AA"
    assert store.list(run) == ["eval/report.json", "model/a.safetensors"]
    assert store.list(store.join(run, "eval")) == ["report.json"]
    assert store.list(store.run_uri("spec", "nothing")) == []
    assert store.exists(store.join(run, "eval/report.json")) and not store.exists(store.join(run, "nope"))
    with pytest.raises(FileNotFoundError):
        store.get(store.join(run, "nope"))
    with store.open(store.join(run, "eval/report.json")) as fh:
        assert fh.read() == b"{}"


def test_store_manifest_marks_a_finished_run_and_every_read_is_verified(store, tmp_path):
    run = store.run_uri("spec", "abc123")
    assert store.manifest(run) is None  # not finished
    write_run(store, run, "abc123", {"model/w.safetensors": b"weights", "metrics.jsonl": b"{}\n"})
    manifest = store.manifest(run)
    assert manifest is not None and manifest.run_id == "abc123" and set(manifest.files) == {"model/w.safetensors", "metrics.jsonl"}
    assert store.get_verified(run, "model/w.safetensors", manifest) == b"weights"
    fetched = store.fetch(run, tmp_path / "fetched", manifest)
    assert (fetched / "model" / "w.safetensors").read_bytes() == b"weights" and (fetched / "manifest.json").exists()
    store.put(store.join(run, "model/w.safetensors"), b"tampered")
    with pytest.raises(ManifestError, match="changed after training"):
        store.get_verified(run, "model/w.safetensors", manifest)
    with pytest.raises(ManifestError, match="changed after training"):
        store.fetch(run, tmp_path / "again", manifest)
    with pytest.raises(ManifestError, match="not in run abc123's manifest"):
        store.get_verified(run, "other.bin", manifest)
    store.put(store.join(run, "manifest.json"), b"{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        store.manifest(run)


# ----------------------------------------------------------------------------- Backend

STAND_IN = textwrap.dedent(
    """
    import json, pathlib, signal, sys, time
    cfg = json.load(open(sys.argv[sys.argv.index("--config") + 1]))
    control = pathlib.Path(cfg["outputDir"]) / "exit-code"
    print("started", cfg["runId"], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    while not control.exists():
        time.sleep(0.01)
    sys.exit(int(control.read_text()))
    """
)


class LocalDriver:
    """The local backend running a stand-in trainer that exits as told."""

    def __init__(self, tmp: Path) -> None:
        from controller.backends.local import LocalBackend

        program = tmp / "stand_in.py"
        program.write_text(STAND_IN)
        self.out = tmp / "out"
        self.backend = LocalBackend(tmp / "runs", command=[sys.executable, str(program), "--config", "{config}"])

    def run(self) -> Run:
        from controller.runconfig import RunConfig

        ft = finetune()
        rc = render_input(ft).run_config
        self.out.mkdir(parents=True, exist_ok=True)
        rc = RunConfig.model_validate_json(rc.model_copy(update={"output_dir": str(self.out)}).model_dump_json(by_alias=True))
        return Run(rc, ft, Lineage("0" * 32, "a" * 40))

    def exit(self, run: Run, code: int) -> None:
        (self.out / "exit-code").write_text(str(code))
        self.backend.wait(run.run_id, timeout=60)

    def started(self) -> int:
        return sum(json.loads((p / "attempts.json").read_text())["attempts"] for p in (self.backend.root).iterdir())

    def close(self) -> None:
        for spawn in self.backend.root.glob("*/spawn.json"):
            try:
                os.killpg(json.loads(spawn.read_text())["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class KubernetesDriver:
    """The kubernetes backend against the fake API server; the kubelet fake moves the Job."""

    def __init__(self, fake, kubelet, tmp: Path) -> None:
        from controller.backends.kubernetes import KubernetesBackend

        fake.ensure_namespace("ftops-team-a")
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(fake.kubeconfig())
        self.fake, self.kubelet = fake, kubelet
        self.backend = KubernetesBackend(kubeconfig=str(kubeconfig), namespaces=["ftops-team-a"], operator=operator())

    def run(self) -> Run:
        inp = render_input()
        return Run(inp.run_config, inp.finetune, Lineage(inp.data_md5, inp.git_commit))

    def _job(self, run: Run) -> str:
        return self.backend.find(run.run_id)["metadata"]["name"]

    def exit(self, run: Run, code: int) -> None:
        name = self._job(run)
        if code == 0:
            self.kubelet.succeed("ftops-team-a", name)
        else:
            self.kubelet.fail("ftops-team-a", name)

    def started(self) -> int:
        return len(self.fake.list("batch/v1", "Job", "ftops-team-a")["items"])

    def close(self) -> None:
        pass


class FakeDriver:
    def __init__(self) -> None:
        self.backend = FakeBackend(MemoryStore())

    def run(self) -> Run:
        inp = render_input()
        return Run(inp.run_config, inp.finetune, Lineage(inp.data_md5, inp.git_commit))

    def exit(self, run: Run, code: int) -> None:
        self.backend.set(run.run_id, Phase.SUCCEEDED if code == 0 else Phase.FAILED,
                         RunReason.COMPLETE if code == 0 else RunReason.EXIT)

    def started(self) -> int:
        return len(self.backend.submitted)

    def close(self) -> None:
        pass


class ApiDriver:
    """The api backend against the fake provider over HTTP; the provider's own steps move the job."""

    def __init__(self, served, tmp: Path) -> None:
        from fakeprovider.fixtures import KEY_ENV, api_run

        from controller.backends.api_finetune import ApiFineTuneBackend
        from controller.catalog import load_operator_config

        self.served, self.tmp, self.make_run = served, tmp, api_run
        self.backend = ApiFineTuneBackend(tmp / "api", MemoryStore(), load_operator_config(None),
                                          env={KEY_ENV: served.provider.api_keys[0]})

    def run(self) -> Run:
        return self.make_run(self.tmp / "data")

    def exit(self, run: Run, code: int) -> None:
        provider = self.served.provider
        if code == 0:
            provider.settle()
        else:
            [job] = provider.jobs_for_run(run.run_id)
            provider.fail_job(job.id, "The job failed due to an internal error.")

    def started(self) -> int:
        return len(self.served.provider.jobs)

    def close(self) -> None:
        pass


@pytest.fixture(params=["local", "kubernetes", "fake", "api"])
def driver(request, tmp_path):
    if request.param == "local":
        d = LocalDriver(tmp_path)
    elif request.param == "kubernetes":
        d = KubernetesDriver(request.getfixturevalue("fake_kube"), request.getfixturevalue("kubelet"), tmp_path)
    elif request.param == "api":
        d = ApiDriver(request.getfixturevalue("fake_provider"), tmp_path)
    else:
        d = FakeDriver()
    yield d
    d.close()


def test_backend_submit_is_idempotent_and_status_follows_the_run(driver):
    backend = driver.backend
    assert isinstance(backend, Backend)
    run = driver.run()
    with pytest.raises(RunNotFound):
        backend.status(run.run_id)
    first = backend.submit(run)
    assert first.run_id == run.run_id and first.phase in (Phase.PENDING, Phase.RUNNING)
    again = backend.submit(run)
    assert again.phase in (Phase.PENDING, Phase.RUNNING) and driver.started() == 1
    driver.exit(run, 0)
    assert backend.status(run.run_id).phase is Phase.SUCCEEDED
    assert backend.submit(run).phase is Phase.SUCCEEDED and driver.started() == 1  # finished: not started again
    assert isinstance(backend.logs(run.run_id), str)


def test_backend_cancel_stops_a_run_and_unknown_runs_are_not_found(driver):
    backend = driver.backend
    run = driver.run()
    with pytest.raises(RunNotFound):
        backend.logs(run.run_id)
    backend.submit(run)
    state = backend.cancel(run.run_id)
    assert state.phase is Phase.FAILED and state.reason == RunReason.CANCELLED
    if not isinstance(driver, KubernetesDriver):  # a cancelled Job is deleted, so it is gone
        assert backend.status(run.run_id).reason == RunReason.CANCELLED


def test_backend_a_failed_run_is_failed_with_a_reason(driver):
    backend = driver.backend
    run = driver.run()
    backend.submit(run)
    driver.exit(run, 1)
    state = backend.status(run.run_id)
    assert state.phase is Phase.FAILED and state.reason and state.reason != RunReason.CONFIG_ERROR


# ----------------------------------------------------------------------------- Evaluator

EVAL_STAND_IN = textwrap.dedent(
    """
    import json, pathlib, sys
    cfg = json.load(open(sys.argv[sys.argv.index("--config") + 1]))
    run = pathlib.Path(cfg["runUri"])
    code = int((run / "eval-exit").read_text()) if (run / "eval-exit").exists() else 0
    if code == 0:
        (run / "eval").mkdir(parents=True, exist_ok=True)
        (run / "eval" / "report.json").write_text(json.dumps({"runId": cfg["runId"], "status": "completed"}))
        (run / "eval" / "ftops-eval.json").write_text(json.dumps({"evalId": cfg["evalId"]}))
    sys.exit(code)
    """
)


class LocalEvalDriver:
    def __init__(self, tmp: Path) -> None:
        from controller.backends.local import LocalEvaluator

        program = tmp / "eval_stand_in.py"
        program.write_text(EVAL_STAND_IN)
        self.store = FsspecStore(str(tmp / "store"))
        self.root = Path("/")
        self.evaluator = LocalEvaluator(tmp / "evals", command=[sys.executable, str(program), "--config", "{config}"])

    def outcome(self, request: EvalRequest, code: int) -> None:
        """The next attempt exits `code`; wait for the current one to end."""
        Path(request.config.run_uri, "eval-exit").write_text(str(code))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.evaluator.status(request)
            if state is not None and state.finished:
                return
            time.sleep(0.05)

    def close(self) -> None:
        for spawn in self.evaluator.root.glob("*/spawn.json"):
            try:
                os.killpg(json.loads(spawn.read_text())["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class KubernetesEvalDriver:
    """The Kubernetes evaluator against the fake API server, with an in-memory object store
    (fsspec's memory://) standing for the bucket: the scripted kubelet moves the Job, and a
    finished evaluation leaves its report and marker in the store, as the evaluation pod does."""

    NS = "ftops-team-a"

    def __init__(self, fake, kubelet, tmp: Path) -> None:
        import uuid

        from controller.backends.kubernetes import KubernetesBackend
        from controller.backends.kubernetes_eval import KubernetesEvaluator

        fake.ensure_namespace(self.NS)
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(fake.kubeconfig())
        self.fake, self.kubelet, self.root = fake, kubelet, tmp
        (tmp / "data").mkdir()
        (tmp / "data" / "test.jsonl").write_text('{"messages": []}\n')
        (tmp / "repo").mkdir()
        (tmp / "repo" / "README.md").write_text("the repository at the commit\n")
        self.store = FsspecStore(f"memory://ftops-{uuid.uuid4().hex[:8]}")
        op = operator()
        backend = KubernetesBackend(kubeconfig=str(kubeconfig), namespaces=[self.NS], operator=op, store=self.store)
        self.evaluator = KubernetesEvaluator(backend, self.store, op)

    def _job(self, request: EvalRequest) -> str:
        from controller.render import evaluation_names

        return evaluation_names(request.finetune.name, request.eval_id)["job"]

    def outcome(self, request: EvalRequest, code: int) -> None:
        name = self._job(request)
        if code == 0:
            run_uri = request.config.run_uri
            self.store.put(self.store.join(run_uri, "eval/report.json"),
                           json.dumps({"runId": request.run_id, "status": "completed"}).encode())
            self.store.put(self.store.join(run_uri, "eval/ftops-eval.json"), json.dumps({"evalId": request.eval_id}).encode())
            self.kubelet.succeed(self.NS, name)
        elif code == 78:
            self.kubelet.fail(self.NS, name, "PodFailurePolicy",
                              f"Container evaluator for pod {self.NS}/{name}-x failed with exit code 78 matching FailJob rule at index 1")
        else:
            self.kubelet.fail(self.NS, name, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    def jobs(self) -> list[dict]:
        return self.fake.list("batch/v1", "Job", self.NS)["items"]


class FakeEvalDriver:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.evaluator = FakeEvaluator(self.store)
        self.root = Path("/")

    def outcome(self, request: EvalRequest, code: int) -> None:
        if code == 0:
            self.evaluator.complete(request, {"runId": request.run_id, "status": "completed"})
        else:
            self.evaluator.fail(request, RunReason.CONFIG_ERROR if code == 78 else RunReason.TEMPORARY_FAILURE)


@pytest.fixture(params=["local", "kubernetes", "fake"])
def eval_driver(request, tmp_path):
    if request.param == "kubernetes":
        d = KubernetesEvalDriver(request.getfixturevalue("fake_kube"), request.getfixturevalue("kubelet"), tmp_path)
    else:
        d = LocalEvalDriver(tmp_path) if request.param == "local" else FakeEvalDriver()
    yield d
    if hasattr(d, "close"):
        d.close()


def eval_request(store: ArtifactStore, eval_id: str = "e1e1e1e1e1e1", root: Path = Path("/")) -> EvalRequest:
    ft = finetune()
    run_uri = store.run_uri(ft.name, "abcdef012345")
    local = store.local_dir(run_uri)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
    config = EvalConfig(eval_id=eval_id, run_id="abcdef012345", spec_name=ft.name, run_uri=run_uri, finetune=ft,
                        data=EvalData(test=str(root / "data" / "test.jsonl")), repo_root=str(root / "repo"))
    return EvalRequest(config, ft, Lineage("0" * 32, "a" * 40))


def test_evaluator_runs_once_per_eval_id_and_reports_where_the_report_is(eval_driver):
    evaluator = eval_driver.evaluator
    assert isinstance(evaluator, Evaluator)
    request = eval_request(eval_driver.store, root=eval_driver.root)
    assert evaluator.status(request) is None
    assert evaluator.submit(request).phase in (Phase.PENDING, Phase.RUNNING)
    eval_driver.outcome(request, 0)
    done = evaluator.status(request)
    assert done.phase is Phase.SUCCEEDED and done.report_uri is not None
    assert json.loads(eval_driver.store.get(done.report_uri))["runId"] == "abcdef012345"
    assert evaluator.submit(request).phase is Phase.SUCCEEDED  # never evaluated twice
    other = eval_request(eval_driver.store, "f2f2f2f2f2f2", eval_driver.root)  # changed gates: a new evaluation
    assert evaluator.status(other) is None


def test_evaluator_a_temporary_failure_starts_again_and_a_config_error_does_not(eval_driver):
    evaluator = eval_driver.evaluator
    request = eval_request(eval_driver.store, root=eval_driver.root)
    evaluator.submit(request)
    eval_driver.outcome(request, 75)
    failed = evaluator.status(request)
    assert failed.phase is Phase.FAILED and failed.reason == RunReason.TEMPORARY_FAILURE
    assert evaluator.submit(request).phase in (Phase.PENDING, Phase.RUNNING)  # started again
    eval_driver.outcome(request, 78)
    config_error = evaluator.status(request)
    assert config_error.phase is Phase.FAILED and config_error.reason == RunReason.CONFIG_ERROR
    assert evaluator.submit(request).reason == RunReason.CONFIG_ERROR  # not started again
