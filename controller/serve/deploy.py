"""The deploy step, local backend: promote a run only after its gate passed, keep the previous
version serving until the new one is ready, roll back automatically when it is not, and roll back
on request to an earlier run that passed its gate.

Every transition is returned as a JSON-serialisable event (`{kind, spec, runId, servingRunId,
previousRunId, backend, time, reason, message, ...}`; kinds deploy.refused, deploy.started,
deploy.promoted, deploy.rolled_back, deploy.unchanged) and appended to the spec's deployment
history (controller.serve.history) so rollback knows the order; the reconciler appends the same
events to the audit ledger.

Local processes live under `<store>/<spec>/serving/`:

    <run-id>/serve.json     what the server serves (the same file a pod gets from its ConfigMap)
    <run-id>/server.log     its stdout/stderr
    <run-id>/endpoint.json  host, port, pid, written by the server once it listens (port 0 = OS picks)
    current.json            the serving version: runId, pid, port, url

The server runs in its own session (not a child that dies with the controller), so a controller
restart finds it again from current.json and checks it with /readyz (which names the run id, so a
recycled pid or port is never mistaken for our server).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from controller.artifacts import open_store
from controller.errors import PermanentError
from controller.seams import ArtifactStore, DeployEvent, DeployRequest, DeployResult, JsonValue, Serving
from controller.serve import history
from controller.serve.config import ServeConfig, write_config
from controller.serve.gatecheck import GateNotPassed, gate_decision
from controller.status import Reason


def event(kind: str, spec: str, run_id: str | None, backend: str, serving: str | None, previous: str | None,
          reason: str, message: str = "", **extra: JsonValue) -> DeployEvent:
    return {"kind": kind, "spec": spec, "runId": run_id, "servingRunId": serving, "previousRunId": previous,
            "backend": backend, "time": history.now(), "reason": reason, "message": message, **extra}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _get_json(url: str, timeout: float = 2.0) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own local server
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"null")
        except ValueError:
            return err.code, None
    except (OSError, ValueError):
        return 0, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own exited child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class LocalServing:
    """The Deployer on this machine: a server process per spec, its state under the local
    artifact store (`<store>/<spec>/serving/`)."""

    name = "local"

    def __init__(self, store: str | Path, host: str = "127.0.0.1", python: str | None = None,
                 ready_timeout: float = 300, env: dict[str, str] | None = None) -> None:
        self.store = Path(store)
        self.artifacts = open_store(str(self.store))
        self.host = host
        self.python = python or sys.executable
        self.ready_timeout = ready_timeout
        self.env = env

    # ---------------------------------------------------------------- paths and state
    def _dir(self, spec: str) -> Path:
        return self.store / spec / "serving"

    def run_dir(self, spec: str, run_id: str) -> Path:
        return self.store / spec / run_id

    def record(self, spec: str) -> dict | None:
        """current.json: the serving version as recorded (runId, pid, url, configKey), unchecked."""
        return _read_json(self._dir(spec) / "current.json")

    def current(self, spec: str) -> Serving | None:
        """The serving version, healthy when its process answers /readyz with the same run id."""
        cur = self.record(spec)
        if not cur:
            return None
        return Serving(spec, cur["runId"], self._healthy(cur), cur.get("url"), "", cur.get("servingId"))

    def _healthy(self, cur: dict) -> bool:
        code, body = _get_json(f"{cur['url']}/readyz")
        return bool(code == 200 and body and body.get("runId") == cur["runId"] and _alive(cur["pid"]))

    # ---------------------------------------------------------------- process management
    def _start(self, spec: str, run_id: str, config: ServeConfig) -> tuple[int, Path]:
        state = self._dir(spec) / run_id
        state.mkdir(parents=True, exist_ok=True)
        endpoint = state / "endpoint.json"
        endpoint.unlink(missing_ok=True)
        config = config.replace(host=self.host, port=0, endpoint_file=str(endpoint))
        write_config(config, state / "serve.json")
        log = (state / "server.log").open("ab")
        env = dict(self.env if self.env is not None else os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        proc = subprocess.Popen([self.python, "-m", "controller.cli", "serve", "--config", str(state / "serve.json")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, close_fds=True)
        log.close()
        _write_json(state / "spawn.json", {"pid": proc.pid, "time": history.now()})
        return proc.pid, state

    def _wait_ready(self, pid: int, state: Path, run_id: str, timeout: float) -> tuple[bool, str, str | None]:
        """(ready, why not, url). Not ready when the process exits or /readyz stays non-200."""
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if url is None:
                ep = _read_json(state / "endpoint.json")
                if ep and ep.get("pid") == pid:
                    url = f"http://{ep['host']}:{ep['port']}"
            if url is not None:
                code, body = _get_json(f"{url}/readyz")
                if code == 200 and body and body.get("runId") == run_id:
                    return True, "", url
            if not _alive(pid):
                self._reap(pid)
                return False, f"the server exited before it was ready: {self._log_tail(state)}", url
            time.sleep(0.2)
        return False, f"not ready after {timeout:.0f}s: {self._log_tail(state)}", url

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    @staticmethod
    def _log_tail(state: Path, lines: int = 3) -> str:
        try:
            text = (state / "server.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        failed = [ln for ln in text if '"load-failed"' in ln]
        return (failed[-1] if failed else " | ".join(text[-lines:]))[:1000]

    def _stop(self, pid: int, grace: float = 10) -> None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self._reap(pid)
            if not _alive(pid):
                return
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reap(pid)

    def stop(self, spec: str) -> DeployResult:
        """Stop serving the spec (its spec or serving block was deleted)."""
        cur = self.record(spec)
        if not cur:
            return DeployResult("stopped", None, (), message="nothing was serving")
        self._stop(cur["pid"])
        (self._dir(spec) / "current.json").unlink(missing_ok=True)
        ev = event("deploy.stopped", spec, cur["runId"], self.name, None, cur["runId"], Reason.NOT_SERVED, "stopped")
        return DeployResult("stopped", None, (history.append(self.store, spec, ev),), message=f"run {cur['runId']} stopped")

    # ---------------------------------------------------------------- transitions
    def promote(self, request: DeployRequest) -> DeployResult:
        """The Deployer seam: serve the request's run with its spec's serving block."""
        serving = request.finetune.spec.serving
        if serving is None:
            raise PermanentError(f"spec '{request.spec}' has no spec.serving block; there is nothing to deploy")
        config = ServeConfig(
            run_dir=request.run_uri, model_name=request.spec, corpus_dir=request.corpus_dir,
            retriever=serving.retriever, top_k=serving.top_k, max_tokens=serving.max_tokens, device=request.device,
            base_uri=request.base_model, base_revision=request.base_revision, run_id=request.run_id,
        )
        return self.deploy(config, serving_id=request.serving_id)

    def deploy(self, config: ServeConfig, kind: str = "deploy.promoted", reason: str = Reason.SUCCEEDED,
               timeout: float | None = None, serving_id: str | None = None) -> DeployResult:
        """Make `config.run_dir`'s run the serving version of spec `config.model_name`.

        Refused (nothing touched) unless that exact run's gate passed. Idempotent: the run already
        serving healthily is `unchanged`. Otherwise the new server starts beside the old one; only
        when it is ready does current.json switch and the old process stop. If it never gets ready
        it is stopped and the old version keeps serving (`rolled_back`)."""
        spec = config.model_name
        run_dir = Path(config.run_dir)
        previous = self.record(spec)
        if previous is not None:
            previous = {**previous, "healthy": self._healthy(previous)}
        prev_id = previous["runId"] if previous else None
        try:
            gate = gate_decision(self.artifacts, str(run_dir))
        except GateNotPassed as exc:
            ev = event("deploy.refused", spec, _run_id_of(run_dir), self.name, prev_id, prev_id, Reason.GATE_FAILED,
                       str(exc))
            return DeployResult("refused", prev_id, (history.append(self.store, spec, ev),), message=str(exc))
        run_id = gate["runId"]
        config = config.replace(run_id=run_id)
        key = serving_key(config)
        if previous and previous["healthy"] and prev_id == run_id and previous.get("configKey") == key:
            return DeployResult("unchanged", run_id, (), previous["url"], "already serving")
        if previous and previous["healthy"] and prev_id == run_id:
            reason = Reason.SERVING_CONFIG_CHANGED  # same weights, new corpus/retriever/limits: restart beside it
        events = [history.append(self.store, spec, event(
            "deploy.started", spec, run_id, self.name, prev_id, prev_id, Reason.ROLLING_OUT,
            f"starting run {run_id} beside {prev_id or 'nothing'}", runDir=str(run_dir)))]
        pid, state = self._start(spec, run_id, config)
        ready, why, url = self._wait_ready(pid, state, run_id, timeout or self.ready_timeout)
        if not ready or url is None:  # ready means /readyz answered at `url`
            self._stop(pid)
            serving = prev_id if previous and previous["healthy"] else None
            msg = f"run {run_id} failed readiness ({why}); {'run ' + serving + ' keeps serving' if serving else 'nothing serves'}"
            events.append(history.append(self.store, spec, event(
                "deploy.rolled_back", spec, run_id, self.name, serving, prev_id, Reason.ROLLED_BACK, msg,
                automatic=True, runDir=str(run_dir))))
            return DeployResult("rolled_back", serving, tuple(events), previous["url"] if previous and serving else None, msg)
        _write_json(self._dir(spec) / "current.json", {"runId": run_id, "pid": pid, "url": url, "runDir": str(run_dir),
                                                       "since": history.now(), "configKey": key,
                                                       "servingId": serving_id})
        if previous and previous["pid"] != pid:
            self._stop(previous["pid"])
        msg = f"run {run_id} is serving at {url}" + (f" (was {prev_id})" if prev_id else "")
        events.append(history.append(self.store, spec, event(
            kind, spec, run_id, self.name, run_id, prev_id, reason, msg, url=url, runDir=str(run_dir),
            gate={k: gate[k] for k in ("runId", "passed") if k in gate},
            corpusVersion=_readyz_field(url, "corpusVersion"))))
        return DeployResult("promoted" if kind == "deploy.promoted" else "rolled_back", run_id, tuple(events), url, msg)

    def rollback(self, spec: str, to: str | None = None, timeout: float | None = None) -> DeployResult:
        """Serve an earlier run again: `to`, or the run that served before the current one. Only
        a run that served before and whose gate (still) passed; its recorded serve.json is reused."""
        target = rollback_target(self.store, self.artifacts, spec, to)
        state = self._dir(spec) / target / "serve.json"
        data = _read_json(state)
        if data is None:
            raise PermanentError(f"rollback: no recorded serve config for run {target} ({state}); deploy it with ftops serve")
        from controller.serve.config import from_json

        config = from_json(data)
        return self.deploy(config, kind="deploy.rolled_back", reason=Reason.REQUESTED, timeout=timeout)


def serving_key(config: ServeConfig) -> str:
    """What a running server must match to count as `unchanged`: the run and everything it serves
    with. A new corpus folder (the reconciler extracts one per corpus version), retriever or limit
    restarts the same run beside the old process: the index is rebuilt, nothing is retrained."""
    import hashlib

    fields = {"runDir": str(Path(config.run_dir).resolve()), "corpus": config.corpus_dir, "retriever": config.retriever,
              "topK": config.top_k, "maxTokens": config.max_tokens, "base": config.base_uri, "device": config.device}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _readyz_field(url: str, key: str) -> JsonValue:
    code, body = _get_json(f"{url}/readyz")
    return body.get(key) if code == 200 and body else None


def _run_id_of(run_dir: Path) -> str | None:
    manifest = _read_json(run_dir / "manifest.json")
    return manifest.get("runId") if manifest else None


def rollback_target(store: str | Path, artifacts: ArtifactStore, spec: str, to: str | None) -> str:
    """The run to go back to: `to` (must have served before), else the last served run before the
    current one. Raises PermanentError naming the runs that are possible."""
    served = history.served_runs(store, spec)
    current = history.serving_run(store, spec)
    earlier = []
    for e in served:
        if e["servingRunId"] not in earlier:
            earlier.append(e["servingRunId"])
    candidates = [r for r in earlier if r != current]
    if to is not None:
        matches = [r for r in earlier if r == to or r.startswith(to)]
        if not matches:
            raise PermanentError(f"rollback: run {to} never served spec '{spec}'; runs that served: "
                                 f"{', '.join(earlier) or 'none'}")
        if len(set(matches)) > 1:
            raise PermanentError(f"rollback: '{to}' matches several runs ({', '.join(matches)}); give more of the id")
        target = matches[0]
    else:
        if not candidates:
            raise PermanentError(f"rollback: spec '{spec}' has no earlier run to return to (served: {', '.join(earlier) or 'none'})")
        target = candidates[-1]
    gate_decision(artifacts, artifacts.run_uri(spec, target))  # still passed (GateNotPassed otherwise)
    return target
