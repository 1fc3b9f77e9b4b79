"""The gateway's client to a model engine: any OpenAI-compatible server (vLLM, or ftops' embedded
engine), spoken to only through that API and vLLM's adapter endpoints.

    models()            GET  /v1/models            -> the model cards (base + adapters)
    chat(payload)       POST /v1/chat/completions  -> the completion object
    stream(payload)     POST /v1/chat/completions (stream) -> one dict per SSE event
    tokenize(...)       POST /tokenize             -> token count and max_model_len (vLLM and ours)
    load / unload       POST /v1/load_lora_adapter, /v1/unload_lora_adapter

The evaluator's reference models (controller.evaluate.reference: the A/B comparison's larger model,
a managed fine-tune at its provider) are called through this same client, so an endpoint answers
the evaluation exactly as it would answer the gateway.

Why httpx2 rather than the openai SDK on this hop: it is the HTTP client the SDK itself is built
on (pinned with it), and the gateway forwards JSON it never needs as typed objects, so each chunk
is parsed once instead of into pydantic models and back. A failed call raises `EngineError` with
the engine's status and OpenAI error body, so the gateway can forward a client error (4xx) as it
is and count an engine failure (5xx, connection refused, timeout) against the route.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 600.0


class EngineError(Exception):
    """The engine answered `status` (0: it could not be reached) with OpenAI error `body`."""

    def __init__(self, status: int, message: str, body: dict | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        self.retry_after = retry_after
        """Seconds the engine asked to wait (its Retry-After header), when it said."""

    @property
    def client_error(self) -> bool:
        """The request was wrong (4xx other than a missing model), not the engine."""
        return 400 <= self.status < 500 and self.status != 404

    @property
    def retryable(self) -> bool:
        """Worth trying again later: unreachable, a timeout, a conflict, a rate limit, a 5xx (the
        statuses the openai SDK retries)."""
        return self.status in (0, 408, 409, 429) or self.status >= 500


def api_root(base_url: str) -> str:
    """An OpenAI SDK base URL (`https://host/v1`) as the root this client takes; ValueError when it
    does not end in /v1 (the client calls <root>/v1/chat/completions)."""
    url = base_url.rstrip("/")
    if not url.endswith("/v1"):
        raise ValueError(f"{base_url!r} must end in /v1 (an OpenAI-compatible API's base URL)")
    return url[: -len("/v1")]


@dataclass(frozen=True)
class ModelCard:
    id: str
    parent: str | None
    max_model_len: int | None


class EngineClient:
    """One engine replica at `base_url` (its root, without /v1). Connections are kept alive."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = READ_TIMEOUT,
                 max_connections: int = 256) -> None:
        import httpx2

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx2.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx2.Timeout(timeout, connect=CONNECT_TIMEOUT),
            limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, payload: dict) -> Any:
        import httpx2

        try:
            resp = await self._http.post(path, json=payload)
        except httpx2.HTTPError as exc:
            raise EngineError(0, f"engine {self.base_url} unreachable: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise _error(resp.status_code, resp.content, self.base_url, resp.headers.get("retry-after"))
        return resp

    async def models(self) -> list[ModelCard]:
        import httpx2

        try:
            resp = await self._http.get("/v1/models", timeout=CONNECT_TIMEOUT)
        except httpx2.HTTPError as exc:
            raise EngineError(0, f"engine {self.base_url} unreachable: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise _error(resp.status_code, resp.content, self.base_url)
        return [ModelCard(str(m["id"]), m.get("parent"), m.get("max_model_len")) for m in resp.json().get("data", [])]

    async def chat(self, payload: dict) -> dict:
        resp = await self._post("/v1/chat/completions", {**payload, "stream": False})
        return resp.json()

    async def stream(self, payload: dict) -> AsyncIterator[dict]:
        """The completion's SSE events as dicts, until `[DONE]`. Closing the iterator closes the
        connection, which is how the engine learns the client left."""
        import httpx2

        body = {**payload, "stream": True}
        try:
            async with self._http.stream("POST", "/v1/chat/completions", json=body) as resp:
                if resp.status_code >= 400:
                    raise _error(resp.status_code, await resp.aread(), self.base_url)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        err = event["error"] or {}
                        raise EngineError(500, str(err.get("message", "engine error")), event)
                    yield event
        except httpx2.HTTPError as exc:
            raise EngineError(0, f"engine {self.base_url} failed mid-stream: {type(exc).__name__}: {exc}") from None

    async def tokenize(self, model: str, messages: list[dict]) -> tuple[int, int | None]:
        resp = await self._post("/tokenize", {"model": model, "messages": messages, "add_generation_prompt": True})
        data = resp.json()
        return int(data["count"]), data.get("max_model_len")

    async def load_adapter(self, name: str, path: str) -> None:
        await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def unload_adapter(self, name: str) -> None:
        await self._post("/v1/unload_lora_adapter", {"lora_name": name})


def _error(status: int, content: bytes, where: str, retry_after: str | None = None) -> EngineError:
    try:
        body = json.loads(content)
        message = str((body.get("error") or {}).get("message") or body.get("message") or body)
        if "error" not in body:
            body = None
    except (ValueError, AttributeError):
        body, message = None, content[:500].decode(errors="replace")
    try:
        wait = max(0.0, float(retry_after)) if retry_after is not None else None
    except ValueError:  # an HTTP date: not worth parsing; the caller's own backoff applies
        wait = None
    return EngineError(status, message or f"engine {where} answered {status}", body, wait)
