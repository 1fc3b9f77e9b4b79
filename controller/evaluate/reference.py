"""Reference models for the A/B comparison: any OpenAI-compatible endpoint, or a local path.

The endpoint's API key never appears in a spec: the spec names a Secret (`apiKey: {name, key}`)
and the key reaches this process as an environment variable whose name is derived from that
reference (`secret_env_name`), the same way on a laptop and in a Job that maps the Secret with
`secretKeyRef`. Requests are greedy (temperature 0) and seeded, as our own generation is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from controller.errors import PermanentError, TemporaryError
from controller.spec.base import secret_env_name

__all__ = ["EndpointModel", "endpoint_from_spec", "local_path", "secret_env_name"]


@dataclass
class EndpointModel:
    """An OpenAI-compatible chat completions endpoint (e.g. the larger model in use today)."""

    name: str
    base_url: str
    model: str
    api_key: str
    timeout_s: float = 60.0
    max_retries: int = 2

    def generate(self, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int, seed: int = 0,
                 progress: bool | None = None) -> list[str]:
        import sys

        import openai

        from controller.evaluate.generation import prompt_messages

        client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                               max_retries=self.max_retries)
        show = sys.stderr.isatty() if progress is None else progress
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(conversations), desc=self.name, unit="ex", file=sys.stderr, dynamic_ncols=True)
        outputs = []
        try:
            for conv in conversations:
                try:
                    resp = client.chat.completions.create(
                        model=self.model, messages=prompt_messages(conv), temperature=0, max_tokens=max_new_tokens, seed=seed,
                    )
                except openai.AuthenticationError as exc:
                    raise PermanentError(f"evaluation.compare.models[{self.name}]: {self.base_url} refused the API key ({exc})") from None
                except openai.NotFoundError as exc:
                    raise PermanentError(f"evaluation.compare.models[{self.name}]: model '{self.model}' not found at {self.base_url} ({exc})") from None
                except openai.BadRequestError as exc:
                    raise PermanentError(f"evaluation.compare.models[{self.name}]: {self.base_url} rejected the request ({exc})") from None
                except openai.OpenAIError as exc:  # connection errors, timeouts, 5xx, rate limits
                    raise TemporaryError(
                        f"evaluation.compare.models[{self.name}]: {self.base_url} failed ({type(exc).__name__}: {exc}); will retry"
                    ) from None
                content = resp.choices[0].message.content if resp.choices else None
                outputs.append(content or "")
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return outputs


def endpoint_from_spec(ref: Any, env: dict | None = None) -> EndpointModel:
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
    return EndpointModel(name=ref.name, base_url=str(ref.endpoint).rstrip("/"), model=ref.model or ref.name, api_key=api_key)


def local_path(ref: Any, repo_root: Path | None) -> Path:
    from controller.evaluate.datasets import resolve_repo_path

    return resolve_repo_path(ref.path, repo_root, f"evaluation.compare.models[{ref.name}].path")
