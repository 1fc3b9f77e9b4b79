"""The embedded engine through the official openai SDK: the vLLM API subset (chat, stream,
/v1/models, runtime adapter load and unload), sampling parameters and stop, continuous batching
(concurrent answers equal the one-at-a-time ones), several adapters over one base, and bad input.
It runs beside the gateway in the session's node (controller.serve.node), on its own port."""
from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from serve_helpers import RUN_A, RUN_B

SYSTEM = 'Classify the support ticket. Answer with JSON: {"label": "billing"|"bug"|"account"}.'
TICKETS = [
    "Hi, I was charged twice for my subscription. Please refund the payment. Thanks",
    "Hello, the app crashes when I open settings. I only see a blank page. Best",
    "Hi, I cannot log in to my account. My account is locked. Thanks",
    "Where is the invoice for last month? The receipt shows an extra fee.",
]


def _messages(ticket: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket}]


@pytest.fixture(scope="module")
def other_run(server, tmp_path_factory) -> str:
    """Run B's adapter with its LoRA weights replaced by seeded noise, and a manifest that matches
    them: a second real adapter over the same base that answers differently from A (the tiny runs
    trained for a few steps stay close to the pretrained base, and so to each other)."""
    import hashlib
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path_factory.mktemp("other") / "run"
    shutil.copytree(Path(server.config.run_dir).parent / RUN_B, run)
    weights = run / "model" / "adapter_model.safetensors"
    generator = torch.Generator().manual_seed(5)
    tensors = {k: torch.randn(v.shape, generator=generator) * 0.5 for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"]["model/adapter_model.safetensors"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (run / "manifest.json").write_text(json.dumps(manifest))
    return str(run)


@pytest.fixture(scope="module")
def engine(server) -> OpenAI:
    return OpenAI(base_url=f"{server.engine_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _answer(client: OpenAI, model: str, ticket: str, **kw) -> str:
    resp = client.chat.completions.create(model=model, messages=_messages(ticket), max_tokens=kw.pop("max_tokens", 12),
                                          temperature=kw.pop("temperature", 0), **kw)
    return resp.choices[0].message.content


def test_models_list_the_base_and_the_adapter_with_its_parent(engine):
    cards = {m.id: m for m in engine.models.list().data}
    assert set(cards) == {"base", RUN_A}
    assert cards[RUN_A].model_extra["parent"] == "base" and cards["base"].model_extra["parent"] is None
    assert cards[RUN_A].model_extra["max_model_len"] == 512


def test_the_adapter_answers_and_streams_the_same_text(engine):
    resp = engine.chat.completions.create(model=RUN_A, messages=_messages(TICKETS[0]), max_tokens=16, temperature=0)
    text = resp.choices[0].message.content
    assert text and resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 20
    chunks = list(engine.chat.completions.create(model=RUN_A, messages=_messages(TICKETS[0]), max_tokens=16,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        resp.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens


# Prompts the pretrained base answers with several tokens before its end of turn (its copy,
# reverse and JSON skills, controller.tiny.skills): the mechanics below need an answer longer than
# the max_tokens and the stop string they cut it with, whatever the ticket task's answer is.
LONG_ANSWER_PROMPTS = [
    [{"role": "user", "content": "Repeat exactly: gray tree snow"}],
    [{"role": "user", "content": "Reverse the words: lamp desk door"}],
    [{"role": "user", "content": 'Answer in JSON with the key "answer": plum'}],
    _messages(TICKETS[1]),
]


def test_max_tokens_and_stop(engine):
    def greedy(messages, **kw):
        return engine.chat.completions.create(model=RUN_A, messages=messages, temperature=0, **kw)

    answers = [(greedy(m, max_tokens=16), m) for m in LONG_ANSWER_PROMPTS]
    full, messages = max(answers, key=lambda a: a[0].usage.completion_tokens)
    text_full = full.choices[0].message.content
    assert full.usage.completion_tokens >= 6 and len(text_full) >= 6, [a.choices[0].message.content for a, _ in answers]
    short = greedy(messages, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert text_full.startswith(short.choices[0].message.content) and short.choices[0].message.content != text_full
    stop = text_full[3:5]  # a stop string the greedy answer contains: it ends at its first occurrence
    expected = text_full[:text_full.index(stop)]
    for stream in (False, True):
        kw = dict(messages=messages, max_tokens=16, stop=[stop, "\u2603zzz"])
        if stream:
            chunks = list(greedy(stream=True, **kw))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            resp = greedy(**kw)
            text, finish = resp.choices[0].message.content, [resp.choices[0].finish_reason]
        assert text == expected and finish == ["stop"], (stream, text, stop)  # nothing of the stop string leaks


def test_temperature_top_p_and_seed(engine):
    greedy = _answer(engine, "base", TICKETS[2], max_tokens=12)
    assert _answer(engine, "base", TICKETS[2], max_tokens=12) == greedy
    # top_p that keeps only the most likely token is greedy decoding at any temperature
    assert _answer(engine, "base", TICKETS[2], max_tokens=12, temperature=1.5, top_p=1e-6, seed=1) == greedy
    sampled = [_answer(engine, "base", TICKETS[2], max_tokens=12, temperature=1.5, seed=s) for s in (1, 1, 2, 3)]
    assert sampled[0] == sampled[1], "the same seed must give the same sample"
    assert len(set(sampled + [greedy])) > 1, "sampling at temperature 1.5 never left the greedy answer"


def test_concurrent_requests_are_batched_and_answer_as_alone(engine, server, other_run):
    """Continuous batching: 12 requests at once (three models in one batch: two adapters and the
    bare base) give exactly the greedy answers each gives alone, in fewer decode steps than rows."""
    engine.post("/load_lora_adapter", body={"lora_name": "b", "lora_path": other_run}, cast_to=str)
    try:
        jobs = [(model, ticket) for model in (RUN_A, "b", "base") for ticket in TICKETS]
        alone = [_answer(engine, m, t, max_tokens=10) for m, t in jobs]
        stats = dict(server.engine.engine.stats)
        with cf.ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(lambda job: _answer(engine, job[0], job[1], max_tokens=10), jobs))
        assert together == alone
        steps = server.engine.engine.stats["steps"] - stats["steps"]
        rows = server.engine.engine.stats["rows"] - stats["rows"]
        assert rows / steps > 2, f"{rows} rows in {steps} steps: the requests were not batched"
    finally:
        engine.post("/unload_lora_adapter", body={"lora_name": "b"}, cast_to=str)


def test_runtime_adapter_load_and_unload_and_two_adapters_answer_differently(engine, server, other_run):
    run_b = other_run
    with pytest.raises(openai.NotFoundError):
        _answer(engine, "tuned-b", TICKETS[0])
    ok = engine.post("/load_lora_adapter", body={"lora_name": "tuned-b", "lora_path": run_b}, cast_to=str)
    assert "tuned-b" in ok
    try:
        assert {m.id for m in engine.models.list().data} == {"base", RUN_A, "tuned-b"}
        with pytest.raises(openai.BadRequestError, match="already been loaded"):
            engine.post("/load_lora_adapter", body={"lora_name": "tuned-b", "lora_path": run_b}, cast_to=str)
        prompts = TICKETS + ["Hello there", "What is the weather?", "refund refund crash login"]
        before = _answer(engine, RUN_A, TICKETS[0], max_tokens=16)
        a = [_answer(engine, RUN_A, t, max_tokens=8) for t in prompts]
        b = [_answer(engine, "tuned-b", t, max_tokens=8) for t in prompts]
        base = [_answer(engine, "base", t, max_tokens=8) for t in prompts]
        assert a != b, "two adapters with different weights answered every prompt alike"
        assert b != base
    finally:
        engine.post("/unload_lora_adapter", body={"lora_name": "tuned-b"}, cast_to=str)
    assert {m.id for m in engine.models.list().data} == {"base", RUN_A}
    with pytest.raises(openai.NotFoundError):
        _answer(engine, "tuned-b", TICKETS[0])
    with pytest.raises(openai.NotFoundError):
        engine.post("/unload_lora_adapter", body={"lora_name": "tuned-b"}, cast_to=str)
    assert _answer(engine, RUN_A, TICKETS[0], max_tokens=16) == before  # A is untouched by B's coming and going


def test_an_adapter_without_a_verified_manifest_is_refused(engine, server, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(Path(server.config.run_dir).parent / RUN_B, run)
    weights = run / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(openai.BadRequestError, match="sha256"):
        engine.post("/load_lora_adapter", body={"lora_name": "tampered", "lora_path": str(run)}, cast_to=str)
    (run / "manifest.json").unlink()
    with pytest.raises(openai.BadRequestError, match="not finished"):
        engine.post("/load_lora_adapter", body={"lora_name": "tampered", "lora_path": str(run)}, cast_to=str)
    assert {m.id for m in engine.models.list().data} == {"base", RUN_A}


def test_engine_bad_input(engine):
    with pytest.raises(openai.NotFoundError):
        _answer(engine, "nope", TICKETS[0])
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        engine.chat.completions.create(model=RUN_A, messages=[{"role": "user", "content": "refund " * 200}], max_tokens=500)
    with pytest.raises(openai.BadRequestError) as info:
        engine.chat.completions.create(model=RUN_A, messages=_messages(TICKETS[0]), temperature=7)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as info:
        engine.chat.completions.create(model=RUN_A, messages=_messages(TICKETS[0]), stop=["a"] * 5)
    assert info.value.body["param"] == "stop"
    assert _answer(engine, RUN_A, TICKETS[0], max_tokens=4)  # and it still answers
