"""The served prompt builder (pure): what the model sees is pinned to PROMPT_VERSION, sources are
fitted to the context lowest-ranked first, and citations are read from the answer."""
from __future__ import annotations

import hashlib

from controller.identity import PROMPT_VERSION
from controller.serve.corpus import Chunk
from controller.serve.prompt import cited_ids, fit_context, retrieval_query, served_prompt, with_context

HITS = [(Chunk("refunds.md#0", "refunds.md", "Refunds take 5 business days."), 3.0),
        (Chunk("login.md#0", "login.md", "Accounts lock for 15 minutes."), 1.0)]
RENDERED_SHA256 = {"sources-cite-1": "07faab7c69ae441b2b112b77466f1cbb8243f44de1c9094228e4ae39698d1dbd"}
"""One entry per PROMPT_VERSION ever served: a changed prompt adds a version, it never rewrites one."""


def test_the_rendered_prompt_is_pinned_to_the_prompt_version() -> None:
    """A change to what the model sees must come with a new PROMPT_VERSION (which re-evaluates every
    served spec before it serves with the new prompt): then add the new version's hash here."""
    messages = with_context([{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": "Refund?"}], HITS)
    assert messages[0]["content"] == (
        "Route the ticket.\n\nAnswer from the sources below and name the one you used in the \"source\" field.\n"
        "[refunds.md] Refunds take 5 business days.\n[login.md] Accounts lock for 15 minutes.")
    assert messages[1:] == [{"role": "user", "content": "Refund?"}]
    rendered = repr(messages).encode()
    assert hashlib.sha256(rendered).hexdigest() == RENDERED_SHA256[PROMPT_VERSION], (
        f"the prompt changed: bump controller.identity.PROMPT_VERSION and pin {hashlib.sha256(rendered).hexdigest()}")
    # Without a system message the sources get one of their own; without sources nothing changes.
    assert with_context([{"role": "user", "content": "Hi"}], HITS)[0]["role"] == "system"
    assert with_context([{"role": "user", "content": "Hi"}], []) == [{"role": "user", "content": "Hi"}]


def test_sources_that_do_not_fit_are_dropped_lowest_ranked_first() -> None:
    base = [{"role": "user", "content": "Refund?"}]
    count = lambda m: sum(len(x["content"]) for x in m)  # noqa: E731 - characters stand in for tokens
    full = count(with_context(base, HITS))
    prompt, kept, n = fit_context(base, HITS, count, full)
    assert kept == HITS and n == full
    prompt, kept, n = fit_context(base, HITS, count, full - 1)
    assert kept == HITS[:1] and "login.md" not in prompt[0]["content"] and n <= full - 1
    prompt, kept, n = fit_context(base, HITS, count, 3)
    assert kept == [] and prompt == base and n > 3  # still too long: the caller refuses it


def test_retrieval_searches_the_last_user_message_and_citations_read_the_answer() -> None:
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "refund"}]
    assert retrieval_query(messages) == "refund"

    class Index:
        queries: list[str] = []

        def search(self, query: str, k: int) -> list[tuple[Chunk, float]]:
            self.queries.append(query)
            return HITS[:k]

    index = Index()
    served = served_prompt(messages, index, 1)
    assert index.queries == ["refund"] and served.hits == HITS[:1] and "[refunds.md]" in served.messages[0]["content"]
    assert served_prompt(messages, None, 4).messages == messages
    assert cited_ids('{"label": "billing", "source": "refunds.md", "answer": "5 business days"}') == ["refunds.md"]
    assert cited_ids('```json\n{"source": ["a.md", "b.md"]}\n```') == ["a.md", "b.md"]
    assert cited_ids('{"label": "billing"}') == [] and cited_ids("refunds.md") == [] and cited_ids('{"source": 3}') == []
