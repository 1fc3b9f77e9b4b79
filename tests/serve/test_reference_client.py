"""The evaluation's reference models (controller.evaluate.reference.EndpointModel: the A/B
comparison's larger model, a managed fine-tune at its provider) answer through the gateway's
engine client (controller.serve.engine_client.EngineClient): against ftops' embedded engine and
against the fake provider, each giving what the official openai SDK gets from the same server, in
the prompts' order, with failures classified and retried as the evaluator needs."""
from __future__ import annotations

import pytest
from openai import OpenAI

from serve_helpers import RUN_A

QUESTIONS = ["Where is my refund?", "I cannot log in to my account.", "The invoice shows the wrong amount.",
             "Cancel my annual plan please."]


def _conversations() -> list[list[dict]]:
    return [[{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": q}] for q in QUESTIONS]


def _sdk_answers(base_url: str, model: str, api_key: str, max_tokens: int, seed: int) -> list[str]:
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    out = []
    for conv in _conversations():
        resp = client.chat.completions.create(model=model, messages=conv, temperature=0, max_tokens=max_tokens, seed=seed)
        out.append(resp.choices[0].message.content or "")
    return out


def test_a_reference_on_the_embedded_engine_answers_as_the_sdk_gets_it(server):
    """The engine of the serving tests' node (run A's adapter over the tiny base): the four
    prompts in flight together come back in order, each the answer the SDK gets alone."""
    from controller.evaluate.reference import EndpointModel

    url = f"http://127.0.0.1:{server.engine_port}/v1"
    reference = EndpointModel("tiny", url, RUN_A, "unused", concurrency=4)
    answers = reference.generate(_conversations(), max_new_tokens=12, seed=3, progress=False)
    assert answers == _sdk_answers(url, RUN_A, "unused", 12, 3)
    assert all(answers) and len(set(answers)) > 1  # real generations, for different prompts


@pytest.fixture
def provider():
    from fakeprovider.answer import Example
    from fakeprovider.provider import FakeProvider
    from fakeprovider.server import Served

    knowledge = [Example.from_messages([{"role": "user", "content": q}, {"role": "assistant", "content": f"answer {i}"}])
                 for i, q in enumerate(QUESTIONS)]
    served = Served(FakeProvider(general_knowledge=knowledge))
    yield served
    served.close()


class Waits:
    """Records what a retry waits instead of waiting."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def _reference(provider, waits: Waits, **kw):
    from controller.evaluate.reference import EndpointModel

    args = dict(name="large", base_url=provider.url, model="gpt-4o-mini-2024-07-18",
                api_key=provider.provider.api_keys[0], sleep=waits)
    return EndpointModel(**{**args, **kw})


def test_a_reference_at_a_provider_answers_in_order_through_the_engine_client(provider):
    waits = Waits()
    answers = _reference(provider, waits, concurrency=3).generate(_conversations(), max_new_tokens=16, progress=False)
    assert answers == [f"answer {i}" for i in range(len(QUESTIONS))]
    assert answers == _sdk_answers(provider.url, "gpt-4o-mini-2024-07-18", provider.provider.api_keys[0], 16, 0)
    assert waits.seconds == []


def test_a_rate_limit_is_retried_after_the_providers_retry_after(provider):
    waits = Waits()
    provider.provider.fail_next(429, count=2, retry_after=3)
    answers = _reference(provider, waits, concurrency=1).generate(_conversations()[:1], max_new_tokens=16, progress=False)
    assert answers == ["answer 0"] and waits.seconds == [3.0, 3.0]
    assert provider.provider.count("POST", "/v1/chat/completions") == 3


def test_failures_that_persist_are_temporary_and_those_retrying_cannot_fix_are_permanent(provider):
    from controller.errors import PermanentError, TemporaryError

    waits = Waits()
    provider.provider.fail_next(500, count=3)
    with pytest.raises(TemporaryError, match=r"compare.models\[large\]: .* failed \(500: .*after 3 attempts; will retry"):
        _reference(provider, waits, concurrency=1).generate(_conversations()[:1], max_new_tokens=8, progress=False)
    assert waits.seconds == [0.5, 1.0]  # exponential backoff where the provider names no wait

    sent = provider.provider.count("POST", "/v1/chat/completions")
    with pytest.raises(PermanentError, match=r"compare.models\[large\]: .* refused the API key \(401"):
        _reference(provider, waits, api_key="sk-wrong", concurrency=1).generate(
            _conversations()[:1], max_new_tokens=8, progress=False)
    assert provider.provider.count("POST", "/v1/chat/completions") == sent + 1  # never retried
    with pytest.raises(PermanentError, match=r"model 'ft:gone' not found"):
        _reference(provider, waits, model="ft:gone").generate(_conversations()[:1], max_new_tokens=8, progress=False)
    with pytest.raises(PermanentError, match=r"compare.models\[large\].endpoint: .* must end in /v1"):
        _reference(provider, waits, base_url=provider.root).generate(_conversations()[:1], max_new_tokens=8,
                                                                      progress=False)
