"""Request validation for the OpenAI-compatible endpoint (pure: bytes in, request or error out).

Why strict and up front: every check here runs before any retrieval or generation, so a bad
request costs microseconds, gets a 4xx JSON error in OpenAI's shape (`{"error": {message, type,
param, code}}`, which the official SDK turns into BadRequestError & co.), and can never reach the
model with something that would make it fail or run for minutes.

What a message may hold is `controller.chat`'s request rules (roles system, user, assistant;
string or text-part content; the last message the user's; no tools), the same module that
defines the training data, so the server and the data check cannot drift apart. This module adds
the limits (body size, message count, characters) and the other request parameters, including
the sampling parameters the engines honour (temperature, top_p, seed, stop).

The gateway (controller.serve.gateway) and the embedded engine (controller.serve.engine) both
parse with `parse_chat_request`: the gateway so that nothing invalid reaches retrieval or an
engine, the engine because it is an OpenAI-compatible server of its own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from controller.chat import check_messages, content_text

MAX_BODY_BYTES = 1 << 20
MAX_MESSAGES = 64
MAX_CONTENT_CHARS = 32_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_SEED = 2**63 - 1


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]
    max_tokens: int
    stream: bool
    model: str | None
    include_usage: bool = False
    temperature: float | None = None
    """None: the deployment's default (greedy, as evaluated); 0 is greedy too."""
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def sampling(self) -> dict[str, object]:
        """The sampling fields as an OpenAI request writes them (only those that were given)."""
        out: dict[str, object] = {"max_tokens": self.max_tokens}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stop:
            out["stop"] = list(self.stop)
        return out

    @property
    def query(self) -> str:
        """What retrieval searches for: the last user message."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


def parse_chat_request(body: bytes, max_tokens_limit: int, default_max_tokens: int | None = None) -> ChatRequest:
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}", code="request_too_large")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError(400, "request body must be a JSON object")
    messages = data.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise RequestError(400, f"'messages' has {len(messages)} entries; the limit is {MAX_MESSAGES}", "messages")
    problems = check_messages(messages, "request")
    if problems:
        raise RequestError(400, problems[0].message, problems[0].field)
    assert isinstance(messages, list)  # check_messages found nothing wrong, so it is a list
    clean = [{"role": m["role"], "content": content_text(m["content"])} for m in messages]
    total = sum(len(m["content"]) for m in clean)
    if total > MAX_CONTENT_CHARS:
        raise RequestError(400, f"messages hold {total} characters; the limit is {MAX_CONTENT_CHARS}", "messages",
                           "context_length_exceeded")
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = data.get(key)
    if max_tokens is None:
        max_tokens = default_max_tokens or max_tokens_limit
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, f"'{key}' must be a positive integer", key)
    if max_tokens > max_tokens_limit:
        raise RequestError(400, f"'{key}' is {max_tokens}; this deployment allows at most {max_tokens_limit} "
                                "(spec.serving.maxTokens)", key)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    n = data.get("n", 1)
    if n not in (1, None):
        raise RequestError(400, "'n' must be 1: this server returns one choice", "n")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, "'model' must be a string", "model")
    options = data.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return ChatRequest(clean, max_tokens, stream, model, include_usage, _number(data, "temperature", 0.0, 2.0),
                       _top_p(data), _seed(data), _stop(data))


def _number(data: dict, key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(400, f"'{key}' must be a number from {low:g} to {high:g}", key)
    return float(value)


def _top_p(data: dict) -> float | None:
    value = _number(data, "top_p", 0.0, 1.0)
    if value is not None and value <= 0:
        raise RequestError(400, "'top_p' must be greater than 0 (1 keeps every token)", "top_p")
    return value


def _seed(data: dict) -> int | None:
    value = data.get("seed")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_SEED <= value <= MAX_SEED:
        raise RequestError(400, "'seed' must be an integer that fits in 64 bits", "seed")
    return value


def _stop(data: dict) -> tuple[str, ...]:
    value = data.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError(400, "'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise RequestError(400, f"'stop' has {len(stops)} sequences; the limit is {MAX_STOP_SEQUENCES}", "stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise RequestError(400, f"each 'stop' sequence must be 1 to {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)
