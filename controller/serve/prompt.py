"""Putting retrieved chunks into the conversation (pure).

The chunks go into the system message, numbered, each with its document path and chunk id, so
the model can refer to them and the answer's `citations` map one to one onto what it was shown.
An existing system message (the one the model was fine-tuned with) is kept first and the context
appended to it; otherwise a system message holding only the context is added.
"""
from __future__ import annotations

from typing import Sequence

from controller.serve.corpus import Chunk

HEADER = "Use these sources when they are relevant and cite them by number:"


def context_block(hits: Sequence[tuple[Chunk, float]]) -> str:
    lines = [HEADER]
    for n, (chunk, _score) in enumerate(hits, 1):
        lines.append(f"[{n}] ({chunk.chunk_id}) {chunk.text}")
    return "\n".join(lines)


def with_context(messages: list[dict], hits: Sequence[tuple[Chunk, float]]) -> list[dict]:
    if not hits:
        return list(messages)
    block = context_block(hits)
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def citations(hits: Sequence[tuple[Chunk, float]]) -> list[dict]:
    return [{"index": n, "path": c.path, "chunkId": c.chunk_id, "score": round(float(s), 6)}
            for n, (c, s) in enumerate(hits, 1)]
