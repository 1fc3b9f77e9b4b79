"""In-memory fakes of every seam the reconciler touches (controller.seams, plus the clock, the
repo files and the data pipeline), in the spirit of httpx's MockTransport: each behaves like the
real implementation (the conformance suite in tests/seams runs the same cases against the fakes
and the real ones), and a test scripts what happens next (`finish`, `fail`, `preempt`, ...)
instead of waiting for a process.
"""
from __future__ import annotations

import hashlib
import io
import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from controller.seams import (
    CommitReport,
    DeployRequest,
    DeployResult,
    EvalRequest,
    EvalState,
    ManifestError,
    Phase,
    Run,
    RunManifest,
    RunNotFound,
    RunReason,
    RunState,
    Serving,
)
from controller.seams.store import MANIFEST
from controller.spec.finetune import FineTune


class FakeClock:
    """A clock the test moves by hand; `sleep` advances it instead of waiting."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.mono = 1000.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class MemoryStore:
    """An ArtifactStore in a dict. `broken` makes every call raise, like a dead object store."""

    def __init__(self, root: str = "mem://store") -> None:
        self.root = root
        self.files: dict[str, bytes] = {}
        self.broken: Exception | None = None

    def _check(self) -> None:
        if self.broken is not None:
            raise self.broken

    def run_uri(self, spec: str, run_id: str) -> str:
        return f"{self.root}/{spec}/{run_id}"

    def join(self, uri: str, rel: str) -> str:
        return f"{uri.rstrip('/')}/{rel.lstrip('/')}"

    def exists(self, uri: str) -> bool:
        self._check()
        return uri in self.files or any(k.startswith(uri.rstrip("/") + "/") for k in self.files)

    def get(self, uri: str) -> bytes:
        self._check()
        if uri not in self.files:
            raise FileNotFoundError(uri)
        return self.files[uri]

    def put(self, uri: str, data: bytes) -> None:
        self._check()
        self.files[uri] = bytes(data)

    def open(self, uri: str) -> AbstractContextManager[BinaryIO]:
        return nullcontext(io.BytesIO(self.get(uri)))

    def list(self, uri: str) -> list[str]:
        self._check()
        prefix = uri.rstrip("/") + "/"
        return sorted(k[len(prefix):] for k in self.files if k.startswith(prefix))

    def local_dir(self, uri: str) -> Path | None:
        return None

    def manifest(self, run_uri: str) -> RunManifest | None:
        uri = self.join(run_uri, MANIFEST)
        try:
            raw = self.get(uri)
        except FileNotFoundError:
            return None
        return RunManifest.parse(raw, uri)

    def get_verified(self, run_uri: str, rel: str, manifest: RunManifest) -> bytes:
        uri = self.join(run_uri, rel)
        if rel not in manifest.files:
            raise ManifestError(f"{uri}: {rel} is not in run {manifest.run_id}'s manifest")
        try:
            return manifest.verify(rel, self.get(uri), uri)
        except FileNotFoundError:
            raise ManifestError(f"{uri}: missing, though run {manifest.run_id}'s manifest lists it") from None

    def fetch(self, run_uri: str, dest: Path, manifest: RunManifest) -> Path:
        for rel in manifest.files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.get_verified(run_uri, rel, manifest))
        (dest / MANIFEST).write_bytes(self.get(self.join(run_uri, MANIFEST)))
        return dest

    # -- what a trainer would leave behind

    def write_run(self, run_uri: str, run_id: str, files: dict[str, bytes] | None = None) -> RunManifest:
        """A finished run: its files, then its manifest (last, as the trainer writes it)."""
        files = files if files is not None else {"model/adapter_model.safetensors": b"weights " + run_id.encode()}
        for rel, data in files.items():
            self.put(self.join(run_uri, rel), data)
        manifest = {"apiVersion": "ftops.dev/v1alpha1", "kind": "RunManifest", "runId": run_id,
                    "files": {rel: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for rel, d in files.items()},
                    "provenance": {"runId": run_id}}
        self.put(self.join(run_uri, MANIFEST), json.dumps(manifest, sort_keys=True).encode())
        found = self.manifest(run_uri)
        assert found is not None
        return found


@dataclass
class FakeBackend:
    """The Backend seam. Submitted runs stay PENDING until the test moves them."""

    store: MemoryStore | None = None
    name: str = "fake"
    runs: dict[str, RunState] = field(default_factory=dict)
    submitted: list[Run] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    log: dict[str, str] = field(default_factory=dict)
    instant: bool = False
    """Every submitted run finishes at once (for tests about what is run, not how)."""

    def submit(self, run: Run) -> RunState:
        state = self.runs.get(run.run_id)
        restart = state is not None and (state.phase is Phase.PREEMPTED or (
            state.phase is Phase.FAILED and state.reason != RunReason.CONFIG_ERROR))
        if state is not None and not restart:
            return state
        self.submitted.append(run)
        self.runs[run.run_id] = RunState(run.run_id, Phase.PENDING, RunReason.STARTING)
        if self.instant:
            self.finish(run)
        return self.runs[run.run_id]

    def status(self, run_id: str) -> RunState:
        if run_id not in self.runs:
            raise RunNotFound(f"run {run_id}: not known")
        return self.runs[run_id]

    def cancel(self, run_id: str) -> RunState:
        state = self.status(run_id)
        if state.finished:
            return state
        self.cancelled.append(run_id)
        self.runs[run_id] = RunState(run_id, Phase.FAILED, RunReason.CANCELLED, "cancelled by ftops")
        return self.runs[run_id]

    def logs(self, run_id: str, tail: int | None = None) -> str:
        self.status(run_id)
        lines = self.log.get(run_id, "").splitlines(keepends=True)
        return "".join(lines if tail is None else lines[-tail:])

    # -- scripting

    def set(self, run_id: str, phase: Phase, reason: str = "", message: str = "") -> None:
        self.runs[run_id] = RunState(run_id, phase, reason, message)

    def finish(self, run: Run) -> None:
        """The trainer succeeded: its artifacts and manifest are in the store."""
        assert self.store is not None
        self.store.write_run(run.config.output_dir, run.run_id)
        self.set(run.run_id, Phase.SUCCEEDED, RunReason.COMPLETE)


def passing_report(run_id: str, spec: FineTune, **metrics: float) -> dict:
    """A completed report (the evaluator's report.json shape) whose metrics meet every gate the
    spec sets; pass `metrics` (dotted names, e.g. `{"task.exact_match": 0.1}`) to fail one."""
    ev = spec.spec.evaluation
    values: dict[str, float] = {f"task.{ev.task.metric}": 1.0}
    if ev.format is not None:
        values["format.compliance"] = 1.0
    if ev.regression is not None:
        values["regression.drop"] = 0.0
    if ev.compare is not None:
        values["compare.fine-tuned.score"] = 1.0
        values.update({f"compare.{other}.score": 0.5 for other in ev.compare.must_beat})
    if ev.bias is not None:
        values["bias.gap"] = 0.0
    if ev.rag is not None:
        values.update({"rag.recallAtK": 1.0, "rag.citationAccuracy": 1.0, "rag.groundedness": 1.0})
    values.update(metrics)
    return {"runId": run_id, "status": "completed", "metrics": values}


@dataclass
class FakeEvaluator:
    """The Evaluator seam. A submitted evaluation stays RUNNING until the test completes it."""

    store: MemoryStore
    name: str = "fake"
    states: dict[str, EvalState] = field(default_factory=dict)
    submitted: list[EvalRequest] = field(default_factory=list)
    instant: bool = False
    """Every submitted evaluation completes at once with a report that passes the spec's gates."""

    def status(self, request: EvalRequest) -> EvalState | None:
        return self.states.get(request.eval_id)

    def submit(self, request: EvalRequest) -> EvalState:
        state = self.states.get(request.eval_id)
        restart = state is not None and (state.phase is Phase.PREEMPTED or (
            state.phase is Phase.FAILED and state.reason != RunReason.CONFIG_ERROR))
        if state is not None and not restart:
            return state
        self.submitted.append(request)
        self.states[request.eval_id] = EvalState(request.eval_id, Phase.RUNNING, RunReason.RUNNING)
        if self.instant:
            self.complete(request, passing_report(request.run_id, request.finetune))
        return self.states[request.eval_id]

    def cancel(self, request: EvalRequest) -> EvalState:
        state = self.states.get(request.eval_id)
        if state is None or state.finished:
            return state or EvalState(request.eval_id, Phase.FAILED, RunReason.CANCELLED, "no such evaluation")
        self.states[request.eval_id] = EvalState(request.eval_id, Phase.FAILED, RunReason.CANCELLED)
        return self.states[request.eval_id]

    def logs(self, request: EvalRequest, tail: int | None = None) -> str:
        return ""

    def complete(self, request: EvalRequest, report: dict) -> None:
        """The evaluation wrote its report into the run's folder of the store; like the real
        evaluator, it records the serving configuration it evaluated (eval.json's `serving`)."""
        if request.config.serving is not None and "servingConfig" not in report:
            report = {**report, "servingConfig": {"sha256": request.config.serving.config_sha256}}
        uri = self.store.join(request.config.run_uri, "eval/report.json")
        self.store.put(uri, json.dumps(report, sort_keys=True).encode())
        self.states[request.eval_id] = EvalState(request.eval_id, Phase.SUCCEEDED, RunReason.COMPLETE, "", uri)

    def fail(self, request: EvalRequest, reason: str = RunReason.TEMPORARY_FAILURE, message: str = "OOM") -> None:
        self.states[request.eval_id] = EvalState(request.eval_id, Phase.FAILED, reason, message)


@dataclass
class FakeDeployer:
    """The Deployer seam. `promote` checks the gate the way the real ones do (eval/gate.json in
    the store, for this exact run and this serving configuration); `failing` runs never get ready
    and are rolled back."""

    store: MemoryStore
    name: str = "fake"
    serving: dict[str, Serving] = field(default_factory=dict)
    history: dict[str, list[str]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    requests: list[DeployRequest] = field(default_factory=list)
    rolling: dict[str, int] = field(default_factory=dict)
    """run id -> how many more promote calls come back `rolling_out` before it serves (what the
    real deployers do while a process starts or a canary is analysed)."""
    started: set[str] = field(default_factory=set)

    def current(self, spec: str) -> Serving | None:
        return self.serving.get(spec)

    def _event(self, kind: str, spec: str, run_id: str | None, message: str = "") -> dict:
        n = sum(len(v) for v in self.history.values())
        return {"kind": kind, "spec": spec, "runId": run_id, "time": f"t{n}-{len(self.requests)}", "message": message,
                "backend": self.name}

    def promote(self, request: DeployRequest) -> DeployResult:
        self.requests.append(request)
        spec, run_id = request.spec, request.run_id
        before = self.serving.get(spec)
        prev = before.run_id if before else None
        try:
            gate = json.loads(self.store.get(self.store.join(request.run_uri, "eval/gate.json")))
        except FileNotFoundError:
            gate = {}
        if gate.get("runId") != run_id or gate.get("passed") is not True:
            return DeployResult("refused", prev, (self._event("deploy.refused", spec, run_id, "gate"),), message="gate not passed")
        from controller.identity import serving_config, serving_config_sha256

        own = serving_config_sha256(serving_config(request.finetune, request.corpus_version))
        if gate.get("servingConfigSha256") != request.serving_config_sha256 or own != request.serving_config_sha256:
            return DeployResult("refused", prev, (self._event("deploy.refused", spec, run_id, "serving config"),),
                                message="the gate passed on another serving configuration")
        if before is not None and before.run_id == run_id and before.serving_id == request.serving_id and before.healthy:
            return DeployResult("unchanged", run_id, (), before.url, "already serving")
        if self.rolling.get(run_id, 0) > 0:
            self.rolling[run_id] -= 1
            events = () if run_id in self.started else (self._event("deploy.started", spec, run_id),)
            self.started.add(run_id)
            return DeployResult("rolling_out", prev, events, before.url if before else None, f"rolling out run {run_id}",
                                after=2.0)
        if run_id in self.failing:
            return DeployResult("rolled_back", prev, (self._event("deploy.started", spec, run_id),
                                                      self._event("deploy.rolled_back", spec, run_id, "not ready")),
                                message=f"run {run_id} failed readiness; {prev or 'nothing'} serves")
        self.serving[spec] = Serving(spec, run_id, True, f"http://fake/{spec}", "", request.serving_id)
        self.history.setdefault(spec, []).append(run_id)
        started = () if run_id in self.started else (self._event("deploy.started", spec, run_id),)
        self.started.discard(run_id)
        return DeployResult("promoted", run_id, (*started, self._event("deploy.promoted", spec, run_id)),
                            f"http://fake/{spec}", f"run {run_id} is serving")

    def stop(self, spec: str) -> DeployResult:
        before = self.serving.pop(spec, None)
        if before is None:
            return DeployResult("stopped", None, (), message="nothing was serving")
        return DeployResult("stopped", None, (self._event("deploy.stopped", spec, before.run_id),), message="stopped")

    def rollback(self, spec: str, to: str | None = None) -> DeployResult:
        served = self.history.get(spec, [])
        current = self.serving.get(spec)
        earlier = [r for r in served if current is None or r != current.run_id]
        target = to if to is not None else (earlier[-1] if earlier else None)
        if target is None or target not in served:
            from controller.errors import PermanentError

            raise PermanentError(f"rollback: spec '{spec}' has no earlier run to return to")
        self.serving[spec] = Serving(spec, target, True, f"http://fake/{spec}")
        return DeployResult("rolled_back", target, (self._event("deploy.rolled_back", spec, target),))


@dataclass
class FakeRepoFiles:
    """The repo's files at a commit: empty folders under `root`, and corpus versions by path."""

    root: Path
    corpus_versions: dict[str, str] = field(default_factory=dict)

    def checkout(self, commit: str) -> Path:
        path = self.root / "checkouts" / commit
        path.mkdir(parents=True, exist_ok=True)
        return path

    def folder(self, commit: str, rel: str, field: str) -> Path:
        path = self.root / "trees" / commit / rel
        path.mkdir(parents=True, exist_ok=True)
        return path

    def corpus_version(self, commit: str, rel: str) -> str | None:
        return self.corpus_versions.get(rel, f"git:{hashlib.sha1(rel.encode()).hexdigest()}")


@dataclass
class FakeData:
    """The data pipeline: prepared splits on disk, a review, and DataReady as scripted."""

    root: Path
    ready: bool = True
    reason: str = "DataReady"
    message: str = "340 train / 60 test examples, 40 of 400 reviewed"
    error: Exception | None = None
    calls: list[str] = field(default_factory=list)

    def prepare(self, commit: str, finetune: FineTune):
        from controller.data.pipeline import DataReady
        from controller.data.prepare import Prepared
        from controller.data.review import ReviewStatus
        from controller.reconcile.context import PreparedData

        self.calls.append(commit)
        if self.error is not None:
            raise self.error
        folder = self.root / "prepared" / finetune.metadata.name / commit[:12]
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            (folder / f"{split}.jsonl").write_text("{}\n")
        manifest = {"counts": {"train": 340, "test": 60},
                    "splits": {s: {"sha256": hashlib.sha256(b"{}\n").hexdigest()} for s in ("train", "test")}}
        review = ReviewStatus(examples=400, sample=40, reviewed=40 if self.ready else 0, approved=40 if self.ready else 0,
                              sample_fraction=0.1, min_approval=0.95)
        return PreparedData(Prepared(folder, manifest), review, DataReady(self.ready, self.reason, self.message))


class SteppedClock:
    """Simulated time for tests with threads: `sleep` parks the calling thread until the test
    moves time past its deadline with `step`, which returns only once every thread that was due
    has run its next iteration and parked again. Each participant's loop therefore advances in
    lockstep with simulated time, however loaded the machine is: nothing depends on wall-clock
    timing."""

    def __init__(self, participants: int, start: float = 1000.0) -> None:
        import threading

        self.participants = participants
        self.now = start
        self.deadlines: list[float] = []
        self.closed = False
        self._cond = threading.Condition()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        with self._cond:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._cond:
            deadline = self.now + max(seconds, 1e-9)
            self.deadlines.append(deadline)
            self._cond.notify_all()
            while self.now < deadline and not self.closed:
                self._cond.wait()
            self.deadlines.remove(deadline)
            self._cond.notify_all()

    def _settled(self) -> bool:
        return self.closed or (len(self.deadlines) >= self.participants and all(d > self.now for d in self.deadlines))

    def settle(self, timeout: float = 120) -> None:
        """Until every participant sleeps with a deadline in the future (a hang guard, not a
        timing assertion: a thread that never parks again fails the test)."""
        with self._cond:
            if not self._cond.wait_for(self._settled, timeout=timeout):
                raise AssertionError(f"{len(self.deadlines)} of {self.participants} threads parked at t={self.now}")

    def step(self, seconds: float) -> None:
        self.settle()
        with self._cond:
            self.now += seconds
            self._cond.notify_all()
        self.settle()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


@dataclass
class FakeNotifier:
    """The Notifier seam: keeps every report; `failures` are raised by the next calls, in order
    (a TemporaryError is what the GitHub notifier raises on a 5xx)."""

    name: str = "fake"
    reports: list[CommitReport] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)
    calls: int = 0

    def notify(self, report: CommitReport) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.reports and self.reports[-1] == report:
            return  # the same report twice shows once, as on GitHub
        self.reports.append(report)

    def latest(self, spec: str) -> CommitReport | None:
        return next((r for r in reversed(self.reports) if r.spec == spec), None)
