"""The gateway in front of engine replicas: limits (queue, rate, API keys), hostile input, routing
only to replicas that report an adapter loaded, the adapter sidecar, and a canary whose adapter
fails: its requests fall back to the stable run and the analysis on the gateway's own metrics
says roll back. Extra gateways run against the session node's engine plus one more engine
replica; the official openai SDK is the client where it can send the request, raw HTTP where not."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import http.client
import json
import shutil
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from serve_helpers import ANSWER_DOC, QUESTION, RUN_A, RUN_B, SPEC_NAME, wait_ready


class Running:
    """A Gateway on its own port (an event loop in a thread). `watch=False`: it asks the replicas
    what they hold once, at start, and never again (what it believes between two polls)."""

    def __init__(self, config, watch: bool = True) -> None:
        from controller.serve.asgi import InThread, bind
        from controller.serve.gateway import Gateway, start

        self.gateway = Gateway(config)
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._thread = InThread([(self.gateway.app, sock)], [lambda: start(self.gateway) if watch else self._once()])

    async def _once(self) -> None:
        await asyncio.to_thread(self.gateway.load_index)
        await self.gateway.apply(self.gateway.config)

    def client(self, key: str = "unused") -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self) -> None:
        self._thread.stop()


def _chat(client: OpenAI, **kw):
    return client.chat.completions.create(model=kw.pop("model", SPEC_NAME), max_tokens=kw.pop("max_tokens", 4),
                                          messages=kw.pop("messages", [{"role": "user", "content": QUESTION}]), **kw)


@pytest.fixture
def gateway_with(server):
    started: list[Running] = []

    def make(wait: bool = True, watch: bool = True, **changes) -> Running:
        gw = Running(replace(server.gateway.config, **changes), watch)
        started.append(gw)
        if wait:
            wait_ready(gw.url)
        return gw

    yield make
    for gw in started:
        gw.stop()


def _raw(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_hostile_bodies_get_openai_errors_and_the_requests_around_them_are_answered(server, client):
    url = server.url
    cases = [
        (json.dumps({"model": SPEC_NAME, "messages": "hi"}).encode(), 400, "messages"),
        (json.dumps({"model": SPEC_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}).encode(),
         400, "max_tokens"),
        (json.dumps({"model": SPEC_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}).encode(),
         400, "max_tokens"),
        (json.dumps({"model": SPEC_NAME, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(),
         400, "temperature"),
        (json.dumps({"model": SPEC_NAME, "messages": [{"role": "tool", "content": "hi"}]}).encode(), 400, "messages[0].role"),
        (json.dumps({"model": SPEC_NAME, "messages": [{"role": "user", "content": "x" * (3 << 20)}]}).encode(), 413, None),
    ]
    with cf.ThreadPoolExecutor(4) as pool:
        good = [pool.submit(lambda: _chat(client).choices[0].finish_reason) for _ in range(3)]
        for body, code, param in cases:
            status, data = _raw(url, body)
            assert status == code, (body[:60], status, data)
            assert set(data["error"]) == {"message", "type", "param", "code"}
            if param:
                assert data["error"]["param"] == param
        assert all(f.result() in ("stop", "length") for f in good)
    with pytest.raises(openai.APIStatusError) as info:  # the SDK sends a multi-megabyte message
        _chat(client, messages=[{"role": "user", "content": "y" * (2 << 20)}])
    assert info.value.status_code == 413


def test_more_requests_than_the_queue_holds_get_429_and_the_rest_are_answered(gateway_with):
    gw = gateway_with(max_concurrency=1, max_queue=1)
    client = gw.client()

    def one(_i: int) -> str:
        try:
            return _chat(client, max_tokens=24, stream=False).choices[0].finish_reason
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "overloaded"
            return "429"

    with cf.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(8)))
    assert "429" in outcomes and any(o in ("stop", "length") for o in outcomes), outcomes
    assert _chat(client).choices[0].finish_reason in ("stop", "length")


def test_api_keys_and_the_rate_limit(gateway_with, monkeypatch):
    monkeypatch.setenv("FTOPS_TEST_GATEWAY_KEYS", "key-one, key-two")
    gw = gateway_with(api_keys_env="FTOPS_TEST_GATEWAY_KEYS", rate_limit=0.5, burst=2)
    with pytest.raises(openai.AuthenticationError):
        _chat(gw.client("wrong"))
    with pytest.raises(openai.AuthenticationError):
        gw.client("wrong").models.list()
    assert _chat(gw.client("key-two")).choices[0].finish_reason in ("stop", "length")
    assert _chat(gw.client("key-two")).choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.RateLimitError) as info:
        _chat(gw.client("key-two"))
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert _chat(gw.client("key-one")).choices[0].finish_reason in ("stop", "length")  # its own bucket


def test_a_stream_whose_client_leaves_frees_its_slot(gateway_with):
    gw = gateway_with(max_concurrency=1, max_queue=0)
    host, port = gw.url.removeprefix("http://").split(":")
    for _ in range(3):  # each would hold the only slot forever if a disconnect leaked it
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"}, body=json.dumps(
            {"model": SPEC_NAME, "stream": True, "max_tokens": 24, "messages": [{"role": "user", "content": QUESTION}]}))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.fp.readline()
        conn.sock.close()
        conn.close()
        for _ in range(200):
            if gw.gateway._slots._value == 1:
                break
            threading.Event().wait(0.05)
        assert gw.gateway._slots._value == 1, "a stream whose client left still holds the only slot"
    # the freed slot serves: with no queue, a leaked slot would answer this with a 429
    done = _chat(gw.client())
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.completion_tokens > 0
    assert done.model_extra["sources"][0]["path"] == ANSWER_DOC  # the whole gateway path: retrieval, prompt, engine
    assert gw.gateway._slots._value == 1


@pytest.fixture(scope="module")
def replica2(env):
    """A second engine replica over the same base, holding run B only (and later, a broken one)."""
    from controller.serve.asgi import InThread, bind
    from controller.serve.engine_server import EngineApp, EngineConfig

    app = EngineApp()
    app.load_in_background(EngineConfig(template_run=str(env.run_dir(RUN_B)), model_dir=str(env.base),
                                        adapters={RUN_B: str(env.run_dir(RUN_B))}, threads=1)).join()
    assert app.error is None, app.error
    sock = bind("127.0.0.1", 0)
    thread = InThread([(app.app, sock)])
    app.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield app
    thread.stop()
    app.engine.stop()


def _engine_requests(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics") as resp:
        text = resp.read().decode()
    return {s.labels["model"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "ftops_engine_requests_total" and s.labels.get("code") == "200"}


def test_requests_go_only_to_replicas_that_report_their_adapter(server, replica2, gateway_with):
    from controller.serve.gateway import Route

    gw = gateway_with(engines=(server.engine_url, replica2.url), routes=(Route(RUN_A, RUN_A, 50), Route(RUN_B, RUN_B, 50)),
                      replica_poll_seconds=0.2)
    # The gateway learns what each replica holds from its polls: until replica 2's first report,
    # run B has nowhere to go and its share goes to run A (seen on a loaded machine: all 12 to A).
    for _ in range(100):
        if gw.gateway._eligible(RUN_A) and gw.gateway._eligible(RUN_B):
            break
        threading.Event().wait(0.1)
    before1, before2 = _engine_requests(server.engine_url), _engine_requests(replica2.url)
    client = gw.client()
    fingerprints = [_chat(client).system_fingerprint for _ in range(12)]
    assert set(fingerprints) == {RUN_A, RUN_B}, fingerprints  # weighted 50/50: both serve
    after1, after2 = _engine_requests(server.engine_url), _engine_requests(replica2.url)
    assert after1.get(RUN_A, 0) - before1.get(RUN_A, 0) == fingerprints.count(RUN_A)
    assert after2.get(RUN_B, 0) - before2.get(RUN_B, 0) == fingerprints.count(RUN_B)
    assert after1.get(RUN_B, 0) == before1.get(RUN_B, 0) and after2.get(RUN_A, 0) == before2.get(RUN_A, 0)
    # the replica loses run B (a restart comes back empty): pinned requests for B now get a 503,
    # and the spec's own traffic goes to the run that still has a replica
    asyncio.run(_unload(replica2.url, RUN_B))
    try:
        for _ in range(50):
            if not gw.gateway._eligible(RUN_B):
                break
            threading.Event().wait(0.1)
        with pytest.raises(openai.InternalServerError) as info:
            _chat(client, model=RUN_B)
        assert info.value.status_code == 503
        assert {_chat(client).system_fingerprint for _ in range(6)} == {RUN_A}
    finally:
        asyncio.run(_load(replica2.url, RUN_B, str(Path(server.config.run_dir).parent / RUN_B)))


def test_a_route_whose_adapter_left_since_the_last_poll_gives_its_requests_to_the_other(env, server, replica2,
                                                                                       gateway_with):
    """A rollout that rolls a canary back (or promotes it) rewrites the routes and unloads the
    adapter at once, before the gateway has read the new routes; until its next poll the gateway
    still believes the replica holds it. The replica's 404 sends the request to the other route:
    the user gets an answer, not a 503. A request pinned to that run has nowhere else to go."""
    from controller.serve.gateway import Route

    asyncio.run(_load(replica2.url, "leaving", str(env.run_dir(RUN_B))))
    try:
        gw = gateway_with(watch=False, engines=(server.engine_url, replica2.url),
                          routes=(Route(RUN_A, RUN_A, 1), Route("leaving", "leaving", 99)))
    finally:
        asyncio.run(_unload(replica2.url, "leaving"))
    assert [r.client.base_url for r in gw.gateway._eligible("leaving")] == [replica2.url]  # what it last saw
    client = gw.client()
    answers = []
    while gw.gateway._eligible("leaving") and len(answers) < 20:  # 99 to 1: the first one goes there
        answers.append(_chat(client))
    assert not gw.gateway._eligible("leaving"), "no request went to the replica that lost the adapter"
    assert {a.system_fingerprint for a in answers} == {RUN_A}
    assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)
    with pytest.raises(openai.InternalServerError) as info:
        _chat(client, model="leaving")
    assert info.value.status_code == 503 and "leaving" in info.value.message



def test_a_stream_whose_route_lost_its_adapter_since_the_last_poll_falls_back_before_its_first_byte(
        env, server, replica2, gateway_with):
    """The same stale route as above, streamed: the replica's 404 comes before any event was sent,
    so the gateway gives the stream to the other route (the client sees one clean answer from
    run A, never an error event). Pinned to the run that left, a stream has nowhere to go: its
    one event is the 503 error."""
    from controller.serve.gateway import Route

    asyncio.run(_load(replica2.url, "leaving", str(env.run_dir(RUN_B))))
    try:
        gw = gateway_with(watch=False, engines=(server.engine_url, replica2.url),
                          routes=(Route(RUN_A, RUN_A, 1), Route("leaving", "leaving", 99)))
    finally:
        asyncio.run(_unload(replica2.url, "leaving"))
    assert [r.client.base_url for r in gw.gateway._eligible("leaving")] == [replica2.url]  # what it last saw
    client = gw.client()
    streams = []
    while gw.gateway._eligible("leaving") and len(streams) < 20:  # 99 to 1: the first one goes there
        streams.append(list(_chat(client, stream=True)))
    assert not gw.gateway._eligible("leaving"), "no stream went to the replica that lost the adapter"
    for chunks in streams:
        assert {c.system_fingerprint for c in chunks} == {RUN_A}
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert chunks[0].model_extra["sources"][0]["path"] == ANSWER_DOC  # retrieval and prompt as before
    with pytest.raises(openai.APIError) as info:
        list(_chat(client, model="leaving", stream=True))
    assert "leaving" in info.value.message

async def _unload(url: str, name: str) -> None:
    from controller.serve.engine_client import EngineClient

    client = EngineClient(url)
    try:
        await client.unload_adapter(name)
    finally:
        await client.close()


async def _load(url: str, name: str, path: str) -> None:
    from controller.serve.engine_client import EngineClient

    client = EngineClient(url)
    try:
        await client.load_adapter(name, path)
    finally:
        await client.close()


def test_the_sidecar_syncs_each_replica_to_the_desired_adapters(env, replica2, tmp_path):
    from controller.artifacts import open_store
    from controller.serve.engine_client import EngineClient
    from controller.serve.sidecar import AdapterSidecar, write_desired_set

    from serve_helpers import copy_run

    store_dir = tmp_path / "store"
    copy_run(env.run_dir(RUN_A), store_dir)
    store = open_store(str(store_dir))
    desired = store.join(str(store_dir), "_engines/base/adapters.json")

    async def scenario() -> list:
        engine = EngineClient(replica2.url)
        sidecar = AdapterSidecar(store, desired, engine, tmp_path / "cache")
        seen = []
        try:
            write_desired_set(store, desired, {"a-run": store.run_uri(SPEC_NAME, RUN_A), RUN_B: str(env.run_dir(RUN_B))})
            first = await sidecar.sync_once()
            seen.append((first.loaded, first.unloaded, {c.id for c in await engine.models()}))
            await engine.unload_adapter("a-run")  # what a restarted replica looks like: the adapter is gone
            second = await sidecar.sync_once()
            seen.append((second.loaded, second.unloaded, {c.id for c in await engine.models()}))
            write_desired_set(store, desired, {RUN_B: str(env.run_dir(RUN_B))})
            third = await sidecar.sync_once()
            seen.append((third.loaded, third.unloaded, {c.id for c in await engine.models()}))
            again = await sidecar.sync_once()
            seen.append((again.loaded, again.unloaded, again.failed))
        finally:
            await engine.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == (["a-run"], [], {"base", RUN_B, "a-run"})
    assert seen[1] == (["a-run"], [], {"base", RUN_B, "a-run"})
    assert seen[2] == ([], ["a-run"], {"base", RUN_B})
    assert seen[3] == ([], [], {})


def _broken_run(env, tmp_path: Path) -> Path:
    """Run B with NaN in its LoRA weights and a manifest that matches them (it loads, then every
    answer fails: what a diverged run looks like at the engine)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    run = tmp_path / "broken"
    shutil.copytree(env.run_dir(RUN_B), run)
    weights = run / "model" / "adapter_model.safetensors"
    tensors = {k: (v * float("nan") if "lora_B" in k else v) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"]["model/adapter_model.safetensors"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_a_failing_canary_falls_back_to_stable_and_the_analysis_rolls_it_back(env, server, replica2, gateway_with, tmp_path):
    from controller.serve.gateway import Route
    from controller.serve.rollout import Policy, analyse, parse_metrics

    asyncio.run(_load(replica2.url, "broken", str(_broken_run(env, tmp_path))))
    try:
        gw = gateway_with(engines=(server.engine_url, replica2.url),
                          routes=(Route(RUN_A, RUN_A, 50), Route("broken", "broken", 50)), replica_poll_seconds=0.2)
        with urllib.request.urlopen(f"{gw.url}/metrics") as resp:
            baseline = parse_metrics(resp.read().decode())
        client = gw.client()
        answers = [_chat(client) for _ in range(16)]
        assert {a.system_fingerprint for a in answers} == {RUN_A}  # every user got the stable run's answer
        with urllib.request.urlopen(f"{gw.url}/metrics") as resp:
            now = parse_metrics(resp.read().decode())
        verdict = analyse(baseline, now, "broken", RUN_A, elapsed=5, policy=Policy(window_seconds=60))
        assert verdict.decision == "rollback", verdict
        assert verdict.canary.errors >= 3 and verdict.canary.errors == verdict.canary.requests
        assert verdict.stable.errors == 0 and verdict.stable.requests == 16
    finally:
        asyncio.run(_unload(replica2.url, "broken"))
