"""The served prompt (pure): retrieved sources put in front of the model, and what it cites.

One library for everything that must see the same prompt: the server (every request), the
evaluator (the served configuration is what the gate judges, controller.evaluate.served) and the
data preparation of retrieval-aware fine-tuning (RAFT: the model trains on the prompts it will be
served, controller.data.raft). A change here changes what the model sees, so it comes with a new
`controller.identity.PROMPT_VERSION` (a test pins the rendered prompt to the version), which
re-evaluates every served spec before it serves with the new prompt.

The sources go into the system message, each on its own line as `[<source id>] <text>`, after
one instruction: answer from them and name the one used in the answer's `source` field. The
source id is the document's path in the corpus (`refunds.md`), stable across edits of the
document and what examples name as their gold source (`"sources": ["refunds.md"]`). An existing
system message (the one the model was fine-tuned with) is kept first and the sources appended to
it; otherwise a system message holding only them is added.

Citations come from the answer, not from the retriever: `cited_ids` reads the `source` field of a
JSON answer (a string or a list of strings), and `citations` resolves those ids against the
sources the model was shown, so an API response says which document the model used, and whether
it was one it was shown at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

from controller.identity import PROMPT_VERSION
from controller.serve.corpus import Chunk

SOURCE_FIELD = "source"
"""The field of a JSON answer that names the source it used."""
INSTRUCTION = f'Answer from the sources below and name the one you used in the "{SOURCE_FIELD}" field.'
Hits = Sequence[tuple[Chunk, float]]
Message = Mapping[str, str]


class Searcher(Protocol):
    """What retrieval needs of an index (controller.serve.index.CorpusIndex)."""

    def search(self, query: str, k: int) -> list[tuple[Chunk, float]]: ...


def source_id(chunk: Chunk) -> str:
    """How a source is named in the prompt and cited in an answer: its document's path."""
    return chunk.path


def retrieval_query(messages: Sequence[Message]) -> str:
    """What retrieval searches for: the last user message (empty when there is none)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def context_block(hits: Hits) -> str:
    lines = [INSTRUCTION]
    for chunk, _score in hits:
        lines.append(f"[{source_id(chunk)}] {chunk.text}")
    return "\n".join(lines)


def with_context(messages: Sequence[Message], hits: Hits) -> list[dict]:
    """The conversation as the model sees it with `hits` as its sources (unchanged without hits)."""
    if not hits:
        return [dict(m) for m in messages]
    block = context_block(hits)
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *(dict(m) for m in messages[1:])]
    return [{"role": "system", "content": block}, *(dict(m) for m in messages)]


def fit_context(messages: Sequence[Message], hits: Hits, count_tokens: Callable[[list[dict]], int],
                budget: int) -> tuple[list[dict], list[tuple[Chunk, float]], int]:
    """As many sources as fit: the best ones first, dropping the lowest ranked until the prompt is
    at most `budget` tokens (the model's context minus the answer's tokens). Returns the prompt,
    the sources it holds and its length; the caller decides what a prompt that is still too long
    (no sources left) means."""
    kept = list(hits)
    while True:
        prompt = with_context(messages, kept)
        n = count_tokens(prompt)
        if n <= budget or not kept:
            return prompt, kept, n
        kept = kept[:-1]


@dataclass(frozen=True)
class ServedPrompt:
    """One conversation as served: the prompt with its sources, and the sources (best first)."""

    messages: list[dict]
    hits: list[tuple[Chunk, float]]


def served_prompt(messages: Sequence[Message], index: Searcher | None, top_k: int) -> ServedPrompt:
    """Retrieve for the last user message and put the hits in front of the model (no fitting to a
    context length: see `fit_context`)."""
    hits = index.search(retrieval_query(messages), top_k) if index is not None else []
    return ServedPrompt(with_context(messages, hits), hits)


def cited_ids(answer: str) -> list[str]:
    """The source ids a JSON answer names in its `source` field (a string or a list of strings;
    one ```json fence is allowed); empty when the answer is not a JSON object or names none."""
    from controller.evaluate.metrics import parse_json_object  # the evaluator's reading of a JSON answer

    value = parse_json_object(answer)
    if value is None:
        return []
    cited = value.get(SOURCE_FIELD)
    if isinstance(cited, str):
        return [cited.strip()] if cited.strip() else []
    if isinstance(cited, list):
        return [c.strip() for c in cited if isinstance(c, str) and c.strip()]
    return []


def sources(hits: Hits) -> list[dict]:
    """The sources the model was shown, best first (`index` is the position in the prompt), with
    their text: a client shows the passage an answer cites, which is where the facts are."""
    return [{"index": n, "id": source_id(c), "path": c.path, "chunkId": c.chunk_id, "score": round(float(s), 6),
             "text": c.text} for n, (c, s) in enumerate(hits, 1)]


def citations(hits: Hits, answer: str | None = None) -> list[dict]:
    """What the answer cites, resolved against the sources it was shown: one entry per cited id,
    with the shown chunks of that document (`retrieved: true`), or `retrieved: false` for an id
    the model was not shown (a citation the sources do not back). Before there is an answer (the
    first chunk of a stream), `answer=None`: the sources shown, each `retrieved: true`, which the
    final chunk then narrows to what the answer cites."""
    shown = sources(hits)
    if answer is None:
        return [{**s, "retrieved": True} for s in shown]
    out = []
    for cited in dict.fromkeys(cited_ids(answer)):
        matches = [s for s in shown if s["id"] == cited]
        if matches:
            out.append({**matches[0], "chunks": [m["chunkId"] for m in matches], "retrieved": True})
        else:
            out.append({"id": cited, "path": cited, "retrieved": False})
    return out


__all__ = ["INSTRUCTION", "PROMPT_VERSION", "SOURCE_FIELD", "ServedPrompt", "cited_ids", "citations", "context_block",
           "fit_context", "retrieval_query", "served_prompt", "source_id", "sources", "with_context"]
