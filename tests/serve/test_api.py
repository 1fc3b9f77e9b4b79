"""The OpenAI-compatible API, exercised with the official openai SDK as the client."""
from __future__ import annotations

import http.client
import json

import openai
import pytest

from serve_helpers import ANSWER_DOC, QUESTION, RUN_A, SPEC_NAME


def _chat(client, content: str = QUESTION, **kw):
    return client.chat.completions.create(model=SPEC_NAME, messages=[{"role": "user", "content": content}], **kw)


def test_models_lists_the_spec_and_run(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [SPEC_NAME]
    assert models.data[0].model_extra["runId"] == RUN_A


def test_non_streaming_answer_with_usage_and_citations(client):
    resp = _chat(client, max_tokens=12)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= 12 and resp.usage.prompt_tokens > 0
    assert resp.system_fingerprint == RUN_A


def test_sources_put_the_only_document_that_answers_first(client):
    """Only zorblax.md mentions ZX-4417: it must be the first source shown, with its chunk id and a score."""
    shown = _chat(client, max_tokens=4).model_extra["sources"]
    assert shown, "no sources"
    assert shown[0]["path"] == shown[0]["id"] == ANSWER_DOC
    assert shown[0]["chunkId"] == f"{ANSWER_DOC}#0"
    assert shown[0]["score"] > 0
    assert all(c["score"] <= shown[0]["score"] for c in shown)
    other = _chat(client, "How many business days until my refund reaches the card?", max_tokens=4).model_extra["sources"]
    assert other[0]["path"] == "refunds.md"


def test_citations_are_what_the_answer_cites_not_the_retrievers_hits(client):
    """This run answers `{"label": ...}` without a `source`: it cites nothing, whatever was retrieved.
    An answer naming a source is resolved against the sources shown (controller.serve.prompt)."""
    from controller.serve.corpus import Chunk
    from controller.serve.prompt import citations

    resp = _chat(client, max_tokens=12)
    assert resp.model_extra["sources"] and resp.model_extra["citations"] == []
    hits = [(Chunk(f"{ANSWER_DOC}#0", ANSWER_DOC, "ZX-4417 means ..."), 2.0), (Chunk("refunds.md#0", "refunds.md", "..."), 1.0)]
    cited = citations(hits, '{"label": "bug", "source": "refunds.md"}')
    assert [(c["path"], c["retrieved"], c["index"]) for c in cited] == [("refunds.md", True, 2)]
    assert citations(hits, '{"label": "bug", "source": "other.md"}') == [{"id": "other.md", "path": "other.md", "retrieved": False}]
    assert citations(hits, "not json") == []


def test_streaming_yields_the_same_text_as_non_streaming(client):
    """Greedy decoding: the SSE deltas concatenate to exactly the non-streamed answer."""
    full = _chat(client, max_tokens=16)
    stream = _chat(client, max_tokens=16, stream=True)
    chunks = list(stream)
    assert chunks[0].model_extra["sources"][0]["path"] == ANSWER_DOC
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals[0].model_extra["citations"] == full.model_extra["citations"]  # the answer's, once it is known
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert all(c.object == "chat.completion.chunk" for c in chunks)


@pytest.mark.parametrize("kwargs, param", [
    (dict(max_tokens=10_000), "max_tokens"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
    (dict(messages=[{"role": "user"}]), "messages[0].content"),
    (dict(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]), "messages[1].role"),
    (dict(messages=[{"role": "user", "content": "x" * 40_000}]), "messages"),
    (dict(n=3), "n"),
])
def test_bad_requests_get_400_with_the_field_named(client, kwargs, param):
    args = {"model": SPEC_NAME, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**args)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def _raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection(server.config.host, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_malformed_http_requests_get_json_errors_and_the_server_stays_up(server, client):
    cases = [
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400),
        ("POST", "/v1/chat/completions", b"x" * ((1 << 20) + 1), 413),
        ("GET", "/v1/chat/completions", None, 405),
        ("GET", "/v1/nothing", None, 404),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(), 400),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}).encode(), 400),
    ]
    for method, path, body, code in cases:
        status, data = _raw(server, method, path, body, {"Content-Type": "application/json"})
        assert status == code, (path, body[:40] if body else None, status, data)
        assert "message" in json.loads(data)["error"]
    # still serving
    assert _raw(server, "GET", "/healthz")[0] == 200
    assert _raw(server, "GET", "/readyz")[0] == 200
    assert _chat(client, max_tokens=2).choices[0].message.content is not None


def test_metrics_in_prometheus_text_format(server, client):
    from prometheus_client.parser import text_string_to_metric_families

    _chat(client, max_tokens=2)
    status, body = _raw(server, "GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    requests = {(s.labels.get("run_id"), s.labels.get("code")): s.value for s in families["ftops_gateway_requests"].samples
                if s.name.endswith("_total")}
    assert requests[(RUN_A, "200")] >= 1
    assert families["ftops_gateway_ready"].samples[0].value == 1
    info = families["ftops_gateway_info"].samples[0].labels
    assert info["spec"] == SPEC_NAME and info["retriever"] == "bm25" and len(info["corpus_version"]) == 64
    assert sum(s.value for s in families["ftops_gateway_completion_tokens"].samples if s.name.endswith("_total")) > 0
    for name in ("ftops_gateway_time_to_first_token_seconds", "ftops_gateway_tokens_per_second",
                 "ftops_gateway_request_seconds", "ftops_gateway_queue_depth", "ftops_gateway_route_weight"):
        assert name in families, name


def test_client_leaving_mid_stream_does_not_hurt_the_server(server, client):
    conn = http.client.HTTPConnection(server.config.host, server.port, timeout=30)
    body = json.dumps({"model": SPEC_NAME, "stream": True, "max_tokens": 24,
                       "messages": [{"role": "user", "content": QUESTION}]})
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    assert resp.fp.readline()  # the first chunk arrived
    conn.sock.close()
    conn.close()
    assert _chat(client, max_tokens=4).model_extra["sources"][0]["path"] == ANSWER_DOC


def test_keep_alive_connection_survives_errors_with_unread_bodies(server):
    """An error answered before the body is read must not leave the body to be parsed as the next
    request on the same keep-alive connection."""
    conn = http.client.HTTPConnection(server.config.host, server.port, timeout=30)
    try:
        for method, path in (("POST", "/v1/models"), ("POST", "/nowhere"), ("GET", "/healthz")):
            try:
                conn.request(method, path, body=b'{"x": 1}' if method == "POST" else None)
                resp = conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected):
                conn.close()  # the server closed it on purpose; a fresh connection must work
                conn.request(method, path, body=b'{"x": 1}' if method == "POST" else None)
                resp = conn.getresponse()
            resp.read()
            assert resp.status == {"/v1/models": 405, "/nowhere": 404, "/healthz": 200}[path]
    finally:
        conn.close()
