"""The gateway: ftops' OpenAI-compatible front of a served spec (Starlette on uvicorn).

    POST /v1/chat/completions   stream or not; retrieval, the prompt, citations, then an engine
    GET  /v1/models             the spec (and the runs it routes to)
    GET  /healthz /readyz       alive / ready (names the run ids it routes to)
    GET  /metrics               Prometheus: requests, latency, time to first token, tokens/s,
                                queue depth, per run (adapter); what rollout analysis reads

What it owns, and the engine does not: request validation (controller.serve.validation, with
controller.chat's rules), retrieval over the spec's corpus and the prompt built from it
(controller.serve.prompt, the same builder the evaluator uses), citations, API keys (a Secret's
keys in an environment variable), the queue and rate limits (429 beyond them), and the routes:
which engine model (a run's adapter) answers, with weights for a canary. It knows engines only as
OpenAI-compatible servers (controller.serve.engine_client), so vLLM and the embedded engine are
interchangeable behind it.

Per-replica routing: every engine replica is asked for its `/v1/models` every few seconds, and a
request goes only to a replica that reports its adapter loaded (vLLM's runtime loading reaches
one replica, and a restarted replica comes back empty until the adapter sidecar reloads it).
A replica that answers 404 for the model is marked as lacking it, one that cannot be reached
(killed or restarting since the last poll) as down, and the next one is tried.

The configuration (`gateway.json`) is re-read when it changes, so a deployer switches routes
(promotion, canary weights, rollback) by rewriting one file, without restarting anything.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from controller.errors import PermanentError
from controller.serve.asgi import exception_handlers, log, read_body, sse
from controller.serve.engine_client import EngineClient, EngineError
from controller.serve.prompt import citations, sources, with_context
from controller.serve.validation import ChatRequest, RequestError, parse_chat_request

if TYPE_CHECKING:
    from controller.serve.corpus import Chunk
    from controller.serve.index import CorpusIndex

    Hits = list[tuple[Chunk, float]]

API_KEYS_ENV = "FTOPS_GATEWAY_API_KEYS"
TEMPLATE_MARGIN = 32
"""Tokens per message the chat template may add (role markers, separators)."""


@dataclass(frozen=True)
class Route:
    """Requests for the spec go to engine model `model` (a run's adapter) with this weight."""

    run_id: str
    model: str
    weight: int = 100


@dataclass(frozen=True)
class GatewayConfig:
    spec_name: str
    routes: tuple[Route, ...]
    engines: tuple[str, ...]
    """Engine replica URLs (their roots)."""
    corpus_dir: str | None = None
    retriever: str = "bm25"
    top_k: int = 4
    max_tokens: int = 256
    temperature: float = 0.0
    """Used when a request gives none: the evaluated serving configuration decodes greedily."""
    index_cache: str | None = None
    max_concurrency: int = 16
    """Requests handed to the engines at once (the engine batches them)."""
    max_queue: int = 64
    """Requests waiting for one of those slots; more get a 429."""
    rate_limit: float = 0.0
    """Requests per second per API key (per client address without keys); 0: no limit."""
    burst: int = 20
    api_keys_env: str = API_KEYS_ENV
    replica_poll_seconds: float = 2.0
    engine_api_key_env: str = ""
    """The variable holding the API key the engines want (a provider's chat endpoint serving a
    managed fine-tune); empty: engines take no key (ours, vLLM in the cluster)."""

    def to_json(self) -> dict:
        data = asdict(self)
        return {"specName": self.spec_name, "routes": [{"runId": r.run_id, "model": r.model, "weight": r.weight}
                                                       for r in self.routes],
                "engines": list(self.engines), "corpus": self.corpus_dir, "retriever": self.retriever, "topK": self.top_k,
                "maxTokens": self.max_tokens, "temperature": self.temperature, "indexCache": self.index_cache,
                "maxConcurrency": self.max_concurrency, "maxQueue": self.max_queue, "rateLimit": self.rate_limit,
                "burst": data["burst"], "apiKeysEnv": self.api_keys_env, "replicaPollSeconds": self.replica_poll_seconds,
                "engineApiKeyEnv": self.engine_api_key_env}

    @classmethod
    def from_json(cls, data: dict) -> "GatewayConfig":
        try:
            routes = tuple(Route(str(r["runId"]), str(r.get("model") or r["runId"]), int(r.get("weight", 100)))
                           for r in data["routes"])
            return cls(spec_name=str(data["specName"]), routes=routes, engines=tuple(str(u) for u in data["engines"]),
                       corpus_dir=data.get("corpus"), retriever=str(data.get("retriever", "bm25")),
                       top_k=int(data.get("topK", 4)), max_tokens=int(data.get("maxTokens", 256)),
                       temperature=float(data.get("temperature", 0.0)), index_cache=data.get("indexCache"),
                       max_concurrency=int(data.get("maxConcurrency", 16)), max_queue=int(data.get("maxQueue", 64)),
                       rate_limit=float(data.get("rateLimit", 0.0)), burst=int(data.get("burst", 20)),
                       api_keys_env=str(data.get("apiKeysEnv", API_KEYS_ENV)),
                       replica_poll_seconds=float(data.get("replicaPollSeconds", 2.0)),
                       engine_api_key_env=str(data.get("engineApiKeyEnv", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"gateway config: missing or invalid field ({type(exc).__name__}: {exc})") from None

    def digest(self) -> str:
        """Names this exact configuration; /readyz reports the one in force, so a deployer knows
        when a change it wrote has been taken."""
        import hashlib

        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def with_routes(self, *routes: Route) -> "GatewayConfig":
        return replace(self, routes=tuple(routes))

    def primary(self) -> Route | None:
        """The route with the largest weight (the stable run during a canary)."""
        live = [r for r in self.routes if r.weight > 0]
        return max(live, key=lambda r: r.weight) if live else None


def read_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        return GatewayConfig.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise PermanentError(f"{path}: gateway config not found") from None
    except json.JSONDecodeError as exc:
        raise PermanentError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None


def write_config(config: GatewayConfig, path: str | Path) -> Path:
    """Atomically (a gateway polling the file never reads half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def index_cache_dir(cache: str | None, corpus_dir: str) -> str:
    """Where corpus indexes are kept: the configured folder, else `.ftops-index/` beside the corpus
    when that is writable, else the temp dir (a serving pod's root filesystem is read-only; /tmp
    is its emptyDir)."""
    if cache:
        return cache
    corpus = Path(corpus_dir).resolve()
    if os.access(corpus.parent, os.W_OK):
        return str(corpus.parent / ".ftops-index" / corpus.name)
    import tempfile

    return str(Path(tempfile.gettempdir()) / "ftops-index" / corpus.name)


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        latency = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.requests = Counter("ftops_gateway_requests", "Chat requests by run and status", ["run_id", "code"], registry=r)
        self.latency = Histogram("ftops_gateway_request_seconds", "Chat request latency", ["run_id"], buckets=latency,
                                 registry=r)
        self.ttft = Histogram("ftops_gateway_time_to_first_token_seconds", "Time to the first token", ["run_id"],
                              buckets=latency, registry=r)
        self.tps = Histogram("ftops_gateway_tokens_per_second", "Generated tokens per second per request", ["run_id"],
                             buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500), registry=r)
        self.completion_tokens = Counter("ftops_gateway_completion_tokens", "Generated tokens", ["run_id"], registry=r)
        self.prompt_tokens = Counter("ftops_gateway_prompt_tokens", "Prompt tokens", ["run_id"], registry=r)
        self.retrieval = Histogram("ftops_gateway_retrieval_seconds", "Retrieval latency", registry=r,
                                   buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
        self.queue_depth = Gauge("ftops_gateway_queue_depth", "Requests waiting for an engine slot", registry=r)
        self.in_flight = Gauge("ftops_gateway_in_flight", "Requests at the engines", registry=r)
        self.weight = Gauge("ftops_gateway_route_weight", "Route weights", ["run_id"], registry=r)
        self.replicas = Gauge("ftops_gateway_replicas_with_adapter", "Engine replicas that report the run's adapter",
                              ["run_id"], registry=r)
        self.ready = Gauge("ftops_gateway_ready", "1 when every route has a replica and the index is loaded", registry=r)
        self.info = Gauge("ftops_gateway_info", "What is served", ["spec", "corpus_version", "retriever"], registry=r)


class _Bucket:
    """Token bucket: `rate` per second, at most `burst` at once."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _Replica:
    client: EngineClient
    models: set[str] = field(default_factory=set)
    max_model_len: int | None = None
    in_flight: int = 0
    up: bool = False


class Gateway:
    """Routes, retrieval and limits for one spec; `app` is its Starlette application."""

    def __init__(self, config: GatewayConfig, config_path: str | Path | None = None) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path else None
        self._mtime = self._stat()
        self.metrics = _Metrics()
        self.index: CorpusIndex | None = None
        self.index_error: str | None = None
        self.replicas: dict[str, _Replica] = {}
        self._urls: list[str] = [u for u in config.engines if not u.startswith("dns+")]
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._waiting = 0
        self._buckets: dict[str, _Bucket] = {}
        self._rng = random.Random()
        self.created = int(time.time())
        self._keys = _api_keys(config.api_keys_env)
        self.app = self._build()

    # ------------------------------------------------------------------ state
    def _stat(self) -> float | None:
        try:
            return self.config_path.stat().st_mtime_ns if self.config_path else None
        except OSError:
            return None

    def load_index(self, config: GatewayConfig | None = None) -> None:
        """Build or load the corpus index of `config` (default: the one in force) and take it
        (blocking: run it off the event loop)."""
        cfg = config or self.config
        index = None
        if cfg.corpus_dir:
            from controller.serve.index import load_or_build

            index = load_or_build(cfg.corpus_dir, cfg.retriever, index_cache_dir(cfg.index_cache, cfg.corpus_dir))
        old = self.index
        if old is not None:
            try:
                self.metrics.info.remove(self.config.spec_name, old.version, self.config.retriever)
            except KeyError:
                pass
        self.index = index
        if index is not None:
            self.metrics.info.labels(cfg.spec_name, index.version, cfg.retriever).set(1)
        self.index_error = None

    async def apply(self, config: GatewayConfig) -> None:
        """Take a new configuration: routes and engines at once, the index when the corpus changed
        (built before anything switches, so /readyz never names a config whose index is not there)."""
        old = self.config
        if (config.corpus_dir, config.retriever, config.index_cache) != (old.corpus_dir, old.retriever, old.index_cache):
            await asyncio.to_thread(self.load_index, config)
        self.config = config
        for route in old.routes:
            self.metrics.weight.labels(route.run_id).set(0)
        for route in config.routes:
            self.metrics.weight.labels(route.run_id).set(route.weight)
        await self.refresh_replicas()

    async def _resolve(self) -> list[str]:
        """The replica URLs: `dns+http://name:port` (a headless Service) is every address the name
        resolves to now, so replicas that come and go are found without a restart."""
        import socket
        from urllib.parse import urlsplit

        urls: list[str] = []
        for url in self.config.engines:
            if not url.startswith("dns+"):
                urls.append(url)
                continue
            parts = urlsplit(url[4:])
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
            except OSError:
                continue
            hosts = sorted({str(info[4][0]) for info in infos})
            urls += [f"{parts.scheme}://{f'[{h}]' if ':' in h else h}:{parts.port}" for h in hosts]
        return urls

    async def refresh_replicas(self) -> None:
        self._urls = await self._resolve()
        for url in list(self.replicas):
            if url not in self._urls:
                await self.replicas.pop(url).client.close()
        for url in self._urls:
            replica = self.replicas.get(url)
            if replica is None:
                key = os.environ.get(self.config.engine_api_key_env) if self.config.engine_api_key_env else None
                replica = self.replicas[url] = _Replica(EngineClient(url, api_key=key or None))
            try:
                cards = await replica.client.models()
            except EngineError as exc:
                if replica.up:
                    log("gateway-replica-down", replica=url, error=str(exc)[:300])
                replica.up, replica.models = False, set()
                continue
            replica.up = True
            replica.models = {c.id for c in cards}
            lengths = [c.max_model_len for c in cards if c.max_model_len]
            replica.max_model_len = min(lengths) if lengths else None
        for route in self.config.routes:
            self.metrics.replicas.labels(route.run_id).set(len(self._eligible(route.model)))
        self.metrics.ready.set(1 if self.ready()[0] else 0)

    async def watch(self) -> None:
        """Background: re-read gateway.json when it changes; re-ask the replicas what they hold."""
        next_poll = 0.0
        while True:
            mtime = self._stat()
            if mtime is not None and mtime != self._mtime:
                self._mtime = mtime
                try:
                    await self.apply(read_config(self.config_path))  # type: ignore[arg-type]
                    log("gateway-config-reloaded", routes=[asdict(r) for r in self.config.routes])
                except Exception as exc:  # noqa: BLE001 - a bad edit keeps the last good config
                    log("gateway-config-rejected", error=f"{type(exc).__name__}: {exc}")
            if time.monotonic() >= next_poll:
                await self.refresh_replicas()
                # Until every route has a replica, ask often: readiness waits on it.
                wait = self.config.replica_poll_seconds if self.ready()[0] else 0.25
                next_poll = time.monotonic() + wait
            await asyncio.sleep(0.25)

    def ready(self) -> tuple[bool, str]:
        if self.config.corpus_dir and self.index is None:
            return False, self.index_error or "the corpus index is loading"
        live = [r for r in self.config.routes if r.weight > 0]
        if not live:
            return False, "no route has a weight"
        for route in live:
            if not self._eligible(route.model):
                return False, f"no engine replica reports the adapter of run {route.run_id} loaded"
        return True, ""

    def _eligible(self, model: str) -> list[_Replica]:
        return [r for url in self._urls if (r := self.replicas.get(url)) and r.up and model in r.models]

    # ------------------------------------------------------------------ app
    def _build(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route as Path_

        return Starlette(routes=[
            Path_("/healthz", self.healthz, methods=["GET"]),
            Path_("/readyz", self.readyz, methods=["GET"]),
            Path_("/metrics", self.metrics_page, methods=["GET"]),
            Path_("/v1/models", self.models, methods=["GET"]),
            Path_("/v1/chat/completions", self.chat, methods=["POST"]),
        ], exception_handlers=exception_handlers())

    async def healthz(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        ok, why = self.ready()
        primary = self.config.primary()
        body = {"status": "ready" if ok else "not ready", "runId": primary.run_id if primary else None,
                "runIds": [r.run_id for r in self.config.routes if r.weight > 0],
                "routes": [{"runId": r.run_id, "weight": r.weight, "replicas": len(self._eligible(r.model))}
                           for r in self.config.routes],
                "corpusVersion": self.index.version if self.index else None, "config": self.config.digest()}
        if not ok:
            body["reason"] = why
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_page(self, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        self.metrics.queue_depth.set(self._waiting)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._authorize(request)
        primary = self.config.primary()
        return JSONResponse({"object": "list", "data": [{
            "id": self.config.spec_name, "object": "model", "created": self.created, "owned_by": "ftops",
            "runId": primary.run_id if primary else None, "runIds": [r.run_id for r in self.config.routes if r.weight > 0]}]})

    # ------------------------------------------------------------------ chat
    def _authorize(self, request: Any) -> str:
        """The caller's identity for rate limiting: its API key, or its address when none are set."""
        if not self._keys:
            return request.client.host if request.client else "-"
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not any(hmac.compare_digest(key.encode(), k.encode()) for k in self._keys):
            raise RequestError(401, "Incorrect API key provided; send Authorization: Bearer <key>",
                               code="invalid_api_key")
        return key

    def _route(self, chat: ChatRequest) -> tuple[Route, bool]:
        """(route, pinned): a run id as the model pins that run; the spec's name picks by weight."""
        routes = [r for r in self.config.routes if r.weight > 0]
        if chat.model not in (None, self.config.spec_name):
            pinned = next((r for r in self.config.routes if chat.model in (r.run_id, r.model)), None)
            if pinned is None:
                raise RequestError(404, f"model '{chat.model}' is not served here; this gateway serves "
                                        f"'{self.config.spec_name}' (GET /v1/models)", "model", "model_not_found")
            return pinned, True
        if not routes:
            raise RequestError(503, "no run is routed for this spec yet", type_="server_error", code="not_ready")
        # Only routes some replica can answer: a run whose adapter no replica holds (a restarted
        # replica catching up) gives its share to the others instead of failing it.
        routes = [r for r in routes if self._eligible(r.model)] or routes
        pick = self._rng.uniform(0, sum(r.weight for r in routes))
        for route in routes:
            pick -= route.weight
            if pick <= 0:
                return route, False
        return routes[-1], False

    def _replica(self, route: Route, skip: set[str]) -> _Replica:
        candidates = [r for r in self._eligible(route.model) if r.client.base_url not in skip]
        if not candidates:
            raise EngineError(503, f"no engine replica reports the adapter of run {route.run_id} loaded")
        return min(candidates, key=lambda r: r.in_flight)

    async def _hits(self, query: str) -> "Hits":
        index = self.index
        if index is None:
            return []
        started = time.perf_counter()
        if self.config.retriever == "bm25":
            hits = index.search(query, self.config.top_k)
        else:  # dense encoding takes tens of milliseconds: not on the event loop
            hits = await asyncio.to_thread(index.search, query, self.config.top_k)
        self.metrics.retrieval.observe(time.perf_counter() - started)
        return hits

    async def _fit(self, replica: _Replica, route: Route, chat: ChatRequest, hits: "Hits") -> tuple[list[dict], "Hits"]:
        """The messages with as many retrieved chunks as fit the engine's context (best first).
        Each character is at least one byte and each token at least one byte, so a prompt whose
        UTF-8 size plus the template's margin fits is never tokenized; a larger one is measured by
        the engine's /tokenize and loses its lowest-ranked chunks until it fits."""
        limit = replica.max_model_len
        while True:
            messages = with_context(chat.messages, hits)
            if limit is None:
                return messages, hits
            estimate = sum(len(m["content"].encode()) for m in messages) + TEMPLATE_MARGIN * (len(messages) + 1)
            if estimate + chat.max_tokens <= limit:
                return messages, hits
            count, max_len = await replica.client.tokenize(route.model, messages)
            limit = max_len or limit
            if count + chat.max_tokens <= limit:
                return messages, hits
            if not hits:
                raise RequestError(400, f"the prompt is {count} tokens and max_tokens {chat.max_tokens}; together they "
                                        f"exceed the model's context of {limit}", "messages", "context_length_exceeded")
            hits = hits[:-1]

    def _payload(self, route: Route, chat: ChatRequest, messages: list[dict]) -> dict:
        payload: dict[str, Any] = {"model": route.model, "messages": messages, **chat.sampling()}
        payload.setdefault("temperature", self.config.temperature)
        if chat.stream and chat.include_usage:
            payload["stream_options"] = {"include_usage": True}
        return payload

    async def chat(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        caller = self._authorize(request)
        self._limit(caller)
        chat = parse_chat_request(await read_body(request), self.config.max_tokens)
        route, pinned = self._route(chat)
        if self._slots.locked() and self._waiting >= self.config.max_queue:
            raise RequestError(429, f"{self._waiting} requests are already waiting for the engines (the queue holds "
                                    f"{self.config.max_queue}); retry later", type_="rate_limit_error", code="overloaded")
        hits = await self._hits(chat.query)
        started = time.perf_counter()
        if chat.stream:
            return sse(self._stream(route, pinned, chat, hits, started))
        await self._acquire()
        try:
            body = await self._complete(route, pinned, chat, hits, started)
        finally:
            self._slots.release()
        return JSONResponse(body)

    async def _acquire(self) -> None:
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1

    def _limit(self, caller: str) -> None:
        if self.config.rate_limit <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(self.config.rate_limit, self.config.burst, now)
        if not bucket.take(now):
            raise RequestError(429, f"more than {self.config.rate_limit:g} requests per second (burst "
                                    f"{self.config.burst}); slow down", type_="rate_limit_error", code="rate_limit_exceeded")

    def _done(self, route: Route, code: int, started: float) -> None:
        self.metrics.requests.labels(route.run_id, str(code)).inc()
        self.metrics.latency.labels(route.run_id).observe(time.perf_counter() - started)

    async def _complete(self, route: Route, pinned: bool, chat: ChatRequest, hits: "Hits", started: float) -> dict:
        tried: set[str] = set()
        retried: set[str] = set()
        while True:
            try:
                replica = self._replica(route, tried)
            except EngineError as exc:
                # Every replica that reported the adapter answered 404: it left after the last poll
                # (a rollout unloads a canary or the old run right after rewriting the routes, before
                # this gateway has read them). Not the run failing: its share goes to the other route.
                fallback = None if pinned else self._fallback(route)
                if fallback is None:
                    self._done(route, exc.status, started)
                    raise self._engine_failure(exc) from None
                log("gateway-fallback", failed=route.run_id, to=fallback.run_id, error=str(exc)[:300])
                route, pinned, tried = fallback, True, set()
                continue
            tried.add(replica.client.base_url)
            replica.in_flight += 1
            self.metrics.in_flight.inc()
            try:
                messages, hits = await self._fit(replica, route, chat, hits)
                body = await replica.client.chat(self._payload(route, chat, messages))
            except EngineError as exc:
                if exc.status == 404:  # this replica lost the adapter: ask another one
                    replica.models.discard(route.model)
                    continue
                if exc.status == 0 and replica.client.base_url not in retried:
                    # A pooled connection that broke (the replica or a hop between closed it) fails
                    # before any answer: once more on a fresh one before the replica counts as down.
                    retried.add(replica.client.base_url)
                    tried.discard(replica.client.base_url)
                    continue
                if exc.status == 0:  # unreachable (a replica restarting since the last poll): the next one
                    log("gateway-replica-down", replica=replica.client.base_url, error=str(exc)[:300])
                    replica.up = False
                    continue
                self._done(route, exc.status or 502, started)
                if exc.client_error:
                    raise RequestError(exc.status, str(exc), (exc.body.get("error") or {}).get("param"),
                                       (exc.body.get("error") or {}).get("code")) from None
                fallback = None if pinned else self._fallback(route)
                if fallback is None:
                    raise self._engine_failure(exc) from None
                log("gateway-fallback", failed=route.run_id, to=fallback.run_id, error=str(exc)[:300])
                route, pinned, tried = fallback, True, set()
                continue
            finally:
                replica.in_flight -= 1
                self.metrics.in_flight.dec()
            break
        usage = body.get("usage") or {}
        self._done(route, 200, started)
        self._tokens(route, usage, time.perf_counter() - started)
        answer = next((c.get("message") or {} for c in body.get("choices") or []), {}).get("content") or ""
        # What the model cited (its answer's "source"), resolved against the sources it was shown.
        body.update(model=self.config.spec_name, system_fingerprint=route.run_id, citations=citations(hits, answer),
                    sources=sources(hits))
        return body

    def _fallback(self, failed: Route) -> Route | None:
        """Where a request that failed on a canary goes instead: the other live route."""
        others = [r for r in self.config.routes if r.weight > 0 and r.run_id != failed.run_id and self._eligible(r.model)]
        return max(others, key=lambda r: r.weight) if others else None

    def _tokens(self, route: Route, usage: dict, seconds: float) -> None:
        completion = int(usage.get("completion_tokens") or 0)
        self.metrics.completion_tokens.labels(route.run_id).inc(completion)
        self.metrics.prompt_tokens.labels(route.run_id).inc(int(usage.get("prompt_tokens") or 0))
        if completion and seconds > 0:
            self.metrics.tps.labels(route.run_id).observe(completion / seconds)

    @staticmethod
    def _engine_failure(exc: EngineError) -> RequestError:
        status = 503 if exc.status == 503 else 502
        return RequestError(status, f"the model engine failed: {exc}", type_="server_error", code="engine_error")

    async def _stream(self, route: Route, pinned: bool, chat: ChatRequest, hits: "Hits",
                      started: float) -> AsyncIterator[dict]:
        """Engine chunks with the spec's name, the run id and, on the first one, the sources shown
        (as `sources`, and as `citations` until the answer is known); the chunk that finishes the
        answer carries the citations of what the answer cited.

        Until the first event is sent, a failure is handled as `_complete` handles it: a replica
        that answers 404 for the adapter (it left since the last poll) hands the request to the
        next replica, then to the other route (unless the request pinned its run), and so does an
        engine failure. After the first event the answer is the client's already: errors travel
        as an error event (the status line is sent)."""
        first_token = None
        code = 200
        sent = False
        tried: set[str] = set()
        await self._acquire()
        try:
            while True:
                try:
                    replica = self._replica(route, tried)
                except EngineError as exc:
                    fallback = None if pinned else self._fallback(route)
                    if fallback is None:
                        raise
                    log("gateway-fallback", failed=route.run_id, to=fallback.run_id, error=str(exc)[:300], stream=True)
                    route, pinned, tried = fallback, True, set()
                    continue
                tried.add(replica.client.base_url)
                replica.in_flight += 1
                self.metrics.in_flight.inc()
                try:
                    messages, shown = await self._fit(replica, route, chat, hits)
                    cites: list[dict] | None = citations(shown)
                    answer: list[str] = []
                    async for event in replica.client.stream(self._payload(route, chat, messages)):
                        event.update(model=self.config.spec_name, system_fingerprint=route.run_id)
                        if cites is not None:
                            event["citations"], event["sources"], cites = cites, sources(shown), None
                        for choice in event.get("choices") or []:
                            answer.append((choice.get("delta") or {}).get("content") or "")
                            if choice.get("finish_reason"):
                                event["citations"] = citations(shown, "".join(answer))
                            if (choice.get("delta") or {}).get("content"):
                                if first_token is None:
                                    first_token = time.perf_counter()
                                    self.metrics.ttft.labels(route.run_id).observe(first_token - started)
                        if event.get("usage"):
                            self._tokens(route, event["usage"], time.perf_counter() - started)
                        sent = True
                        yield event
                    return
                except EngineError as exc:
                    if sent or exc.client_error and exc.status != 404:
                        raise
                    if exc.status == 404:  # this replica lost the adapter: ask another one
                        replica.models.discard(route.model)
                        continue
                    if exc.status == 0:  # unreachable (a replica restarting since the last poll): the next one
                        replica.up = False
                        continue
                    fallback = None if pinned else self._fallback(route)
                    if fallback is None:
                        raise
                    self._done(route, exc.status or 502, started)  # the failed run's error, for the analysis
                    log("gateway-fallback", failed=route.run_id, to=fallback.run_id, error=str(exc)[:300], stream=True)
                    route, pinned, tried = fallback, True, set()
                finally:
                    replica.in_flight -= 1
                    self.metrics.in_flight.dec()
        except RequestError as exc:
            code = exc.status
            yield exc.body()
        except EngineError as exc:
            code = exc.status or 502
            yield (exc.body if exc.client_error else self._engine_failure(exc).body())
        except asyncio.CancelledError:
            code = 499  # the client left
            raise
        finally:
            self._slots.release()
            self._done(route, code, started)


def _api_keys(env: str) -> list[str]:
    raw = os.environ.get(env, "")
    return [k.strip() for k in raw.replace(",", "\n").splitlines() if k.strip()]


def run_gateway(config_path: str, host: str, port: int, endpoint_file: str | None = None) -> int:
    """`ftops serve gateway --config gateway.json`: listen, load the index, serve until SIGTERM."""
    from controller.serve.asgi import bind, serve, write_endpoint

    gateway = Gateway(read_config(config_path), config_path)
    sock = bind(host, port)
    if endpoint_file:
        write_endpoint(endpoint_file, host, {"gateway": sock.getsockname()[1]})
    return serve([(gateway.app, sock)], [lambda: start(gateway)])


async def start(gateway: Gateway) -> None:
    """Load the index (off the loop), learn the replicas, then keep watching."""
    try:
        await asyncio.to_thread(gateway.load_index)
    except Exception as exc:  # noqa: BLE001 - not ready, with the reason; a fixed corpus reloads
        gateway.index_error = f"{type(exc).__name__}: {exc}"
        log("gateway-index-failed", error=gateway.index_error)
    await gateway.apply(gateway.config)
    await gateway.watch()
