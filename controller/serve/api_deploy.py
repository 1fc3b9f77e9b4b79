"""The Deployer for managed fine-tunes (`method.type: api`): ftops' gateway in front of the
provider's chat endpoint, which serves the fine-tuned model.

The gateway is the same one that fronts our own engines (controller.serve.gateway: validation,
retrieval over the spec's corpus, the prompt builder, citations, API keys, limits, metrics); its
engine is the provider (its API root, with the API key from the variable the operator's or the
spec's secretRef names), and its route names the provider's model id of the run
(`ft:gpt-4o-mini:...`), read from the run's manifest. So:

- promotion switches the gateway's route to the new run's model id (gateway.json rewritten; the
  gateway re-reads it and /readyz names the config in force), nothing restarts;
- rollback switches it back to an earlier run's model id, which the provider still hosts;
- only the exact run whose gate passed on this serving configuration is ever routed to.

`promote` never blocks: it moves the rollout one step and returns `rolling_out` until the gateway
is ready on the new route. Files under `<store>/<spec>/serving-api/`: gateway.json (watched by the
gateway process), endpoint.json, spawn.json, server.log, current.json (what serves), rollout.json
(the switch in progress) and `<run-id>.json` (the gateway config each run served with, which a
rollback re-serves). Transitions are the same events as the other deployers' (serve.deploy.event),
appended to the spec's deployment history and, by the reconciler, to the ledger.

`ByMethod` routes each spec to this deployer or the other one by its method, and retires what
the other one served when a spec moves between them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from controller.artifacts import open_store
from controller.catalog import OperatorConfig
from controller.clock import SYSTEM_CLOCK, Clock
from controller.errors import PermanentError
from controller.fsutil import read_json, write_json_atomic
from controller.identity import serving_config, serving_config_sha256
from controller.seams import DeployEvent, Deployer, DeployRequest, DeployResult, JsonObject, Serving
from controller.serve import history
from controller.serve.deploy import event, process_alive, rollback_target
from controller.serve.engine_client import api_root
from controller.serve.gatecheck import GateNotPassed, gate_decision
from controller.serve.gateway import GatewayConfig, Route, write_config
from controller.status import Reason

POLL = 1.0
"""Seconds until a starting gateway or a route switch is worth looking at again."""


def engine_root(base_url: str, provider: str) -> str:
    """The provider as an engine: its root, under which the gateway calls /v1/models and
    /v1/chat/completions (the operator configures the API's base URL, ending in /v1); the
    error names the operator-config field."""
    try:
        return api_root(base_url)
    except ValueError:
        raise PermanentError(f"operator config providers.{provider}.baseUrl {base_url!r} must end in /v1 to serve through "
                             "the gateway (it calls <root>/v1/chat/completions)") from None


class ApiServing:
    """The Deployer for runs of method api (see the module docstring)."""

    name = "api"

    def __init__(self, store: str | Path, operator: OperatorConfig, host: str = "127.0.0.1", python: str | None = None,
                 ready_timeout: float = 120, env: dict[str, str] | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = Path(store)
        self.artifacts = open_store(str(self.store))
        self.operator = operator
        self.host = host
        self.python = python or sys.executable
        self.ready_timeout = ready_timeout
        self.env = env
        self.clock = clock

    # ---------------------------------------------------------------- state
    def _dir(self, spec: str) -> Path:
        return self.store / spec / "serving-api"

    def owns(self, spec: str) -> bool:
        """Whether this deployer serves (or is rolling out) `spec`."""
        d = self._dir(spec)
        return (d / "current.json").is_file() or (d / "rollout.json").is_file()

    def _current(self, spec: str) -> JsonObject | None:
        data = read_json(self._dir(spec) / "current.json")
        return data if isinstance(data, dict) else None

    def _rollout(self, spec: str) -> JsonObject | None:
        data = read_json(self._dir(spec) / "rollout.json")
        return data if isinstance(data, dict) else None

    def current(self, spec: str) -> Serving | None:
        cur = self._current(spec)
        if cur is None:
            return None
        return Serving(spec, str(cur["runId"]), self._healthy(cur), str(cur["url"]), "",
                       str(cur["servingId"]) if cur.get("servingId") else None)

    def _ready(self, url: str) -> JsonObject | None:
        """The gateway's /readyz body when it answers 200."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=3) as resp:  # noqa: S310 - our own gateway
                body = json.loads(resp.read() or b"null")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def _healthy(self, cur: JsonObject) -> bool:
        body = self._ready(str(cur["url"]))
        return bool(body and body.get("runId") == cur["runId"] and _alive(int(str(cur["pid"]))))

    def _record(self, spec: str, ev: DeployEvent) -> DeployEvent:
        return history.append(self.store, spec, ev)

    # ---------------------------------------------------------------- what a run serves with
    def _gateway_config(self, request: DeployRequest) -> GatewayConfig:
        """The gateway for the request's run: the provider as its engine, the run's model id as
        its route, the serving block's retrieval and limits."""
        from controller.spec.base import secret_env_name
        from controller.spec.method import ApiMethod

        method = request.finetune.spec.method
        serving = request.finetune.spec.serving
        assert isinstance(method, ApiMethod) and serving is not None
        manifest = self.artifacts.manifest(request.run_uri)
        block = manifest.data.get("provider") if manifest is not None else None
        if not isinstance(block, dict) or not block.get("fineTunedModel"):
            raise GateNotPassed(f"run {request.run_id}: its manifest names no fine-tuned model at a provider; "
                                "nothing to route to")
        provider = self.operator.providers.get(method.provider)
        if provider is None:
            raise PermanentError(f"spec.method.provider: '{method.provider}' is not a provider the operator configured")
        ref = method.credentials or provider.credentials
        return GatewayConfig(
            spec_name=request.spec, routes=(Route(request.run_id, str(block["fineTunedModel"]), 100),),
            engines=(engine_root(provider.base_url, method.provider),), corpus_dir=request.corpus_dir,
            retriever=serving.retriever, top_k=serving.top_k, max_tokens=serving.max_tokens,
            engine_api_key_env=secret_env_name(ref.name, ref.key))

    def _check(self, request: DeployRequest) -> None:
        """GateNotPassed unless this run's own gate passed on the configuration being served."""
        own = serving_config_sha256(serving_config(request.finetune, request.corpus_version))
        if own != request.serving_config_sha256:
            raise GateNotPassed(f"run {request.run_id}: the request presents serving configuration "
                                f"{request.serving_config_sha256[:12]}…, but its serving block and corpus are "
                                f"{str(own)[:12]}…; nothing is promoted on a configuration it was not evaluated on")
        gate = gate_decision(self.artifacts, request.run_uri)
        if gate.get("servingConfigSha256") != request.serving_config_sha256:
            raise GateNotPassed(f"run {request.run_id}: its gate passed on serving configuration "
                                f"{str(gate.get('servingConfigSha256'))[:12]}…, not on the one being deployed "
                                f"({request.serving_config_sha256[:12]}…); evaluate it on this configuration first")

    # ---------------------------------------------------------------- the seam
    def promote(self, request: DeployRequest) -> DeployResult:
        spec = request.spec
        if request.finetune.spec.serving is None:
            raise PermanentError(f"spec '{spec}' has no spec.serving block; there is nothing to deploy")
        try:
            self._check(request)
            config = self._gateway_config(request)
        except GateNotPassed as exc:
            return self._refuse(spec, request.run_id, str(exc))
        write_json_atomic(self._dir(spec) / f"{request.run_id}.json", {"gateway": config.to_json(),
                                                                        "servingId": request.serving_id})
        return self.step(spec, config, request.serving_id)

    def step(self, spec: str, config: GatewayConfig, serving_id: str | None, kind: str = "deploy.promoted",
             reason: str = Reason.SUCCEEDED) -> DeployResult:
        """Move the switch to `config` one step (start the gateway, or route it anew)."""
        primary = config.primary()
        assert primary is not None
        run_id, digest = primary.run_id, config.digest()
        rollout = self._rollout(spec)
        if rollout is not None and (rollout["runId"], rollout["digest"]) == (run_id, digest):
            return self._advance(spec, rollout)
        cur = self._current(spec)
        healthy = cur is not None and self._healthy(cur)
        if cur is not None and healthy and cur["runId"] == run_id and cur.get("digest") == digest:
            return DeployResult("unchanged", run_id, (), str(cur["url"]), "already serving")
        prev_id = str(cur["runId"]) if cur is not None and healthy else None
        if cur is not None and cur["runId"] == run_id:
            reason = Reason.SERVING_CONFIG_CHANGED if reason == Reason.SUCCEEDED else reason
        base: JsonObject = {"runId": run_id, "digest": digest, "servingId": serving_id, "kind": kind, "reason": reason,
                            "previousRunId": prev_id, "startedAt": self.clock.time(), "model": primary.model}
        write_config(config, self._dir(spec) / "gateway.json")  # the route switch (a running gateway re-reads it)
        if cur is not None and healthy:
            state = {**base, "phase": "switching", "pid": cur["pid"], "url": cur["url"],
                     "previous": read_json(self._dir(spec) / "previous-gateway.json")}
            message = f"routing the gateway from run {prev_id} to run {run_id} ({primary.model})"
        else:
            state = {**base, "phase": "starting", **self._start(spec)}
            message = f"starting the gateway for run {run_id} ({primary.model}) in front of {config.engines[0]}"
        write_json_atomic(self._dir(spec) / "rollout.json", state)
        ev = self._record(spec, event("deploy.started", spec, run_id, self.name, prev_id, prev_id, Reason.ROLLING_OUT,
                                      message, model=primary.model))
        return DeployResult("rolling_out", prev_id, (ev,), str(cur["url"]) if cur and prev_id else None, message, POLL)

    def _start(self, spec: str) -> JsonObject:
        d = self._dir(spec)
        endpoint = d / "endpoint.json"
        endpoint.unlink(missing_ok=True)
        env = dict(self.env if self.env is not None else os.environ)
        with (d / "server.log").open("ab") as log:
            proc = subprocess.Popen([self.python, "-m", "controller.serve.api_deploy", "--gateway-config",
                                     str(d / "gateway.json"), "--host", self.host, "--endpoint", str(endpoint)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, close_fds=True)
        write_json_atomic(d / "spawn.json", {"pid": proc.pid, "time": history.now()})
        return {"pid": proc.pid}

    def _advance(self, spec: str, ro: JsonObject) -> DeployResult:
        prev_id = str(ro["previousRunId"]) if ro.get("previousRunId") else None
        cur = self._current(spec)
        url = str(ro.get("url") or "")
        if ro["phase"] == "starting":
            ep = read_json(self._dir(spec) / "endpoint.json")
            if isinstance(ep, dict) and ep.get("pid") == ro["pid"]:
                url = f"http://{ep['host']}:{ep['ports']['gateway']}"
        body = self._ready(url) if url else None
        if body is not None and body.get("config") == ro["digest"] and body.get("runId") == ro["runId"]:
            return self._switch(spec, {**ro, "url": url}, cur)
        if not _alive(int(str(ro["pid"]))):
            return self._fail(spec, ro, f"the gateway exited: {self._log_tail(spec)}")
        if self.clock.time() - float(str(ro["startedAt"])) > self.ready_timeout:
            why = (body or {}).get("reason") or self._log_tail(spec)
            return self._fail(spec, ro, f"the gateway was not ready on run {ro['runId']} after {self.ready_timeout:.0f}s "
                                        f"({why})")
        return DeployResult("rolling_out", prev_id, (), str(cur["url"]) if cur and prev_id else None,
                            f"waiting for the gateway to route to run {ro['runId']}", POLL)

    def _switch(self, spec: str, ro: JsonObject, cur: JsonObject | None) -> DeployResult:
        d = self._dir(spec)
        run_id, prev_id = str(ro["runId"]), ro.get("previousRunId")
        if cur is not None and int(str(cur["pid"])) != int(str(ro["pid"])):
            _stop(int(str(cur["pid"])), self.clock)  # a gateway that had died or hung: the new one replaced it
        write_json_atomic(d / "current.json", {"runId": run_id, "model": ro["model"], "pid": ro["pid"], "url": ro["url"],
                                               "digest": ro["digest"], "servingId": ro.get("servingId"),
                                               "since": history.now()})
        gw = read_json(d / "gateway.json")
        if isinstance(gw, dict):
            write_json_atomic(d / "previous-gateway.json", gw)  # what a failed next switch goes back to
        (d / "rollout.json").unlink(missing_ok=True)
        kind, reason = str(ro.get("kind") or "deploy.promoted"), str(ro.get("reason") or Reason.SUCCEEDED)
        message = f"run {run_id} ({ro['model']}) serves through the gateway at {ro['url']}" + \
            (f" (was {prev_id})" if prev_id and prev_id != run_id else "")
        ev = self._record(spec, event(kind, spec, run_id, self.name, run_id, str(prev_id) if prev_id else None, reason,
                                      message, model=ro["model"], url=ro["url"]))
        if kind == "deploy.rolled_back":
            return DeployResult("rolled_back", run_id, (ev,), str(ro["url"]), message)
        return DeployResult("promoted", run_id, (ev,), str(ro["url"]), message)

    def _fail(self, spec: str, ro: JsonObject, why: str) -> DeployResult:
        """The new route never got ready: what served before serves on (its route written back)."""
        d = self._dir(spec)
        prev_id = str(ro["previousRunId"]) if ro.get("previousRunId") else None
        (d / "rollout.json").unlink(missing_ok=True)
        cur = self._current(spec)
        if ro["phase"] == "switching" and isinstance(ro.get("previous"), dict):
            write_json_atomic(d / "gateway.json", ro["previous"])
        elif ro["phase"] == "starting":
            _stop(int(str(ro["pid"])), self.clock)
        message = f"run {ro['runId']} was not promoted: {why}" + (f"; run {prev_id} keeps serving" if prev_id else "")
        ev = self._record(spec, event("deploy.rolled_back", spec, str(ro["runId"]), self.name, prev_id, prev_id,
                                      Reason.ROLLED_BACK, message, automatic=True))
        return DeployResult("rolled_back" if prev_id else "failed", prev_id, (ev,),
                            str(cur["url"]) if cur and prev_id else None, message)

    def _refuse(self, spec: str, run_id: str, message: str) -> DeployResult:
        cur = self._current(spec)
        prev_id = str(cur["runId"]) if cur else None
        ev = self._record(spec, event("deploy.refused", spec, run_id, self.name, prev_id, prev_id, Reason.GATE_FAILED,
                                      message))
        return DeployResult("refused", prev_id, (ev,), str(cur["url"]) if cur else None, message)

    def _log_tail(self, spec: str, lines: int = 3) -> str:
        try:
            text = (self._dir(spec) / "server.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])[:800]

    def stop(self, spec: str) -> DeployResult:
        d = self._dir(spec)
        ro, cur = self._rollout(spec), self._current(spec)
        for state in (ro, cur):
            if state is not None:
                _stop(int(str(state["pid"])), self.clock)
        for name in ("rollout.json", "current.json", "gateway.json", "previous-gateway.json"):
            (d / name).unlink(missing_ok=True)
        if cur is None:
            return DeployResult("stopped", None, (), message="nothing was serving")
        run_id = str(cur["runId"])
        ev = self._record(spec, event("deploy.stopped", spec, run_id, self.name, None, run_id, Reason.NOT_SERVED, "stopped"))
        return DeployResult("stopped", None, (ev,), message=f"run {run_id} stopped")

    def rollback(self, spec: str, to: str | None = None) -> DeployResult:
        """Route the gateway back to an earlier run's model (its gate must still pass), waiting
        until the gateway takes the route."""
        target = rollback_target(self.store, self.artifacts, spec, to)
        saved = read_json(self._dir(spec) / f"{target}.json")
        if not isinstance(saved, dict):
            raise PermanentError(f"rollback: run {target} never served through the api gateway of spec '{spec}'")
        config = GatewayConfig.from_json(saved["gateway"])
        events: list[DeployEvent] = []
        deadline = self.clock.monotonic() + self.ready_timeout
        while True:
            result = self.step(spec, config, saved.get("servingId"), kind="deploy.rolled_back", reason=Reason.REQUESTED)
            events.extend(result.events)
            if result.outcome != "rolling_out" or self.clock.monotonic() > deadline:
                return replace(result, events=tuple(events))
            self.clock.sleep(result.after or POLL)


class ByMethod:
    """The Deployer for a repository of mixed specs: method api to `api`, the rest to `other`.
    When a spec moves from one to the other, the one that served it stops once the new one serves."""

    def __init__(self, other: Deployer, api: ApiServing) -> None:
        self.other = other
        self.api = api
        self.name = other.name

    def _for(self, spec: str) -> Deployer:
        return self.api if self.api.owns(spec) else self.other

    def current(self, spec: str) -> Serving | None:
        return self._for(spec).current(spec)

    def promote(self, request: DeployRequest) -> DeployResult:
        mine: Deployer
        mine, theirs = (self.api, self.other) if request.finetune.spec.method.type == "api" else (self.other, self.api)
        result = mine.promote(request)
        if result.outcome == "promoted" and theirs.current(request.spec) is not None:
            stopped = theirs.stop(request.spec)
            result = replace(result, events=result.events + stopped.events)
        return result

    def stop(self, spec: str) -> DeployResult:
        results = [d.stop(spec) for d in (self.api, self.other)]
        events = tuple(e for r in results for e in r.events)
        return replace(results[1] if results[1].events else results[0], events=events)

    def rollback(self, spec: str, to: str | None = None) -> DeployResult:
        return self._for(spec).rollback(spec, to)


def _alive(pid: int) -> bool:
    """deploy.process_alive, after reaping the gateway if it is our own exited child."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return process_alive(pid)
    try:
        os.waitpid(pid, os.WNOHANG)  # our own exited child: reap it, so it is not a zombie
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stop(pid: int, clock: Clock, grace: float = 10) -> None:
    """SIGTERM the gateway's process group (it finishes running requests), SIGKILL after `grace`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = clock.monotonic() + grace
    while clock.monotonic() < deadline and _alive(pid):
        clock.sleep(0.1)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main(argv: list[str] | None = None) -> int:
    """`python -m controller.serve.api_deploy --gateway-config gateway.json --endpoint endpoint.json`:
    the gateway alone (its engine is the provider), on a port the OS chooses, named in the endpoint file."""
    import argparse

    from controller.serve.gateway import run_gateway

    parser = argparse.ArgumentParser(prog="python -m controller.serve.api_deploy")
    parser.add_argument("--gateway-config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args(argv)
    return run_gateway(args.gateway_config, args.host, args.port, args.endpoint)


if __name__ == "__main__":
    sys.exit(main())
