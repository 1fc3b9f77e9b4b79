"""The embedded engine's HTTP API: the subset of vLLM's OpenAI-compatible server the gateway and
the adapter sidecar use, so either engine can stand behind them.

    GET  /health                       200 once the model is loaded (503 while loading)
    GET  /v1/models                    the base model and every loaded adapter (`parent` = base)
    POST /v1/chat/completions          stream or not; temperature, top_p, max_tokens, stop, seed
    POST /tokenize                     {"model", "messages"} -> {"count", "max_model_len", "tokens"}
    POST /v1/load_lora_adapter         {"lora_name", "lora_path"}: load at runtime
    POST /v1/unload_lora_adapter       {"lora_name"}
    GET  /metrics                      Prometheus: running / waiting sequences, tokens, steps

Like vLLM it answers a prompt that does not fit `max_model_len` with max_tokens, a model it does
not serve (404), and bad fields with OpenAI-shaped 4xx errors. Unlike vLLM it refuses an adapter
whose run has no manifest or whose files differ from it (controller.serve.model.open_run).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from controller.serve.asgi import exception_handlers, log, read_body, sse
from controller.serve.engine import AdapterError, Delta, EngineFull, Event, Failed, Finished, Sampling
from controller.serve.validation import ChatRequest, RequestError, parse_chat_request

if TYPE_CHECKING:
    from controller.serve.engine import Engine


@dataclass(frozen=True)
class EngineConfig:
    """How to start an embedded engine (`ftops serve engine`, or beside the gateway)."""

    model_dir: str | None = None
    """The base model's directory (None: the one `template_run`'s manifest records)."""
    template_run: str | None = None
    """A run whose manifest's chat template and special tokens the engine uses (the first
    adapter's run, or a full model's run, which is then the model served)."""
    name: str = "base"
    """The base model's name in /v1/models (vLLM's --served-model-name)."""
    adapters: dict[str, str] = field(default_factory=dict)
    """Adapters loaded at start: name -> run directory."""
    base_revision: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    max_batch: int = 16
    max_waiting: int = 256
    threads: int | None = None
    """torch intra-op threads on a CPU (None: torch's default)."""


def load_engine(config: EngineConfig) -> "Engine":
    """Load the base (or a full run's model) and the start-up adapters; start the loop."""
    from controller.errors import PermanentError
    from controller.serve.engine import Engine
    from controller.serve.model import load_engine_base, open_run

    run = open_run(config.template_run) if config.template_run else None
    if run is not None and not run.is_adapter:
        model_dir = run.model_dir  # a full fine-tune is the model itself
    elif config.model_dir:
        model_dir = run.base_dir(config.model_dir, config.base_revision) if run else _local_dir(config.model_dir)
    elif run is not None:
        model_dir = run.base_dir()
    else:
        raise PermanentError("engine: give the base model directory or a run whose manifest names it")
    engine = Engine(load_engine_base(model_dir, run, config.device, config.dtype), config.name, config.max_batch,
                    config.max_waiting, config.threads).start()
    for name, path in config.adapters.items():
        engine.load_adapter(name, open_run(path))
    return engine


def _local_dir(path: str) -> Any:
    from controller.train.loading import resolve_model_dir

    return resolve_model_dir(path, None)


class _Collector:
    """A sequence's events, handed from the engine's thread to the request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: "asyncio.Queue[Event]" = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class EngineApp:
    """The Starlette app around an engine that may still be loading."""

    def __init__(self, name: str = "base") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.engine: Engine | None = None
        self.error: str | None = None
        self.name = name
        self.created = int(time.time())
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ftops_engine_requests", "Chat requests", ["model", "code"], registry=r)
        self.tokens = Counter("ftops_engine_generation_tokens", "Generated tokens", ["model"], registry=r)
        running = Gauge("ftops_engine_requests_running", "Sequences in the batch", registry=r)
        running.set_function(lambda: self.engine.running if self.engine else 0)
        waiting = Gauge("ftops_engine_requests_waiting", "Sequences waiting for the batch", registry=r)
        waiting.set_function(lambda: self.engine.waiting if self.engine else 0)
        steps = Gauge("ftops_engine_decode_steps", "Decode steps run (a batch of rows each)", registry=r)
        steps.set_function(lambda: self.engine.stats["steps"] if self.engine else 0)
        rows = Gauge("ftops_engine_decode_rows", "Rows decoded over all steps (rows / steps = mean batch)", registry=r)
        rows.set_function(lambda: self.engine.stats["rows"] if self.engine else 0)
        self.app = self._build()

    def load_in_background(self, config: EngineConfig) -> threading.Thread:
        def work() -> None:
            try:
                self.engine = load_engine(config)
                log("engine-ready", model=self.name, adapters=sorted(self.engine.adapters))
            except BaseException as exc:  # noqa: BLE001 - reported by /health and the log
                self.error = f"{type(exc).__name__}: {exc}"
                log("engine-load-failed", error=self.error)

        thread = threading.Thread(target=work, name="engine-load", daemon=True)
        thread.start()
        return thread

    def _ready(self) -> "Engine":
        if self.engine is None:
            raise RequestError(503, "the engine is still loading" if self.error is None else f"the engine failed: {self.error}",
                               type_="server_error", code="not_ready")
        return self.engine

    def _build(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(routes=[
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/v1/load_lora_adapter", self.load_adapter, methods=["POST"]),
            Route("/v1/unload_lora_adapter", self.unload_adapter, methods=["POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ], exception_handlers=exception_handlers())

    # ------------------------------------------------------------------ routes
    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if self.engine is None:
            return JSONResponse({"status": "loading" if self.error is None else "failed", "error": self.error},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        engine = self._ready()
        card = {"object": "model", "created": self.created, "owned_by": "ftops", "max_model_len": engine.max_model_len}
        data = [{**card, "id": engine.name, "root": str(engine.base.model_dir), "parent": None}]
        data += [{**card, "id": a.name, "root": a.path, "parent": engine.name, "runId": a.run_id}
                 for a in engine.adapters.values() if a.name not in engine._unloading]
        return JSONResponse({"object": "list", "data": data})

    async def metrics(self, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def tokenize(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        engine = self._ready()
        data = _json_object(await read_body(request))
        chat = parse_chat_request(json.dumps({"messages": data.get("messages"), "max_tokens": 1}).encode(),
                                  engine.max_model_len)
        try:
            engine.resolve(data.get("model"))
        except AdapterError as exc:
            raise RequestError(exc.status, str(exc), "model", "model_not_found") from None
        ids = engine.prompt_ids(chat.messages)
        return JSONResponse({"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids})

    async def load_adapter(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        from controller.errors import PermanentError
        from controller.serve.model import open_run

        engine = self._ready()
        data = _json_object(await read_body(request))
        name, path = data.get("lora_name"), data.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise RequestError(400, "give 'lora_name' and 'lora_path' as strings", "lora_name")
        try:
            run = await asyncio.to_thread(open_run, path)  # hashing the files: off the event loop
            await asyncio.to_thread(engine.load_adapter, name, run)
        except PermanentError as exc:
            raise RequestError(400, str(exc), "lora_path") from None
        except AdapterError as exc:
            raise RequestError(exc.status, str(exc), "lora_name") from None
        log("adapter-loaded", name=name, runId=run.run_id)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_adapter(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        engine = self._ready()
        data = _json_object(await read_body(request))
        name = data.get("lora_name")
        if not isinstance(name, str):
            raise RequestError(400, "give 'lora_name' as a string", "lora_name")
        try:
            await asyncio.to_thread(engine.unload_adapter, name)
        except AdapterError as exc:
            raise RequestError(exc.status, str(exc), "lora_name") from None
        log("adapter-unloaded", name=name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def chat(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        engine = self._ready()
        chat = parse_chat_request(await read_body(request), engine.max_model_len)
        model = chat.model or engine.name
        try:
            engine.resolve(model)
        except AdapterError as exc:
            self.requests.labels(model, "404").inc()
            raise RequestError(404, str(exc), "model", "model_not_found") from None
        prompt = engine.prompt_ids(chat.messages)
        if len(prompt) + chat.max_tokens > engine.max_model_len:
            raise RequestError(400, f"This model's maximum context length is {engine.max_model_len} tokens. However, you "
                                    f"requested {len(prompt) + chat.max_tokens} tokens ({len(prompt)} in the messages, "
                                    f"{chat.max_tokens} in the completion).", "messages", "context_length_exceeded")
        collector = _Collector(asyncio.get_running_loop())
        try:
            handle = engine.submit(prompt, model, _sampling(chat), collector, chat.stream)
        except EngineFull as exc:
            raise RequestError(429, str(exc), type_="rate_limit_error", code="overloaded") from None
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        if chat.stream:
            return sse(self._chunks(collector, base, chat, model), on_close=handle.cancel)
        try:
            final = await self._finished(collector)
        finally:
            handle.cancel()  # a no-op when it finished; stops it when this request was cancelled
        self.requests.labels(model, "200").inc()
        self.tokens.labels(model).inc(final.completion_tokens)
        return JSONResponse({**base, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": final.text}, "finish_reason": final.reason,
             "logprobs": None}], "usage": _usage(final)})

    async def _finished(self, collector: _Collector) -> Finished:
        while True:
            event = await collector.queue.get()
            if isinstance(event, Finished):
                return event
            if isinstance(event, Failed):
                raise RuntimeError(event.message)

    async def _chunks(self, collector: _Collector, base: dict, chat: ChatRequest, model: str) -> AsyncIterator[dict]:
        head = {**base, "object": "chat.completion.chunk"}
        yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        while True:
            event = await collector.queue.get()
            if isinstance(event, Delta):
                yield {**head, "choices": [{"index": 0, "delta": {"content": event.text}, "finish_reason": None}]}
            elif isinstance(event, Finished):
                self.requests.labels(model, "200").inc()
                self.tokens.labels(model).inc(event.completion_tokens)
                yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": event.reason}]}
                if chat.include_usage:
                    yield {**head, "choices": [], "usage": _usage(event)}
                return
            else:
                self.requests.labels(model, "500").inc()
                yield RequestError(500, event.message, type_="server_error").body()
                return


def _usage(final: Finished) -> dict[str, int]:
    return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens,
            "total_tokens": final.prompt_tokens + final.completion_tokens}


def _sampling(chat: ChatRequest) -> Sampling:
    return Sampling(max_tokens=chat.max_tokens, temperature=chat.temperature if chat.temperature is not None else 1.0,
                    top_p=chat.top_p if chat.top_p is not None else 1.0, seed=chat.seed, stop=chat.stop)


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError(400, "request body must be a JSON object")
    return data


def run_engine(config: EngineConfig, host: str, port: int, endpoint_file: str | None = None) -> int:
    """`ftops serve engine`: listen at once, load in the background, serve until SIGTERM. The base
    loads unquantized, so bitsandbytes stays out of this process (controller.importguard)."""
    from controller.importguard import without_bitsandbytes
    from controller.serve.asgi import bind, serve, write_endpoint

    without_bitsandbytes()

    app = EngineApp(config.name)
    sock = bind(host, port)
    if endpoint_file:
        write_endpoint(endpoint_file, host, {"engine": sock.getsockname()[1]})
    app.load_in_background(config)
    return serve([(app.app, sock)])
