"""The deploy step, local backend (the Deployer on one machine): a serving process per spec (the gateway and the embedded engine,
controller.serve.node), adapters loaded into it at runtime, routes switched through gateway.json.

Why one process that stays: a new run of the same base model is one more adapter over the base
already in memory (`/v1/load_lora_adapter`), so promotion is "load the new adapter, switch the
gateway's route, unload the old one" with nothing restarted and no request dropped. Only a new
base model or device starts a new process, beside the old one, switched to once it is ready.

Asynchronous: `promote` never waits for readiness or for a canary's analysis. It moves the
rollout one step and returns `rolling_out` (with when to look again) until it is done, keeping
the rollout's state in `rollout.json`, so the reconcile loop is never blocked and a controller
restart resumes where it was. Time comes from the injected clock. `deploy` (the CLI and the demo)
repeats the steps until the rollout settles.

Canary (spec.serving.rollout.strategy canary): routes `[stable 100-p, canary p]`; each step scrapes
the gateway's /metrics and controller.serve.rollout.analyse decides: wait, promote (route 100% to
the canary, unload the old adapter) or roll back (route 100% to stable, unload the canary). A
canary whose adapter fails every request is rolled back as soon as it has `min_errors` errors; the
gateway retried those requests on the stable run meanwhile.

Files under `<store>/<spec>/serving/`:

    <run-id>/serve.json     what each deployed run served with (rollback re-serves it)
    node-<key>/             one serving process: serve.json, gateway.json (the routes, watched by
                            the gateway), endpoint.json (ports, pid), server.log, spawn.json
    current.json            what serves: runId, pid, url, engineUrl, node, configKey, servingId
    rollout.json            the rollout in progress, if any

Every transition is returned as a JSON-serialisable event (`{kind, spec, runId, servingRunId,
previousRunId, backend, time, reason, message, ...}`; kinds deploy.refused, deploy.started,
deploy.promoted, deploy.rolled_back, deploy.stopped) and appended to the spec's deployment history
(controller.serve.history) so rollback knows the order; the reconciler appends the same events to
the audit ledger. `event`, `serving_key` and `rollback_target` are shared with controller.serve.kube.

The process runs in its own session (it outlives the controller); a restarted controller finds it
again from current.json and checks it with /readyz, which names the run ids the gateway routes to.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from controller.artifacts import open_store
from controller.clock import SYSTEM_CLOCK, Clock
from controller.errors import PermanentError
from controller.seams import ArtifactStore, DeployEvent, DeployRequest, DeployResult, JsonValue, Serving
from controller.serve import history
from controller.serve.config import ServeConfig, from_json, write_config
from controller.serve.gatecheck import GateNotPassed, gate_decision, requested_config
from controller.serve.gateway import GatewayConfig, Route, read_config
from controller.serve.gateway import write_config as write_gateway
from controller.serve.rollout import Policy, RunStats, analyse, canary_weight, parse_metrics
from controller.status import Reason

def event(kind: str, spec: str, run_id: str | None, backend: str, serving: str | None, previous: str | None,
          reason: str, message: str = "", **extra: JsonValue) -> DeployEvent:
    return {"kind": kind, "spec": spec, "runId": run_id, "servingRunId": serving, "previousRunId": previous,
            "backend": backend, "time": history.now(), "reason": reason, "message": message, **extra}


POLL = 1.0
"""Seconds until a starting process or a route switch is worth looking at again."""


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _http(method: str, url: str, payload: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own local processes
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (OSError, ValueError):
        return 0, b""


def _get_json(url: str) -> tuple[int, dict | None]:
    code, body = _http("GET", url, timeout=3.0)
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return code, None
    return code, data if isinstance(data, dict) else None


def process_alive(pid: int) -> bool:
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


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def node_key(config: ServeConfig) -> str:
    """What needs a process of its own: the base model and the device (adapters come and go)."""
    from controller.serve.model import RunFiles, read_manifest

    run = RunFiles(Path(config.run_dir), read_manifest(Path(config.run_dir)))  # verified when it is loaded
    base = str(run.base_dir(config.base_uri, config.base_revision))
    return hashlib.sha256(json.dumps([base, config.device]).encode()).hexdigest()[:12]


class LocalServing:
    """The Deployer on this machine (see the module docstring)."""

    name = "local"

    def __init__(self, store: str | Path, host: str = "127.0.0.1", python: str | None = None,
                 ready_timeout: float = 300, env: dict[str, str] | None = None, clock: Clock = SYSTEM_CLOCK,
                 policy: Policy | None = None) -> None:
        self.store = Path(store)
        self.artifacts = open_store(str(self.store))
        self.host = host
        self.python = python or sys.executable
        self.ready_timeout = ready_timeout
        self.env = env
        self.clock = clock
        self.policy = policy

    # ---------------------------------------------------------------- state
    def _dir(self, spec: str) -> Path:
        return self.store / spec / "serving"

    def run_dir(self, spec: str, run_id: str) -> Path:
        return self.store / spec / run_id

    def record(self, spec: str) -> dict | None:
        """current.json: what serves as recorded (runId, pid, url, configKey), unchecked."""
        return _read_json(self._dir(spec) / "current.json")

    def _rollout(self, spec: str) -> dict | None:
        return _read_json(self._dir(spec) / "rollout.json")

    def current(self, spec: str) -> Serving | None:
        cur = self.record(spec)
        if not cur:
            return None
        rollout = self._rollout(spec)
        in_place = rollout["runId"] if rollout and rollout.get("pid") == cur.get("pid") else None
        return Serving(spec, cur["runId"], self._healthy(cur, switching_to=in_place), cur.get("url"), "",
                       cur.get("servingId"))

    def _healthy(self, cur: dict, run_id: str | None = None, switching_to: str | None = None) -> bool:
        """The process is alive and its gateway is ready for the run (`run_id`, else the recorded
        one). During an in-place rollout (`switching_to`: the new run, in the same process) the
        gateway names the new run from the moment it takes the route, one poll before the switch is
        recorded; the process serves all along, so that counts as healthy too."""
        code, body = _get_json(f"{cur['url']}/readyz")
        want = {run_id or cur["runId"], *([switching_to] if switching_to else [])}
        return bool(code == 200 and body and body.get("runId") in want and process_alive(int(cur["pid"])))

    def _record(self, spec: str, ev: DeployEvent) -> DeployEvent:
        return history.append(self.store, spec, ev)

    # ---------------------------------------------------------------- processes
    def _start_node(self, spec: str, config: ServeConfig, key: str) -> dict:
        state = self._dir(spec) / f"node-{key}-{config.run_id}"
        state.mkdir(parents=True, exist_ok=True)
        endpoint = state / "endpoint.json"
        endpoint.unlink(missing_ok=True)
        (state / "gateway.json").unlink(missing_ok=True)  # a fresh process starts with this run's route
        write_config(config.replace(host=self.host, port=0, endpoint_file=str(endpoint)), state / "serve.json")
        log = (state / "server.log").open("ab")
        env = dict(self.env if self.env is not None else os.environ)
        for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
            env.setdefault(name, value)
        proc = subprocess.Popen([self.python, "-m", "controller.cli", "serve", "--config", str(state / "serve.json"),
                                 "--gateway-config", str(state / "gateway.json")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, close_fds=True)
        log.close()
        _write_json(state / "spawn.json", {"pid": proc.pid, "time": history.now()})
        return {"pid": proc.pid, "node": str(state), "nodeKey": key}

    def _endpoint(self, node: dict) -> tuple[str, str] | None:
        ep = _read_json(Path(node["node"]) / "endpoint.json")
        if not ep or ep.get("pid") != node["pid"]:
            return None
        ports = ep.get("ports") or {}
        return f"http://{ep['host']}:{ports['gateway']}", f"http://127.0.0.1:{ports['engine']}"

    def _stop_pid(self, pid: int, grace: float = 10) -> None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        deadline = self.clock.monotonic() + grace
        while self.clock.monotonic() < deadline:
            _reap(pid)
            if not process_alive(pid):
                return
            self.clock.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _reap(pid)

    @staticmethod
    def _log_tail(node: str, lines: int = 3) -> str:
        try:
            text = (Path(node) / "server.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        failed = [ln for ln in text if '"load-failed"' in ln]
        return (failed[-1] if failed else " | ".join(text[-lines:]))[:1000]

    def _gateway(self, cur: dict) -> GatewayConfig:
        return read_config(Path(cur["node"]) / "gateway.json")

    def _route(self, cur: dict, gw: GatewayConfig) -> None:
        write_gateway(gw, Path(cur["node"]) / "gateway.json")

    # ---------------------------------------------------------------- the seam
    def promote(self, request: DeployRequest) -> DeployResult:
        """One step of serving the request's run (see the module docstring)."""
        serving = request.finetune.spec.serving
        if serving is None:
            raise PermanentError(f"spec '{request.spec}' has no spec.serving block; there is nothing to deploy")
        config = ServeConfig(
            run_dir=request.run_uri, model_name=request.spec, corpus_dir=request.corpus_dir,
            retriever=serving.retriever, top_k=serving.top_k, max_tokens=serving.max_tokens, device=request.device,
            base_uri=request.base_model, base_revision=request.base_revision, run_id=request.run_id,
            serving_config_sha256=request.serving_config_sha256,
        )
        try:
            requested_config(request)
        except GateNotPassed as exc:
            return self._refuse(request.spec, request.run_id, str(exc))
        policy = self.policy or Policy(window_seconds=serving.rollout.stable_seconds)
        canary = serving.rollout.canary_percent if serving.rollout.strategy == "canary" else None
        return self.step(config, serving_id=request.serving_id, canary=canary, policy=policy)

    def deploy(self, config: ServeConfig, kind: str = "deploy.promoted", reason: str = Reason.SUCCEEDED,
               timeout: float | None = None, serving_id: str | None = None, canary: int | None = None,
               policy: Policy | None = None) -> DeployResult:
        """Serve `config`'s run and wait until the rollout settles (the CLI, the demo): the steps
        of `promote`, repeated. The events of every step are returned together."""
        events: list[DeployEvent] = []
        deadline = self.clock.monotonic() + (timeout or self.ready_timeout) + (policy.window_seconds if policy else 0)
        while True:
            result = self.step(config, kind, reason, serving_id, canary, policy or Policy())
            events.extend(result.events)
            if result.outcome != "rolling_out" or self.clock.monotonic() > deadline:
                return replace(result, events=tuple(events))
            self.clock.sleep(result.after or POLL)

    def _refuse(self, spec: str, run_id: str | None, message: str) -> DeployResult:
        previous = self.record(spec)
        prev_id = previous["runId"] if previous else None
        ev = event("deploy.refused", spec, run_id, self.name, prev_id, prev_id, Reason.GATE_FAILED, message)
        return DeployResult("refused", prev_id, (self._record(spec, ev),), previous["url"] if previous else None, message)

    def step(self, config: ServeConfig, kind: str = "deploy.promoted", reason: str = Reason.SUCCEEDED,
             serving_id: str | None = None, canary: int | None = None, policy: Policy | None = None) -> DeployResult:
        """Move the rollout of `config`'s run one step. Refused (nothing touched) unless that exact
        run's gate passed on this serving configuration (`config.serving_config_sha256`)."""
        spec = config.model_name
        run_dir = Path(config.run_dir)
        try:
            if config.serving_config_sha256 is None:
                raise GateNotPassed(f"{run_dir}: the serve config names no serving configuration "
                                    "(servingConfigSha256), so no evaluation vouches for what it would serve")
            gate = gate_decision(self.artifacts, str(run_dir), config.serving_config_sha256)
        except GateNotPassed as exc:
            return self._refuse(spec, _run_id_of(run_dir), str(exc))
        run_id = str(gate["runId"])
        config = config.replace(run_id=run_id)
        key = serving_key(config)
        write_config(config, self._dir(spec) / run_id / "serve.json")
        rollout = self._rollout(spec)
        if rollout is not None and (rollout["runId"], rollout["configKey"]) != (run_id, key):
            self._abandon(spec, rollout, f"superseded by run {run_id}")
            rollout = None
        if rollout is not None:
            return self._advance(spec, rollout, policy or Policy())
        cur = self.record(spec)
        healthy = bool(cur and self._healthy(cur))
        if cur and healthy and cur["runId"] == run_id and cur.get("configKey") == key:
            return DeployResult("unchanged", run_id, (), cur["url"], "already serving")
        if cur and healthy and cur["runId"] == run_id:
            reason = Reason.SERVING_CONFIG_CHANGED  # same weights, new corpus/retriever/limits
        prev_id = cur["runId"] if cur and healthy else None
        base = {"runId": run_id, "configKey": key, "servingId": serving_id, "runDir": str(run_dir), "kind": kind,
                "reason": reason, "previousRunId": prev_id, "startedAt": self.clock.time()}
        nkey = node_key(config)
        if cur and healthy and cur.get("nodeKey") == nkey and "engineUrl" in cur:
            return self._begin_in_place(spec, cur, config, base, canary)
        node = self._start_node(spec, config, nkey)
        state = {**base, **node, "phase": "starting"}
        _write_json(self._dir(spec) / "rollout.json", state)
        ev = self._record(spec, event("deploy.started", spec, run_id, self.name, prev_id, prev_id, Reason.ROLLING_OUT,
                                      f"starting the gateway and engine for run {run_id} beside "
                                      f"{prev_id or 'nothing'}", runDir=str(run_dir)))
        return self._waiting(spec, prev_id, cur, (ev,), f"starting run {run_id}", POLL)

    def _waiting(self, spec: str, prev_id: str | None, cur: dict | None, events: tuple, message: str,
                 after: float) -> DeployResult:
        return DeployResult("rolling_out", prev_id, events, cur["url"] if cur and prev_id else None, message, after)

    def _begin_in_place(self, spec: str, cur: dict, config: ServeConfig, base: dict, canary: int | None) -> DeployResult:
        """Same process: load the new adapter (unless it is the serving run), then route to it."""
        run_id, prev_id = base["runId"], cur["runId"]
        gw = self._gateway(cur)
        strategy = "canary" if canary is not None and run_id != prev_id else "rolling"
        started = self._record(spec, event("deploy.started", spec, run_id, self.name, prev_id, prev_id, Reason.ROLLING_OUT,
                                           f"{strategy} rollout of run {run_id} beside run {prev_id}", strategy=strategy,
                                           runDir=base["runDir"]))
        if run_id != prev_id:
            code, body = _http("POST", f"{cur['engineUrl']}/v1/load_lora_adapter",
                               {"lora_name": run_id, "lora_path": config.run_dir}, timeout=300)
            if code != 200 and b"already been loaded" not in body:
                msg = f"run {run_id} could not be loaded ({_error_text(body)}); run {prev_id} keeps serving"
                ev = self._record(spec, event("deploy.rolled_back", spec, run_id, self.name, prev_id, prev_id,
                                              Reason.ROLLED_BACK, msg, automatic=True, runDir=base["runDir"]))
                return DeployResult("rolled_back", prev_id, (started, ev), cur["url"], msg)
        serving = replace(gw, corpus_dir=config.corpus_dir, retriever=config.retriever, top_k=config.top_k,
                          max_tokens=config.max_tokens, index_cache=config.index_cache)
        if canary is not None and run_id != prev_id:
            stable_w, canary_w = canary_weight(canary)
            serving = serving.with_routes(Route(prev_id, prev_id, stable_w), Route(run_id, run_id, canary_w))
            phase = "canary"
        else:
            serving = serving.with_routes(Route(run_id, run_id, 100))
            phase = "switching"
        self._route(cur, serving)
        state = {**base, "phase": phase, "pid": cur["pid"], "node": cur["node"], "nodeKey": cur["nodeKey"],
                 "url": cur["url"], "engineUrl": cur["engineUrl"], "gatewayDigest": serving.digest()}
        if phase == "canary":
            state["baseline"] = self._scrape(cur["url"])
        _write_json(self._dir(spec) / "rollout.json", state)
        what = (f"canary of run {run_id} on {canary_w}% of requests beside run {prev_id}" if phase == "canary"
                else f"routing to run {run_id}")
        return self._waiting(spec, prev_id, cur, (started,), what, POLL)

    def _scrape(self, url: str) -> dict:
        code, body = _http("GET", f"{url}/metrics", timeout=5)
        if code != 200:
            return {}
        return {run: s.to_json() for run, s in parse_metrics(body.decode()).items()}

    def _advance(self, spec: str, ro: dict, policy: Policy) -> DeployResult:
        cur = self.record(spec)
        prev_id = ro.get("previousRunId")
        elapsed = self.clock.time() - float(ro["startedAt"])
        if ro["phase"] == "starting":
            ends = self._endpoint(ro)
            if ends is not None:
                code, body = _get_json(f"{ends[0]}/readyz")
                if code == 200 and body and body.get("runId") == ro["runId"]:
                    return self._switch(spec, {**ro, "url": ends[0], "engineUrl": ends[1]}, cur)
            if not process_alive(int(ro["pid"])):
                _reap(int(ro["pid"]))
                return self._fail(spec, ro, f"the server exited before it was ready: {self._log_tail(ro['node'])}")
            if elapsed > self.ready_timeout:
                self._stop_pid(int(ro["pid"]))
                return self._fail(spec, ro, f"not ready after {self.ready_timeout:.0f}s: {self._log_tail(ro['node'])}")
            return self._waiting(spec, prev_id, cur, (), f"run {ro['runId']} is starting", POLL)
        if ro["phase"] == "switching":
            code, body = _get_json(f"{ro['url']}/readyz")
            if code == 200 and body and body.get("config") == ro["gatewayDigest"]:
                return self._switch(spec, ro, cur)
            if elapsed > self.ready_timeout:
                return self._fail(spec, ro, f"the gateway did not take the new route in {self.ready_timeout:.0f}s "
                                            f"({(body or {}).get('reason', code)})")
            return self._waiting(spec, prev_id, cur, (), f"switching the route to run {ro['runId']}", POLL)
        baseline = {run: _stats(s) for run, s in (ro.get("baseline") or {}).items()}
        now = {run: _stats(s) for run, s in self._scrape(ro["url"]).items()}
        verdict = analyse(baseline, now, ro["runId"], str(prev_id), elapsed, policy)
        if verdict.decision == "wait":
            left = max(0.5, min(5.0, policy.window_seconds - elapsed))
            return self._waiting(spec, prev_id, cur, (), verdict.message, left)
        if verdict.decision == "rollback":
            return self._fail(spec, ro, f"the canary's analysis failed: {verdict.message}")
        gw = self._gateway(ro).with_routes(Route(ro["runId"], ro["runId"], 100))
        self._route(ro, gw)
        return self._switch(spec, {**ro, "analysis": verdict.message}, cur)

    def _switch(self, spec: str, ro: dict, cur: dict | None) -> DeployResult:
        """The new version serves: record it, then retire what served before."""
        run_id, prev_id = ro["runId"], ro.get("previousRunId")
        _write_json(self._dir(spec) / "current.json", {
            "runId": run_id, "pid": ro["pid"], "url": ro["url"], "engineUrl": ro["engineUrl"], "node": ro["node"],
            "nodeKey": ro["nodeKey"], "runDir": ro["runDir"], "since": history.now(), "configKey": ro["configKey"],
            "servingId": ro.get("servingId")})
        (self._dir(spec) / "rollout.json").unlink(missing_ok=True)
        if cur and int(cur["pid"]) != int(ro["pid"]):
            self._stop_pid(int(cur["pid"]))
        elif prev_id and prev_id != run_id:
            _http("POST", f"{ro['engineUrl']}/v1/unload_lora_adapter", {"lora_name": prev_id})
        msg = f"run {run_id} is serving at {ro['url']}" + (f" (was {prev_id})" if prev_id else "")
        if ro.get("analysis"):
            msg += f"; {ro['analysis']}"
        kind = str(ro.get("kind") or "deploy.promoted")
        ev = self._record(spec, event(kind, spec, run_id, self.name, run_id, prev_id, str(ro.get("reason") or Reason.SUCCEEDED),
                                      msg, url=ro["url"], runDir=ro["runDir"], corpusVersion=_readyz_field(ro["url"], "corpusVersion")))
        return DeployResult("promoted" if kind == "deploy.promoted" else "rolled_back", run_id, (ev,), ro["url"], msg)

    def _fail(self, spec: str, ro: dict, why: str) -> DeployResult:
        """The new version does not serve: what served before keeps (or goes back to) serving."""
        cur = self.record(spec)
        serving = cur["runId"] if cur and self._healthy(cur) else None
        self._abandon(spec, ro, why)
        msg = f"run {ro['runId']} {why}; {'run ' + serving + ' keeps serving' if serving else 'nothing serves'}"
        ev = self._record(spec, event("deploy.rolled_back", spec, ro["runId"], self.name, serving, ro.get("previousRunId"),
                                      Reason.ROLLED_BACK, msg, automatic=True, runDir=ro["runDir"]))
        return DeployResult("rolled_back", serving, (ev,), cur["url"] if cur and serving else None, msg)

    def _abandon(self, spec: str, ro: dict, why: str) -> None:
        """Undo a rollout in progress: its own process stopped, or its route and adapter taken out."""
        cur = self.record(spec)
        if ro["phase"] == "starting":
            self._stop_pid(int(ro["pid"]))
        elif cur:
            gw = self._gateway(cur).with_routes(Route(cur["runId"], cur["runId"], 100))
            self._route(cur, gw)
            if ro["runId"] != cur["runId"]:
                _http("POST", f"{cur['engineUrl']}/v1/unload_lora_adapter", {"lora_name": ro["runId"]})
        (self._dir(spec) / "rollout.json").unlink(missing_ok=True)

    def stop(self, spec: str) -> DeployResult:
        """Stop serving the spec (its spec or serving block was deleted)."""
        ro = self._rollout(spec)
        if ro is not None:
            self._abandon(spec, ro, "the spec is no longer served")
        cur = self.record(spec)
        if not cur:
            return DeployResult("stopped", None, (), message="nothing was serving")
        self._stop_pid(int(cur["pid"]))
        (self._dir(spec) / "current.json").unlink(missing_ok=True)
        ev = event("deploy.stopped", spec, cur["runId"], self.name, None, cur["runId"], Reason.NOT_SERVED, "stopped")
        return DeployResult("stopped", None, (self._record(spec, ev),), message=f"run {cur['runId']} stopped")

    def rollback(self, spec: str, to: str | None = None, timeout: float | None = None) -> DeployResult:
        """Serve an earlier run again: `to`, or the run that served before the current one. Only
        a run that served before and whose gate (still) passed; its recorded serve.json is reused."""
        target = rollback_target(self.store, self.artifacts, spec, to)
        data = _read_json(self._dir(spec) / target / "serve.json")
        if data is None:
            raise PermanentError(f"rollback: no recorded serve config for run {target}; deploy it with ftops deploy")
        return self.deploy(from_json(data), kind="deploy.rolled_back", reason=Reason.REQUESTED, timeout=timeout)


def serving_key(config: ServeConfig) -> str:
    """What a running server must match to count as `unchanged`: the run and everything it serves
    with. A new corpus folder (the reconciler extracts one per corpus version), retriever or limit
    restarts the same run beside the old process: the index is rebuilt, nothing is retrained."""
    import hashlib

    fields = {"runDir": str(Path(config.run_dir).resolve()), "corpus": config.corpus_dir, "retriever": config.retriever,
              "topK": config.top_k, "maxTokens": config.max_tokens, "base": config.base_uri, "device": config.device,
              "servingConfig": config.serving_config_sha256}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


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


def _stats(data: dict) -> RunStats:
    return RunStats.from_json(data)


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return body[:300].decode(errors="replace") or "no answer"


def _readyz_field(url: str, key: str) -> JsonValue:
    code, body = _get_json(f"{url}/readyz")
    return body.get(key) if code == 200 and body else None


def _run_id_of(run_dir: Path) -> str | None:
    manifest = _read_json(run_dir / "manifest.json")
    return manifest.get("runId") if manifest else None
