"""Evaluating a managed fine-tune (`method.type: api`): its model and its base model answer at the
provider, through the provider's OpenAI-compatible chat endpoint, the engine the gateway routes to
when the run serves.

Everything else is the evaluation every run gets: the same suites, the same served prompts
(retrieval over the spec's corpus and the prompt builder, controller.evaluate.served), the same
report and gates. Only where the answers come from changes: `hosted_models` reads the run's
manifest (its `provider` block, written by controller.backends.api_finetune: the API's base URL,
the fine-tuned model's id, the base model, the variable that holds the API key) and gives the
evaluation an endpoint for the fine-tuned model and one for its base.

Prompt lengths: the provider's tokenizer is not on this machine, so prompts are measured with an
estimate of about four characters a token (`EstimatingTokenizer`), against the provider model's
context window (`CONTEXT_TOKENS`); the served prompts of a support task are far below it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from controller.errors import PermanentError
from controller.evaluate.reference import EndpointModel

CONTEXT_TOKENS = 128_000
"""The context window of the providers' fine-tunable chat models (gpt-4o-mini, gpt-4o, gpt-4.1)."""
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
"""Tokens a chat template adds per message (role and separators)."""


class EstimatingTokenizer:
    """The two things the evaluation asks of a tokenizer, answered with an estimate: the length of
    a rendered chat prompt, and the token ids of a text (only their count is used)."""

    @staticmethod
    def _count(text: str) -> int:
        return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], tokenize: bool = True,
                            add_generation_prompt: bool = True) -> list[int]:
        total = sum(self._count(str(m.get("content") or "")) + MESSAGE_OVERHEAD for m in messages)
        return [0] * (total + (MESSAGE_OVERHEAD if add_generation_prompt else 0))

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [0] * self._count(text)}


@dataclass(frozen=True)
class HostedModels:
    endpoints: dict[str, EndpointModel]
    tokenizer: EstimatingTokenizer
    context: int


def hosted_models(manifest: Mapping[str, Any], fine_tuned: str, base: str,
                  env: Mapping[str, str] | None = None) -> HostedModels | None:
    """The endpoints `fine_tuned` and `base` of a run whose model a provider hosts; None for a run
    ftops trained itself. PermanentError when the manifest does not say where the model is, and
    when the API key is not in this process's environment."""
    if (manifest.get("model") or {}).get("kind") != "api":
        return None
    block = manifest.get("provider")
    if not isinstance(block, dict) or not block.get("fineTunedModel") or not block.get("baseUrl"):
        raise PermanentError(f"run {manifest.get('runId')}: its manifest names no fine-tuned model at a provider "
                             "(provider.fineTunedModel, provider.baseUrl)")
    env = os.environ if env is None else env
    var = str(block.get("apiKeyEnv") or "")
    key = env.get(var, "") if var else ""
    if not key:
        raise PermanentError(f"run {manifest.get('runId')}: the API key for {block.get('name')} is not in the evaluation's "
                             f"environment ({var or 'no variable recorded'}); map the Secret into the evaluator under that name")
    url = str(block["baseUrl"]).rstrip("/")
    return HostedModels(
        {fine_tuned: EndpointModel(fine_tuned, url, str(block["fineTunedModel"]), key),
         base: EndpointModel(base, url, str(block["baseModel"]), key)},
        EstimatingTokenizer(), CONTEXT_TOKENS)
