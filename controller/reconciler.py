"""The reconciler: observe git and the world, plan, run the step chain, record, report.

One pass (`Reconciler.reconcile_once`) reads the specs at the exact commit of the tracked
revision and, for each spec, runs the chain data -> train -> evaluate -> gate -> deploy. Every
step is idempotent and keyed by content hashes, so a pass after a crash at any point redoes
nothing that was done and creates no duplicate: the run id names the run everywhere (backend,
artifact directory, ledger), and each fact is appended to the ledger with an idempotency key.

Failures are classified (controller.errors): a TemporaryError is retried with capped
exponential backoff; a PermanentError stalls the spec until its content (spec blob or data
version) changes. One spec's failure never blocks another's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from controller.backends.base import Backend, Phase, Run, RunNotFound
from controller.catalog import OperatorConfig, load_operator_config
from controller.errors import FtopsError, PermanentError, TemporaryError
from controller.fsutil import read_json as _read_json
from controller.fsutil import sha256_file as _sha256
from controller.fsutil import write_json_atomic as _write_json
from controller.identity import eval_id, run_id, serving_id
from controller.ledger import Ledger
from controller.render import template_version
from controller.runconfig import Distributed, RunBaseModel, RunConfig, RunData
from controller.source import CommitInfo, GitSource, SpecAtRev, SpecCache, corpus_version, load_specs_incremental
from controller.spec.finetune import FineTune
from controller.status import (
    DATA_READY,
    DEPLOYED,
    EVALUATED,
    GATE_PASSED,
    STALLED,
    TRAINED,
    Condition,
    Reason,
    SpecStatus,
    set_condition,
    summarize,
)

log = logging.getLogger("ftops.reconciler")

BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 600.0
CRASH_ENV = "FTOPS_CRASH_AT"
"""Test hook for the crash matrix: SIGKILL this process at the named step boundary."""


def crash_point(name: str) -> None:
    """kill -9 ourselves at a step boundary when asked (tests prove a restart loses nothing)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Home:
    """Where the controller keeps everything it owns on this machine."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def status(self) -> Path:
        return self.root / "status"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def serve(self) -> Path:
        return self.root / "serve"

    def run_dir(self, spec: str, run: str) -> Path:
        return self.store / spec / run


@dataclass
class ControllerConfig:
    repo: str
    home: Path
    rev: str = "main"
    operator_config: str | None = None
    max_concurrent_runs: int = 2
    max_runs_per_owner: int = 1
    allow_delete_all: bool = False
    allowed_signers: Path | None = None
    """Signed-commit mode: only commits signed by a key in this git allowed-signers file act."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_cap_s: float = BACKOFF_CAP_S
    resync_seconds: float = 300
    """A settled spec (Ready, nothing changed) is re-checked against the world this often."""


# ----------------------------------------------------------------------------- step results


@dataclass(frozen=True)
class StepResult:
    outcome: Literal["done", "waiting", "skipped"]
    requeue_after: float | None = None


DONE = StepResult("done")


def waiting(seconds: float = 2.0) -> StepResult:
    return StepResult("waiting", seconds)


@dataclass
class SpecContext:
    """Everything one spec's steps share during one pass."""

    state: SpecAtRev
    spec: FineTune
    commit: CommitInfo
    status: SpecStatus
    run_id: str
    eval_id: str
    serving_id: str
    corpus_version: str | None
    prepared: Any = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.metadata.name

    def set(self, type_: str, status: str, reason: str, message: str = "") -> None:
        self.status = _with(self.status, Condition(type_, status, reason, message, self.commit.sha))  # type: ignore[arg-type]


def _with(status: SpecStatus, condition: Condition) -> SpecStatus:
    return SpecStatus(
        status.name,
        set_condition(status.conditions, condition),
        status.observed_revision,
        status.run_id,
        status.serving_run_id,
        status.message,
    )


# ----------------------------------------------------------------------------- the reconciler


@dataclass
class PassResult:
    commit: str | None
    statuses: dict[str, SpecStatus]
    requeue_after: float | None
    error: str | None = None


class Reconciler:
    """observe -> plan -> apply -> status -> ledger, for every spec at the tracked revision."""

    def __init__(self, config: ControllerConfig, backend: Backend, ledger: Ledger | None = None,
                 source: GitSource | None = None, deployer: Any = None, metrics: Any = None) -> None:
        self.config = config
        self.home = Home(Path(config.home))
        self.backend = backend
        self.ledger = ledger or Ledger(self.home.ledger)
        self.source = source or GitSource(config.repo, cache_dir=self.home.root / "git")
        self.operator: OperatorConfig = load_operator_config(config.operator_config)
        self.cache = SpecCache()
        self.deployer = deployer
        self.metrics = metrics
        self.template_version = template_version()
        for folder in (self.home.status, self.home.state, self.home.store):
            folder.mkdir(parents=True, exist_ok=True)
        self._statuses: dict[str, SpecStatus] | None = None  # write-through caches of the files in home
        self._states: dict[str, dict] = {}
        self._specs: tuple[str, dict[str, SpecAtRev]] | None = None
        self._keys: dict[str, tuple[SpecAtRev, str]] = {}

    # -- one pass ------------------------------------------------------------------------------

    def reconcile_once(self) -> PassResult:
        started = time.monotonic()
        try:
            self.source.refresh()
            head = self.source.resolve(self.config.rev)
        except FtopsError as exc:
            return self._source_unavailable(str(exc))
        commit = self._verified_commit(head)
        if commit is None:
            return PassResult(None, self.load_statuses(), None, "no verified commit yet: nothing is reconciled")
        info = self.source.commit_info(commit)
        specs = load_specs_incremental(self.source, self._specs, commit, self.cache, sorted(self.operator.gpus))
        self._specs = (commit, specs)
        known = self.load_statuses()
        by_name: dict[str, SpecAtRev] = {}
        for state in specs.values():
            name = state.loaded.spec.metadata.name if state.loaded.spec else Path(state.path).stem
            by_name[name] = state

        requeue: list[float] = []
        statuses: dict[str, SpecStatus] = {}
        deleted = [name for name in known if name not in by_name]
        if deleted and not by_name and known and not self.config.allow_delete_all:
            message = (f"commit {commit[:12]} deletes every spec ({len(known)}); refusing to prune anything. "
                       "Restore the specs, or run the controller with --allow-delete-all to confirm")
            log.error(message)
            for name, status in known.items():
                statuses[name] = self._save(_with(status, Condition(STALLED, "True", "DeleteAllRefused", message, commit)))
            return PassResult(commit, statuses, None, message)
        for name in deleted:
            self._prune(name, commit)

        for name, state in sorted(by_name.items()):
            try:
                status, again = self._reconcile_spec(name, state, info, known.get(name))
            except Exception as exc:  # one spec never blocks the others
                log.exception("spec %s: unexpected error", name)
                previous = known.get(name) or SpecStatus(name)
                status = _with(previous, Condition(STALLED, "True", "InternalError", f"{type(exc).__name__}: {exc}", commit))
                again = BACKOFF_BASE_S
            statuses[name] = self._save(status) if status != known.get(name) else status
            if again is not None:
                requeue.append(again)
        log.info(json.dumps({"event": "reconciled", "commit": commit, "specs": len(statuses),
                             "seconds": round(time.monotonic() - started, 3)}))
        return PassResult(commit, statuses, min(requeue) if requeue else None)

    def _source_unavailable(self, message: str) -> PassResult:
        """Git is down or the revision is bad: say so on every spec, change nothing else."""
        statuses = {}
        for name, status in self.load_statuses().items():
            statuses[name] = self._save(_with(status, Condition("SourceAvailable", "False", Reason.SOURCE_UNAVAILABLE, message,
                                                                 status.observed_revision)))
        log.warning(json.dumps({"event": "source_unavailable", "message": message}))
        return PassResult(None, statuses, BACKOFF_BASE_S, message)

    def _verified_commit(self, head: str) -> str | None:
        """In signed-commit mode, the newest verified commit; otherwise `head`."""
        if self.config.allowed_signers is None:
            return head
        state = self._read_state("_controller")
        if self._signature_ok(head):
            self._write_state("_controller", {**state, "lastVerifiedCommit": head})
            return head
        log.warning(json.dumps({"event": "unsigned_commit", "commit": head, "kept": state.get("lastVerifiedCommit")}))
        return state.get("lastVerifiedCommit")

    def _signature_ok(self, sha: str) -> bool:
        signers = Path(self.config.allowed_signers).resolve()  # type: ignore[arg-type]
        done = subprocess.run(
            ["git", "-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", sha],
            cwd=self.source.repo, capture_output=True, text=True,
        )
        return done.returncode == 0

    # -- one spec ------------------------------------------------------------------------------

    def _reconcile_spec(self, name: str, state: SpecAtRev, info: CommitInfo,
                        previous: SpecStatus | None) -> tuple[SpecStatus, float | None]:
        valid = state.loaded.spec is not None and state.data is not None and state.data.known
        content_key = self._memo_content_key(name, state, info.sha) if valid else ""
        retry = self._read_state(name) if valid else {}
        if valid and previous is not None:
            # The steady state of a big repo: nothing this spec depends on changed. Do nothing.
            if retry.get("settledKey") == content_key and time.time() - retry.get("settledAt", 0) < self.config.resync_seconds:
                return previous, None
            if retry.get("stalledKey") == content_key and previous.is_true(STALLED):
                return previous, None
        base = SpecStatus(name, tuple(c for c in (previous.conditions if previous else ()) if c.type not in (STALLED, "SourceAvailable")),
                          info.sha, previous.run_id if previous else None, previous.serving_run_id if previous else None)
        if not valid:
            issues = [i.format() for i in state.loaded.errors]
            if state.data is not None and not state.data.known:
                issues.append(state.data.error or f"{state.data.path}: no version at {info.sha[:12]}")
            message = "; ".join(issues[:5]) or "invalid spec"
            return _with(base, Condition(STALLED, "True", Reason.SPEC_INVALID, message, info.sha)), None

        spec = state.loaded.spec
        assert spec is not None and state.data is not None
        if retry.get("stalledKey") == content_key:
            message = retry.get("lastError", "stalled")
            return _with(base, Condition(STALLED, "True", retry.get("reason", "PermanentError"), message, info.sha)), None
        if retry.get("retryKey") == content_key and retry.get("retryAt", 0) > time.time():
            wait = retry["retryAt"] - time.time()
            return _with(base, Condition(STALLED, "False", Reason.RETRYING,
                                         f"retrying in {wait:.0f}s after: {retry.get('lastError', '')}", info.sha)), wait

        run = run_id(spec, state.data.md5 or "", self.template_version)
        corpus = None
        if spec.spec.serving is not None and spec.spec.serving.corpus:
            corpus = corpus_version(self.source, info.sha, spec.spec.serving.corpus)
        conditions = base.conditions
        if base.run_id != run:
            # A new run: what was true of the previous run says nothing about this one.
            for type_ in (TRAINED, EVALUATED, GATE_PASSED):
                conditions = set_condition(conditions, Condition(type_, "Unknown", Reason.PENDING, f"waiting for run {run}", info.sha))
        ctx = SpecContext(state, spec, info, SpecStatus(name, conditions, info.sha, run, base.serving_run_id),
                          run, eval_id(run, spec), serving_id(run, spec, corpus), corpus)
        requeue: float | None = None
        try:
            for step_name, step in self.steps():
                crash_point(f"before-{step_name}")
                result = step(ctx)
                crash_point(f"after-{step_name}")
                if result.outcome != "done":
                    requeue = result.requeue_after
                    break
        except TemporaryError as exc:
            failures = retry.get("failures", 0) + 1 if retry.get("retryKey") == content_key else 1
            wait = min(self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** (failures - 1))
            self._write_state(name, {"retryKey": content_key, "failures": failures, "retryAt": time.time() + wait,
                                     "lastError": str(exc)})
            ctx.set(STALLED, "False", Reason.RETRYING, f"temporary error, retry {failures} in {wait:.0f}s: {exc}")
            return ctx.status, wait
        except PermanentError as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self._write_state(name, {"stalledKey": content_key, "lastError": str(exc), "reason": reason})
            self.ledger.append_once("spec.stalled", name, ctx.run_id, {"commit": info.sha, "error": str(exc)},
                                    key=f"{name}:{content_key}")
            ctx.set(STALLED, "True", reason, f"{exc} (fix the spec or data; the controller retries when they change)")
            conditions = summarize(ctx.status.conditions, spec.spec.serving is not None, info.sha)
            return SpecStatus(name, conditions, info.sha, ctx.run_id, ctx.status.serving_run_id), None
        conditions = summarize(ctx.status.conditions, spec.spec.serving is not None, info.sha)
        status = SpecStatus(name, conditions, info.sha, ctx.run_id, ctx.status.serving_run_id)
        if requeue is None and status.is_true("Ready"):
            self._write_state(name, {"settledKey": content_key, "settledAt": time.time(), "runId": ctx.run_id})
        elif retry:
            self._write_state(name, {})
        if previous is not None and previous.observed_revision and _same_conditions(previous, status):
            # Unchanged in substance: keep the revision at which this state was first observed.
            status = SpecStatus(name, previous.conditions, previous.observed_revision, status.run_id, status.serving_run_id)
        return status, requeue

    def _memo_content_key(self, name: str, state: SpecAtRev, commit: str) -> str:
        memo = self._keys.get(name)
        if memo is not None and memo[0] is state:
            return memo[1]  # the very same spec state as last pass (an incremental load kept it)
        key = self._content_key(state, commit)
        self._keys[name] = (state, key)
        return key

    def _content_key(self, state: SpecAtRev, commit: str) -> str:
        """Everything a spec's steps read from git: a stalled spec is retried when any changes
        (the spec, the data version, the reviews, the base model folder, the corpus)."""
        spec = state.loaded.spec
        assert spec is not None and state.data is not None
        tree = self.source.tree(commit)
        reviews = spec.spec.dataset.review.file or f"reviews/{spec.metadata.name}.jsonl"
        parts = [state.blob, state.data.md5 or "", getattr(tree.get(reviews), "sha", "")]
        if spec.spec.base_model.kind == "path":
            parts.append(getattr(tree.get(spec.spec.base_model.uri), "sha", ""))
        if spec.spec.serving is not None and spec.spec.serving.corpus:
            parts.append(getattr(tree.get(spec.spec.serving.corpus), "sha", ""))
        return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]

    def steps(self) -> list[tuple[str, Callable[[SpecContext], StepResult]]]:
        return [
            ("observe", self.step_observe),
            ("data", self.step_data),
            ("train", self.step_train),
            ("evaluate", self.step_evaluate),
            ("gate", self.step_gate),
            ("deploy", self.step_deploy),
        ]

    # -- steps ---------------------------------------------------------------------------------

    def step_observe(self, ctx: SpecContext) -> StepResult:
        c = ctx.commit
        self.ledger.append_once(
            "spec.observed", ctx.name, None,
            {"commit": c.sha, "author": c.author, "email": c.email, "message": c.message, "time": c.time,
             "file": ctx.state.path, "blob": ctx.state.blob, "owner": ctx.spec.metadata.owner},
            key=f"{ctx.name}:{ctx.state.blob}:{c.sha}",
        )
        return DONE

    def step_data(self, ctx: SpecContext) -> StepResult:
        from controller.data.pipeline import prepare_spec

        prepared, review, ready = prepare_spec(self.source.repo, ctx.commit.sha, ctx.spec, self.home.work)
        ctx.prepared = prepared
        self.ledger.append_once(
            "data.versioned", ctx.name, None,
            {"path": ctx.spec.spec.dataset.path, "md5": ctx.state.data.md5, "size": ctx.state.data.size,
             "source": ctx.state.data.source, "commit": ctx.commit.sha, "counts": prepared.manifest.get("counts"),
             "splits": {k: v.get("sha256") for k, v in prepared.manifest.get("splits", {}).items()},
             "review": review.to_dict()},
            key=f"{ctx.name}:{ctx.state.data.md5}:{ctx.spec.spec.dataset.review.model_dump_json()}:{review.reviewed}:{review.approved}",
        )
        if not ready.status:
            ctx.set(DATA_READY, "False", ready.reason, ready.message)
            raise _Stall(ready.reason, f"data not ready: {ready.message}")
        ctx.set(DATA_READY, "True", ready.reason, ready.message)
        return DONE

    def step_train(self, ctx: SpecContext) -> StepResult:
        out = self.home.run_dir(ctx.name, ctx.run_id)
        if (out / "manifest.json").exists():
            self._record_finished(ctx, out)
            ctx.set(TRAINED, "True", Reason.SUCCEEDED, f"run {ctx.run_id} finished")
            return DONE
        try:
            state = self.backend.status(ctx.run_id)
        except RunNotFound:
            state = None
        if state is None:
            blocked = self._concurrency_block(ctx)
            if blocked:
                ctx.set(TRAINED, "False", Reason.QUEUED, blocked)
                return waiting(10)
            config = self._run_config(ctx)
            state = self.backend.submit(Run(config, self._manifests(ctx, config)))
        self._record_submitted(ctx)
        if state.phase in (Phase.PENDING, Phase.RUNNING):
            ctx.set(TRAINED, "False", Reason.RUNNING if state.phase == Phase.RUNNING else Reason.PENDING,
                    f"run {ctx.run_id} {state.phase.value}")
            return waiting(2)
        if state.phase == Phase.PREEMPTED:
            ctx.set(TRAINED, "False", Reason.PREEMPTED, f"run {ctx.run_id} was preempted; it resumes from its last checkpoint")
            self.backend.submit(Run(self._run_config(ctx), ()))
            return waiting(5)
        if state.phase == Phase.SUCCEEDED:
            if not (out / "manifest.json").exists():
                raise _Stall(Reason.TRAINING_FAILED, f"run {ctx.run_id} exited 0 without a manifest in {out}: not finished")
            self._record_finished(ctx, out)
            ctx.set(TRAINED, "True", Reason.SUCCEEDED, f"run {ctx.run_id} finished")
            return DONE
        logs = self.backend.logs(ctx.run_id, tail=15)
        ctx.set(TRAINED, "False", Reason.TRAINING_FAILED, f"{state.reason}: {state.message}")
        if state.reason == "ConfigError":
            raise _Stall(Reason.TRAINING_FAILED, f"run {ctx.run_id} failed permanently ({state.message}); last log lines:\n{logs}")
        self.backend.cancel(ctx.run_id)
        raise TemporaryError(f"run {ctx.run_id} failed ({state.reason}: {state.message}); it will be retried")

    def step_evaluate(self, ctx: SpecContext) -> StepResult:
        """Evaluate the run on its held-out split (in this process; a crash re-runs it). The
        report is keyed by the evaluation identity, so a changed gate re-evaluates without
        retraining and an unchanged one is never evaluated twice."""
        out = self.home.run_dir(ctx.name, ctx.run_id)
        marker = out / "eval" / "ftops-eval.json"
        done = _read_json(marker)
        if done is None or done.get("evalId") != ctx.eval_id or not (out / "eval" / "report.json").exists():
            from controller.evaluate.run import crashed_report, run_evaluation

            ctx.set(EVALUATED, "False", Reason.IN_PROGRESS, f"evaluating run {ctx.run_id}")
            try:
                report = run_evaluation(out, ctx.spec, ctx.prepared.test_path, train_path=ctx.prepared.train_path,
                                        repo_root=self._checkout(ctx.commit.sha), device=self.config.device, progress=False)
            except PermanentError as exc:
                report = crashed_report(ctx.run_id, str(exc), ctx.name)
                report.write(out)
            done = {"evalId": ctx.eval_id, "reportSha256": report.sha256, "status": report.data.get("status")}
            _write_json(marker, done)
        report_path = out / "eval" / "report.json"
        report_data = json.loads(report_path.read_text())
        self.ledger.append_once(
            "eval.reported", ctx.name, ctx.run_id,
            {"evalId": ctx.eval_id, "reportSha256": _sha256(report_path), "reportPath": str(report_path),
             "status": report_data.get("status"), "metrics": _finite(report_data.get("metrics") or {})},
            key=f"{ctx.run_id}:{ctx.eval_id}",
        )
        ctx.facts["report"] = report_data
        if report_data.get("status") != "completed":
            ctx.set(EVALUATED, "False", Reason.EVAL_FAILED, str(report_data.get("error", "evaluation crashed")))
        else:
            ctx.set(EVALUATED, "True", Reason.SUCCEEDED, f"report {report_path}")
        return DONE

    def step_gate(self, ctx: SpecContext) -> StepResult:
        """The pure gate on the report; the decision is written beside it (eval/gate.json, the
        only thing serving trusts) and recorded in the ledger."""
        from controller.evaluate.report import record_in_manifest, render_markdown
        from controller.gate import decide

        out = self.home.run_dir(ctx.name, ctx.run_id)
        report_path = out / "eval" / "report.json"
        decision = decide(ctx.facts["report"], ctx.spec, ctx.run_id, report_sha256=_sha256(report_path))
        gate = decision.to_dict()
        gate_path = out / "eval" / "gate.json"
        if _read_json(gate_path) != gate:
            _write_json(gate_path, gate)
            (out / "eval" / "report.md").write_text(render_markdown(ctx.facts["report"], gate))
            record_in_manifest(out, report_path, gate=gate)
        recorded = self.ledger.find_one("gate.decided", f"{ctx.run_id}:{ctx.eval_id}")
        self.ledger.append_once("gate.decided", ctx.name, ctx.run_id, {"evalId": ctx.eval_id, **gate},
                                key=f"{ctx.run_id}:{ctx.eval_id}")
        if recorded is None and self.metrics is not None:
            self.metrics.gate_outcomes.labels("passed" if decision.passed else "failed").inc()
        if decision.passed:
            ctx.set(GATE_PASSED, "True", Reason.SUCCEEDED, f"run {ctx.run_id}: {decision.message()}")
            return DONE
        ctx.set(GATE_PASSED, "False", Reason.GATE_FAILED, decision.message())
        serving = self._serving_run(ctx.name)
        if serving is not None:
            ctx.status = SpecStatus(ctx.name, ctx.status.conditions, ctx.status.observed_revision, ctx.run_id, serving)
            ctx.set(DEPLOYED, "True", "PreviousRunServing", f"run {serving} keeps serving: run {ctx.run_id} failed its gate")
        raise _Stall(Reason.GATE_FAILED, f"run {ctx.run_id} failed its gate: {decision.message()}")

    def step_deploy(self, ctx: SpecContext) -> StepResult:
        """Promote the run (only with its own passed gate.json); the previous one serves until
        the new one is ready, and a new one that never gets ready is rolled back."""
        serving = ctx.spec.spec.serving
        if serving is None or self.deployer is None:
            return DONE
        from controller.serve.config import ServeConfig

        corpus = self._corpus(ctx) if serving.corpus else None
        config = ServeConfig(
            run_dir=str(self.home.run_dir(ctx.name, ctx.run_id)), model_name=ctx.name, corpus_dir=corpus,
            retriever=serving.retriever, top_k=serving.top_k, max_tokens=serving.max_tokens, device=self.config.device,
            base_uri=self._base_model(ctx), run_id=ctx.run_id,
        )
        result = self.deployer.promote(config)
        for event in result.events:
            self.ledger.append_once(event["kind"], ctx.name, event.get("runId"), event,
                                    key=f"{ctx.name}:{event['kind']}:{event.get('runId')}:{event.get('time')}")
        ctx.status = SpecStatus(ctx.name, ctx.status.conditions, ctx.status.observed_revision, ctx.run_id, result.serving_run_id)
        if result.outcome in ("promoted", "unchanged"):
            ctx.set(DEPLOYED, "True", Reason.SUCCEEDED, result.message or f"run {ctx.run_id} is serving")
            return DONE
        ctx.set(DEPLOYED, "False", Reason.ROLLED_BACK if result.outcome == "rolled_back" else Reason.FAILED, result.message)
        raise TemporaryError(f"deploy of run {ctx.run_id}: {result.message}")

    # -- helpers -------------------------------------------------------------------------------

    def _serving_run(self, spec: str) -> str | None:
        if self.deployer is None:
            return None
        current = self.deployer.current(spec)
        return current.get("runId") if current and current.get("healthy", True) else None

    def _checkout(self, commit: str) -> Path:
        """The repo's files at `commit` (git only, no DVC data), for paths a spec names."""
        target = self.home.root / "checkouts" / commit
        if not target.exists():
            _extract(self.source.repo, commit, target)
        return target

    def _corpus(self, ctx: SpecContext) -> str:
        """The RAG corpus folder at the commit, content-addressed by its git tree hash."""
        rel = ctx.spec.spec.serving.corpus  # type: ignore[union-attr]
        tree = self.source.tree(ctx.commit.sha)
        entry = tree.get(rel)
        if entry is None or entry.kind != "tree":
            if (rel + ".dvc") in tree:
                raise PermanentError(f"serving.corpus {rel!r} is tracked by DVC as a folder; commit the documents to git "
                                     "(DVC-tracked corpora are not pulled by the controller yet)")
            raise PermanentError(f"serving.corpus {rel!r} is not a folder at {ctx.commit.sha[:12]}")
        target = self.home.root / "corpora" / entry.sha
        if not target.exists():
            _extract(self.source.repo, entry.sha, target)
        return str(target)

    def _record_submitted(self, ctx: SpecContext) -> None:
        self.ledger.append_once(
            "run.submitted", ctx.name, ctx.run_id,
            {"commit": ctx.commit.sha, "dataMd5": ctx.state.data.md5, "backend": self.backend.name,
             "job": _job_name(ctx), "image": os.environ.get("FTOPS_IMAGE", self.operator.cluster.image),
             "imageDigest": os.environ.get("FTOPS_IMAGE_DIGEST"), "owner": ctx.spec.metadata.owner,
             "method": ctx.spec.spec.method.type, "baseModel": ctx.spec.spec.base_model.uri,
             "baseModelRevision": ctx.spec.spec.base_model.revision, "templateVersion": self.template_version},
            key=ctx.run_id,
        )

    def _record_finished(self, ctx: SpecContext, out: Path) -> None:
        if self.ledger.find_one("run.finished", ctx.run_id) is not None:
            return
        manifest_bytes = (out / "manifest.json").read_bytes()
        artifacts = _artifact_hashes(json.loads(manifest_bytes))
        self.ledger.append_once(
            "run.finished", ctx.name, ctx.run_id,
            {"outputDir": str(out), "artifacts": artifacts, "dataMd5": ctx.state.data.md5, "commit": ctx.commit.sha,
             "manifestSha256": hashlib.sha256(manifest_bytes).hexdigest()},
            key=ctx.run_id,
        )

    def _run_config(self, ctx: SpecContext) -> RunConfig:
        s = ctx.spec.spec
        prepared = ctx.prepared
        splits = prepared.manifest.get("splits", {})
        return RunConfig(
            run_id=ctx.run_id,
            spec_name=ctx.name,
            base_model=RunBaseModel(uri=self._base_model(ctx), revision=s.base_model.revision),
            method=s.method,
            training=s.training,
            data=RunData(train=str(prepared.train_path), test=str(prepared.test_path), md5=ctx.state.data.md5 or "",
                         train_sha256=splits.get("train", {}).get("sha256"), test_sha256=splits.get("test", {}).get("sha256")),
            output_dir=str(self.home.run_dir(ctx.name, ctx.run_id)),
            checkpoint_dir=str(self.home.checkpoints / ctx.name / ctx.run_id),
            distributed=Distributed(nodes=s.hardware.nodes, gpus_per_node=s.hardware.gpus_per_node),
            device=self.config.device,
        )

    def _base_model(self, ctx: SpecContext) -> str:
        """A repo path is materialised from git at the commit (content-addressed by tree hash)."""
        bm = ctx.spec.spec.base_model
        if bm.kind != "path":
            return bm.uri
        entry = self.source.tree(ctx.commit.sha).get(bm.uri)
        if entry is None or entry.kind != "tree":
            raise PermanentError(f"baseModel.uri {bm.uri!r} is not a folder at {ctx.commit.sha[:12]}")
        target = self.home.models / entry.sha
        if not target.exists():
            _extract(self.source.repo, entry.sha, target)
        return str(target)

    def _manifests(self, ctx: SpecContext, config: RunConfig) -> tuple[dict, ...]:
        if self.backend.name == "local":
            return ()
        from controller.render import RenderInput, render

        return tuple(render(RenderInput(finetune=ctx.spec, run_id=ctx.run_id, data_md5=ctx.state.data.md5 or "",
                                        git_commit=ctx.commit.sha, operator=self.operator, run_config=config)))

    def _concurrency_block(self, ctx: SpecContext) -> str | None:
        """A reason to wait, when the global or per-owner limit on concurrent runs is reached."""
        active: list[tuple[str, str]] = []
        finished = {e.run_id for e in self.ledger.events(kind="run.finished")}
        for event in self.ledger.events(kind="run.submitted"):
            if event.run_id in finished or event.run_id == ctx.run_id:
                continue
            try:
                if not self.backend.status(event.run_id).finished:
                    active.append((event.run_id, event.payload.get("owner", "")))
            except RunNotFound:
                continue
        if len(active) >= self.config.max_concurrent_runs:
            return f"{len(active)} runs active, the limit is {self.config.max_concurrent_runs}: queued"
        owner = ctx.spec.metadata.owner
        mine = sum(1 for _, o in active if o == owner)
        if mine >= self.config.max_runs_per_owner:
            return f"owner {owner} has {mine} run(s) active, the per-owner limit is {self.config.max_runs_per_owner}: queued"
        return None

    def _prune(self, name: str, commit: str) -> None:
        """The spec was deleted: stop what we own for it. Artifacts, checkpoints and the ledger stay."""
        for event in self.ledger.events(spec=name, kind="run.submitted"):
            try:
                if not self.backend.status(event.run_id).finished:
                    self.backend.cancel(event.run_id)
            except RunNotFound:
                pass
        if self.deployer is not None:
            self.deployer.stop(name)
        self.ledger.append_once("spec.pruned", name, None, {"commit": commit}, key=f"{name}:{commit}")
        self._forget(name)

    # -- persisted status and retry state -------------------------------------------------------

    def load_statuses(self) -> dict[str, SpecStatus]:
        if self._statuses is None:
            self._statuses = load_statuses(self.home.status)
        return dict(self._statuses)

    def _save(self, status: SpecStatus) -> SpecStatus:
        _write_json(self.home.status / f"{status.name}.json", status.to_dict())
        if self._statuses is not None:
            self._statuses[status.name] = status
        return status

    def _forget(self, name: str) -> None:
        (self.home.status / f"{name}.json").unlink(missing_ok=True)
        if self._statuses is not None:
            self._statuses.pop(name, None)

    def _read_state(self, name: str) -> dict:
        if name not in self._states:
            try:
                self._states[name] = json.loads((self.home.state / f"{name}.json").read_text())
            except (FileNotFoundError, ValueError):
                self._states[name] = {}
        return self._states[name]

    def _write_state(self, name: str, state: dict) -> None:
        _write_json(self.home.state / f"{name}.json", state)
        self._states[name] = state


class _Stall(PermanentError):
    """A permanent outcome with a specific CamelCase reason (e.g. TooFewExamples, GateFailed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _extract(repo: Path, treeish: str, target: Path) -> None:
    """`git archive` a commit or tree into `target`, atomically (a crash leaves no half folder)."""
    tmp = target.with_name(target.name + ".tmp")
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    tmp.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", treeish], cwd=repo, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    os.replace(tmp, target)


def _finite(metrics: dict) -> dict:
    """Metrics as the ledger stores them: NaN and infinities become null (JSON has neither)."""
    import math

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(metrics)


def _same_conditions(a: SpecStatus, b: SpecStatus) -> bool:
    def key(status: SpecStatus):
        return sorted((c.type, c.status, c.reason, c.message) for c in status.conditions)

    return key(a) == key(b) and a.run_id == b.run_id and a.serving_run_id == b.serving_run_id


def _job_name(ctx: SpecContext) -> str:
    from controller.render import object_name

    return object_name(ctx.name, ctx.run_id, "train")


def _artifact_hashes(manifest: dict) -> dict[str, str]:
    """{relative path: sha256} from the trainer's manifest, whatever its exact nesting."""
    files = manifest.get("files") or manifest.get("artifacts") or {}
    if isinstance(files, list):
        return {f["path"]: f["sha256"] for f in files if "path" in f and "sha256" in f}
    return {path: (value["sha256"] if isinstance(value, dict) else value) for path, value in files.items()}


def load_statuses(folder: Path) -> dict[str, SpecStatus]:
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            out[path.stem] = SpecStatus.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError):
            continue
    return out
