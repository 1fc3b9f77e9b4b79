"""Reference models for the A/B comparison: any OpenAI-compatible endpoint, or a local path.

An endpoint is called through the gateway's own engine client (controller.serve.engine_client:
the OpenAI API over httpx2), so a reference model, or a managed fine-tune at its provider
(controller.evaluate.hosted), answers the evaluation through the same code that serves users.
Requests are greedy (temperature 0) and seeded, as our own generation is; up to `concurrency`
are in flight at once (vLLM and the providers batch them), and the answers keep the order of the
prompts. A failure that retrying can fix (unreachable, a timeout, 429, 5xx) is retried
`max_retries` times, after the endpoint's Retry-After or an exponential backoff, then reported as
a TemporaryError (the reconciler retries the evaluation); one it cannot (a refused key, an unknown
model, a rejected request) is a PermanentError at once, naming the spec field.

The endpoint's API key never appears in a spec: the spec names a Secret (`apiKey: {name, key}`)
and the key reaches this process as an environment variable whose name is derived from that
reference (`secret_env_name`), the same way on a laptop and in a Job that maps the Secret with
`secretKeyRef`.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Sequence

from controller.errors import PermanentError, TemporaryError
from controller.spec.base import secret_env_name

if TYPE_CHECKING:
    from controller.serve.engine_client import EngineClient

__all__ = ["EndpointModel", "endpoint_from_spec", "local_path", "secret_env_name"]

BACKOFF_S = 0.5
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 60.0


@dataclass
class EndpointModel:
    """An OpenAI-compatible chat completions endpoint (e.g. the larger model in use today)."""

    name: str
    base_url: str
    """The API's base URL as the OpenAI SDK takes it (ending in /v1)."""
    model: str
    api_key: str
    timeout_s: float = 60.0
    max_retries: int = 2
    concurrency: int = 8
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)
    """How a retry waits (a test passes one that records the waits)."""

    def generate(self, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int, seed: int = 0,
                 progress: bool | None = None) -> list[str]:
        """One answer per conversation, in order. Runs its own event loop (the evaluator is
        synchronous); call it from a thread without one."""
        return asyncio.run(self._generate(conversations, max_new_tokens, seed, progress))

    async def _generate(self, conversations: Sequence[Sequence[dict]], max_new_tokens: int, seed: int,
                        progress: bool | None) -> list[str]:
        import sys

        from controller.evaluate.generation import prompt_messages
        from controller.serve.engine_client import EngineClient, api_root

        try:
            root = api_root(self.base_url)
        except ValueError as exc:
            raise PermanentError(f"evaluation.compare.models[{self.name}].endpoint: {exc}") from None
        show = sys.stderr.isatty() if progress is None else progress
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(conversations), desc=self.name, unit="ex", file=sys.stderr, dynamic_ncols=True)
        client = EngineClient(root, api_key=self.api_key, timeout=self.timeout_s,
                              max_connections=max(1, self.concurrency))
        slots = asyncio.Semaphore(max(1, self.concurrency))

        async def one(conv: Sequence[dict]) -> str:
            payload = {"model": self.model, "messages": prompt_messages(conv), "temperature": 0,
                       "max_tokens": max_new_tokens, "seed": seed}
            async with slots:
                text = await self._complete(client, payload)
            if bar is not None:
                bar.update(1)
            return text

        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                tasks = [group.create_task(one(conv)) for conv in conversations]
        except* (PermanentError, TemporaryError) as failed:
            raise failed.exceptions[0] from None
        finally:
            await client.close()
            if bar is not None:
                bar.close()
        return [t.result() for t in tasks]

    async def _complete(self, client: "EngineClient", payload: dict) -> str:
        from controller.serve.engine_client import EngineError

        where = f"evaluation.compare.models[{self.name}]"
        for attempt in range(self.max_retries + 1):
            try:
                resp = await client.chat(payload)
                break
            except EngineError as exc:
                if exc.status in (401, 403):
                    raise PermanentError(f"{where}: {self.base_url} refused the API key ({exc.status}: {exc})") from None
                if exc.status == 404:
                    raise PermanentError(f"{where}: model '{self.model}' not found at {self.base_url} ({exc})") from None
                if not exc.retryable:
                    raise PermanentError(f"{where}: {self.base_url} rejected the request ({exc.status}: {exc})") from None
                if attempt == self.max_retries:
                    raise TemporaryError(f"{where}: {self.base_url} failed ({exc.status or 'unreachable'}: {exc}) "
                                         f"after {attempt + 1} attempts; will retry") from None
                wait = exc.retry_after if exc.retry_after is not None else BACKOFF_S * 2 ** attempt
                await self.sleep(min(wait, RETRY_AFTER_MAX_S if exc.retry_after is not None else BACKOFF_MAX_S))
        choices = resp.get("choices") or []
        content = ((choices[0] or {}).get("message") or {}).get("content") if choices else None
        return str(content or "")


def endpoint_from_spec(ref: Any, env: Mapping[str, str] | None = None) -> EndpointModel:
    """An EndpointModel for a spec `compare.models[]` entry with an endpoint."""
    env = os.environ if env is None else env
    api_key = "unused"  # local OpenAI-compatible servers (vLLM, llama.cpp) accept any key
    if ref.api_key is not None:
        var = secret_env_name(ref.api_key.name, ref.api_key.key)
        api_key = env.get(var, "")
        if not api_key:
            raise PermanentError(
                f"evaluation.compare.models[{ref.name}].apiKey: environment variable {var} (from Secret "
                f"{ref.api_key.name}/{ref.api_key.key}) is not set; export it, or map the Secret into the eval Job under that name"
            )
    from controller.serve.engine_client import api_root

    try:
        api_root(str(ref.endpoint))  # said before any model loads, not after the fine-tune answered
    except ValueError as exc:
        raise PermanentError(f"evaluation.compare.models[{ref.name}].endpoint: {exc}") from None
    return EndpointModel(name=ref.name, base_url=str(ref.endpoint).rstrip("/"), model=ref.model or ref.name, api_key=api_key)


def local_path(ref: Any, repo_root: Path | None) -> Path:
    from controller.evaluate.datasets import resolve_repo_path

    return resolve_repo_path(ref.path, repo_root, f"evaluation.compare.models[{ref.name}].path")
