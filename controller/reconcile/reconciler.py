"""The reconciler: observe git and the world, decide, run the step chain, record, report.

One pass (`Reconciler.reconcile_once`) reads the specs at the exact commit of the tracked
revision and, for each spec, decides what it wants (controller.desired, the computation
`ftops plan` shares) and runs the chain in controller.status.STEPS. Every step is idempotent and
keyed by content hashes, so a pass after a crash at any point redoes nothing that was done and
creates no duplicate: the run id names the run everywhere (backend, artifact store, ledger),
and each fact is appended to the ledger with an idempotency key.

What a step's result means (conditions, backoff, ledger records, requeue) is decided in one
place, controller.reconcile.outcome. One spec's failure never blocks another's: every spec,
deleted ones included, runs inside its own error boundary.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from controller.catalog import OperatorConfig, load_operator_config
from controller.clock import SYSTEM_CLOCK, Clock
from controller.desired import Decision, Identities, decide, identities
from controller.errors import FtopsError
from controller.fsutil import read_json, write_json_atomic
from controller.home import Home
from controller.ledger import Ledger
from controller.reconcile import outcome, prune
from controller.reconcile.config import ControllerConfig
from controller.reconcile.context import DataPreparer, Deps, RepoFiles, SpecContext
from controller.reconcile.notify import Outbox, commit_report
from controller.reconcile.outcome import SpecState
from controller.reconcile.registry import chain
from controller.reconcile.result import LedgerRecord, StepResult
from controller.render import template_version
from controller.seams import ArtifactStore, Backend, Deployer, Evaluator, Notifier
from controller.source import CommitInfo, GitSource, SpecAtRev, SpecCache, load_specs_incremental
from controller.status import (
    EVALUATED,
    GATE_PASSED,
    PRUNE,
    SOURCE_AVAILABLE,
    STALLED,
    TRAINED,
    Condition,
    Reason,
    SpecStatus,
    Step,
    set_condition,
)

log = logging.getLogger("ftops.reconciler")

CRASH_ENV = "FTOPS_CRASH_AT"
"""Test hook for the crash matrix: SIGKILL this process at the named step boundary."""


def crash_point(name: str) -> None:
    """kill -9 ourselves at a step boundary when asked (tests prove a restart loses nothing)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class PassResult:
    commit: str | None
    statuses: dict[str, SpecStatus]
    requeue_after: float | None
    error: str | None = None
    decisions: dict[str, Decision] | None = None
    """What each spec that was acted on wanted this pass (the same decision `ftops plan` shows)."""


class Reconciler:
    """observe -> decide -> step chain -> status -> ledger, for every spec at the tracked revision."""

    def __init__(self, config: ControllerConfig, backend: Backend, ledger: Ledger | None = None,
                 source: GitSource | None = None, deployer: Deployer | None = None,
                 metrics: "GateMetrics | None" = None, *, evaluator: Evaluator | None = None,
                 store: ArtifactStore | None = None, data: DataPreparer | None = None, repo: RepoFiles | None = None,
                 clock: Clock = SYSTEM_CLOCK, notifier: Notifier | None = None) -> None:
        from controller.artifacts import open_store
        from controller.reconcile.workspace import DvcDataPreparer, GitRepoFiles

        self.config = config
        self.home = Home(Path(config.home))
        self.backend = backend
        self.ledger = ledger or Ledger(self.home.ledger)
        self.source = source or GitSource(config.repo, cache_dir=self.home.git)
        self.operator: OperatorConfig = load_operator_config(config.operator_config)
        self.cache = SpecCache()
        self.deployer = deployer
        self.metrics = metrics
        self.clock = clock
        for folder in (self.home.status, self.home.state, self.home.store):
            folder.mkdir(parents=True, exist_ok=True)
        if evaluator is None:
            from controller.backends.local import LocalEvaluator

            evaluator = LocalEvaluator(self.home.evals)
        self.deps = Deps(
            config=config, operator=self.operator, home=self.home, ledger=self.ledger, backend=backend,
            evaluator=evaluator, store=store or open_store(config.store or str(self.home.store)), deployer=deployer,
            repo=repo or GitRepoFiles(self.source, self.home), data=data or DvcDataPreparer(self.source, self.home),
            clock=clock, template_version=template_version(), notifier=notifier,
        )
        self._outbox = Outbox(notifier, self.home.state / "_notify.json", config, clock) if notifier is not None else None
        self._statuses: dict[str, SpecStatus] | None = None  # write-through caches of the files in home
        self._states: dict[str, SpecState] = {}
        self._specs: tuple[str, dict[str, SpecAtRev]] | None = None
        self._keys: dict[str, tuple[SpecAtRev, str]] = {}

    @property
    def store(self) -> ArtifactStore:
        return self.deps.store

    # -- one pass ------------------------------------------------------------------------------

    def reconcile_once(self) -> PassResult:
        started = self.clock.monotonic()
        try:
            self.source.refresh()
            head = self.source.resolve(self.config.rev)
            commit = self._verified_commit(head)
        except FtopsError as exc:
            return self._source_unavailable(str(exc))
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
        decisions: dict[str, Decision] = {}
        deleted = [name for name in known if name not in by_name]
        if deleted and not by_name and known and not self.config.allow_delete_all:
            message = (f"commit {commit[:12]} deletes every spec ({len(known)}); refusing to prune anything. "
                       "Restore the specs, or run the controller with --allow-delete-all to confirm")
            log.error(message)
            for name, status in known.items():
                refused = Condition(STALLED, "True", Reason.DELETE_ALL_REFUSED, message, commit)
                statuses[name] = self._save(replace(status, conditions=set_condition(status.conditions, refused)))
            return PassResult(commit, statuses, None, message)
        for name in deleted:
            again = self._prune(name, commit, known[name])
            if again is not None:
                requeue.append(again)
                statuses[name] = self.load_statuses()[name]

        for name, state in sorted(by_name.items()):
            try:
                status, again, decision = self._reconcile_spec(name, state, info, known.get(name))
            except Exception as exc:  # noqa: BLE001 - one spec never blocks the others
                log.exception("spec %s: unexpected error", name)
                previous = known.get(name) or SpecStatus(name)
                stalled = Condition(STALLED, "False", Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", commit)
                status, again, decision = replace(previous, conditions=set_condition(previous.conditions, stalled)), \
                    self.config.backoff_base_s, None
            statuses[name] = self._save(status) if status != known.get(name) else status
            if decision is not None:
                decisions[name] = decision
            if again is not None:
                requeue.append(again)
        again = self._report(statuses)
        if again is not None:
            requeue.append(again)
        log.info(json.dumps({"event": "reconciled", "commit": commit, "specs": len(statuses),
                             "seconds": round(self.clock.monotonic() - started, 3)}))
        return PassResult(commit, statuses, min(requeue) if requeue else None, decisions=decisions)

    def _report(self, statuses: dict[str, SpecStatus]) -> float | None:
        """The one place the forge hears from the controller: each spec whose summary changed this
        pass (controller.reconcile.notify). Returns when a report that could not be sent is due."""
        if self._outbox is None:
            return None
        for status in statuses.values():
            report = commit_report(status)
            if report is not None:
                self._outbox.offer(report)
        return self._outbox.flush()

    def _source_unavailable(self, message: str) -> PassResult:
        """Git is down or the revision is bad: say so on every spec, change nothing else."""
        statuses = {}
        for name, status in self.load_statuses().items():
            down = Condition(SOURCE_AVAILABLE, "False", Reason.SOURCE_UNAVAILABLE, message, status.observed_revision)
            statuses[name] = self._save(replace(status, conditions=set_condition(status.conditions, down)))
        log.warning(json.dumps({"event": "source_unavailable", "message": message}))
        return PassResult(None, statuses, self.config.backoff_base_s, message)

    def _verified_commit(self, head: str) -> str | None:
        """In signed-commit mode, the newest verified commit; otherwise `head`."""
        if self.config.allowed_signers is None:
            return head
        path = self.home.state / "_controller.json"
        kept = (read_json(path) or {}).get("lastVerifiedCommit")
        if self.source.verify_commit(head, Path(self.config.allowed_signers)):
            if kept != head:
                write_json_atomic(path, {"lastVerifiedCommit": head})
            return head
        log.warning(json.dumps({"event": "unsigned_commit", "commit": head, "kept": kept}))
        return kept if isinstance(kept, str) else None

    # -- one spec ------------------------------------------------------------------------------

    def _reconcile_spec(self, name: str, state: SpecAtRev, info: CommitInfo, previous: SpecStatus | None
                        ) -> tuple[SpecStatus, float | None, Decision | None]:
        valid = state.loaded.spec is not None and state.data is not None and state.data.known
        content_key = self._memo_content_key(name, state, info.sha) if valid else ""
        retry = self._read_state(name) if valid else SpecState()
        now = self.clock.time()
        if valid and previous is not None:
            # The steady state of a big repo: nothing this spec depends on changed. Do nothing.
            if retry.settled_key == content_key and now - (retry.settled_at or 0) < self.config.resync_seconds:
                return previous, None, None
            if retry.stalled_key == content_key and previous.is_true(STALLED):
                return previous, None, None
        kept = tuple(c for c in (previous.conditions if previous else ()) if c.type not in (STALLED, SOURCE_AVAILABLE))
        base = SpecStatus(name, kept, info.sha, previous.run_id if previous else None,
                          previous.serving_run_id if previous else None)
        if not valid:
            issues = [i.format() for i in state.loaded.errors]
            if state.data is not None and not state.data.known:
                issues.append(state.data.error or f"{state.data.path}: no version at {info.sha[:12]}")
            message = "; ".join(issues[:5]) or "invalid spec"
            invalid = Condition(STALLED, "True", Reason.SPEC_INVALID, message, info.sha)
            return replace(base, conditions=set_condition(base.conditions, invalid)), None, None

        spec = state.loaded.spec
        assert spec is not None and state.data is not None
        if retry.stalled_key == content_key:
            stalled = Condition(STALLED, "True", retry.reason or Reason.FAILED, retry.last_error or "stalled", info.sha)
            return replace(base, conditions=set_condition(base.conditions, stalled)), None, None
        if retry.retry_key == content_key and (retry.retry_at or 0) > now:
            wait = (retry.retry_at or now) - now
            waiting = Condition(STALLED, "False", Reason.RETRYING,
                                f"retrying in {wait:.0f}s after: {retry.last_error or ''}", info.sha)
            return replace(base, conditions=set_condition(base.conditions, waiting)), wait, None

        serving = spec.spec.serving
        corpus = self.deps.repo.corpus_version(info.sha, serving.corpus) if serving is not None and serving.corpus else None
        want = identities(state, self.deps.template_version, corpus)
        have = Identities(previous.run_id, previous.eval_id, previous.serving_id) if previous else None
        decision = decide(want, have, serving is not None)
        conditions = base.conditions
        if base.run_id != want.run:
            # A new run: what was true of the previous run says nothing about this one.
            for type_ in (TRAINED, EVALUATED, GATE_PASSED):
                conditions = set_condition(conditions, Condition(type_, "Unknown", Reason.PENDING,
                                                                 f"waiting for run {want.run}", info.sha))
        assert want.run is not None
        ctx = SpecContext(state, spec, info, want, decision, corpus, previous,
                          self.store.run_uri(name, want.run))
        requeue: float | None = None
        stopped_at: Step | None = None
        failed = False
        for step, function in chain():
            crash_point(f"before-{step.name}")
            result: StepResult | BaseException
            try:
                result = function(ctx, self.deps)
            except Exception as exc:  # noqa: BLE001 - classified by outcome.compute
                if not isinstance(exc, FtopsError):
                    log.exception("spec %s: unexpected error in step %s", name, step.name)
                result = exc
            done = self._apply(step, result, conditions, name=name, run_id=want.run, revision=info.sha,
                               content_key=content_key, state=retry)
            conditions = done.conditions
            failed = done.state is not None
            if done.state is not None:
                self._write_state(name, done.state)
                retry = done.state
            crash_point(f"after-{step.name}")
            if not done.proceed:
                requeue, stopped_at = done.requeue_after, step
                break
        if self.deployer is None:
            serving_run = base.serving_run_id
        else:
            serving_run = ctx.serving.run_id if ctx.serving is not None and ctx.serving.healthy else None
        conditions = outcome.finish(conditions, serving_expected=serving is not None, revision=info.sha, run_id=want.run,
                                    serving_run_id=serving_run, stopped_at=stopped_at)
        status = SpecStatus(name, conditions, info.sha, want.run, serving_run, eval_id=want.evaluation,
                            serving_id=want.serving, ledger_head=self._ledger_head())
        if not failed:
            if stopped_at is None and status.is_true("Ready"):
                self._write_state(name, outcome.settled(content_key, self.clock.time(), want.run))
            elif retry != SpecState():
                self._write_state(name, SpecState())  # progress: the next failure backs off from the start
        if previous is not None and previous.observed_revision and _same_conditions(previous, status):
            # Unchanged in substance: keep the revision at which this state was first observed.
            status = replace(status, conditions=previous.conditions, observed_revision=previous.observed_revision)
        return status, requeue, decision

    def _apply(self, step: Step, result: StepResult | BaseException, conditions: tuple[Condition, ...], *, name: str,
               run_id: str | None, revision: str, content_key: str, state: SpecState) -> outcome.Outcome:
        """What the result means (outcome.compute), with its ledger records written. A record
        that cannot be written (a fenced follower, a full disk) is the step's outcome instead."""
        def compute(what: StepResult | BaseException) -> outcome.Outcome:
            return outcome.compute(step, what, conditions, spec=name, run_id=run_id, revision=revision,
                                   content_key=content_key, state=state, now=self.clock.time(), config=self.config)

        done = compute(result)
        try:
            self._record(name, done.records)
        except Exception as exc:  # noqa: BLE001 - classified by outcome.compute
            done = compute(exc)
        return done

    def _ledger_head(self) -> tuple[int, str]:
        head = self.ledger.head()
        return head.seq, head.hash

    def _record(self, spec: str, records: tuple[LedgerRecord, ...]) -> None:
        for record in records:
            if self.ledger.find_one(record.kind, record.key) is not None:
                continue
            self.ledger.append_once(record.kind, spec, record.run_id, record.payload, key=record.key)
            if record.kind == "gate.decided" and self.metrics is not None:
                self.metrics.gate_outcome(bool(record.payload.get("passed")))

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

    # -- deleted specs -------------------------------------------------------------------------

    def _prune(self, name: str, commit: str, previous: SpecStatus) -> float | None:
        """The spec was deleted: the prune chain, inside its own error boundary. Returns a
        requeue time when it must be tried again (the status stays until it succeeds)."""
        try:
            result: StepResult | BaseException = prune.run(prune.PruneContext(name, commit), self.deps)
        except Exception as exc:  # noqa: BLE001 - classified by outcome.compute
            if not isinstance(exc, FtopsError):
                log.exception("spec %s: unexpected error while pruning", name)
            result = exc
        done = self._apply(PRUNE, result, previous.conditions, name=name, run_id=previous.run_id, revision=commit,
                           content_key=f"prune:{commit}", state=self._read_state(name))
        if done.proceed:
            self._forget(name)
            return None
        self._save(replace(previous, conditions=done.conditions))
        if done.state is not None:
            self._write_state(name, done.state)
        return done.requeue_after if done.requeue_after is not None else self.config.backoff_base_s

    # -- persisted status and retry state -------------------------------------------------------

    def load_statuses(self) -> dict[str, SpecStatus]:
        if self._statuses is None:
            self._statuses = load_statuses(self.home.status)
        return dict(self._statuses)

    def _save(self, status: SpecStatus) -> SpecStatus:
        write_json_atomic(self.home.status / f"{status.name}.json", status.to_dict())
        if self._statuses is not None:
            self._statuses[status.name] = status
        return status

    def _forget(self, name: str) -> None:
        (self.home.status / f"{name}.json").unlink(missing_ok=True)
        (self.home.state / f"{name}.json").unlink(missing_ok=True)
        self._states.pop(name, None)
        if self._statuses is not None:
            self._statuses.pop(name, None)

    def _read_state(self, name: str) -> SpecState:
        if name not in self._states:
            try:
                self._states[name] = SpecState.from_dict(json.loads((self.home.state / f"{name}.json").read_text()))
            except (FileNotFoundError, ValueError, AttributeError):
                self._states[name] = SpecState()
        return self._states[name]

    def _write_state(self, name: str, state: SpecState) -> None:
        write_json_atomic(self.home.state / f"{name}.json", state.to_dict())
        self._states[name] = state


class GateMetrics(Protocol):
    """What the reconciler tells the metrics exporter (controller.observability.Metrics)."""

    def gate_outcome(self, passed: bool) -> None:
        ...


def _same_conditions(a: SpecStatus, b: SpecStatus) -> bool:
    def key(status: SpecStatus) -> list[tuple[str, str, str, str]]:
        return sorted((c.type, c.status, c.reason, c.message) for c in status.conditions)

    return key(a) == key(b) and a.run_id == b.run_id and a.serving_run_id == b.serving_run_id


def load_statuses(folder: Path) -> dict[str, SpecStatus]:
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            out[path.stem] = SpecStatus.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError):
            continue
    return out
