"""A deterministic synthetic task: support tickets -> `{"label": "billing"|"bug"|"account"}`.

Why this task: a tiny model learns it to 100% held-out accuracy in seconds on a CPU, the answer
is JSON (so format compliance can be measured), and the label is a pure function of the ticket
(each ticket names topic words from exactly one label), so accuracy is a meaningful signal.
Pure Python, no heavy imports: data prep, evaluation and serving tests use it freely.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable

LABELS: tuple[str, ...] = ("billing", "bug", "account")

SYSTEM_PROMPT = 'Classify the support ticket. Answer with JSON: {"label": "billing"|"bug"|"account"}.'

# Each ticket is two sentences about its label's topic between shared openers, fillers and closers.
# Two label sentences (not one keyword) on purpose: with a frozen random base, LoRA learns from a
# signal spread over several tokens in a couple of epochs, while one keyword among ~60 tokens keeps
# it at chance for hundreds of steps (measured on the tiny model).
_PHRASES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for my subscription.",
        "Where is the invoice for last month?",
        "Please refund the payment.",
        "My credit card was billed the wrong price.",
        "The receipt shows an extra fee.",
        "Can I get a refund for this charge?",
        "The payment failed but the money left my bank.",
        "Why did the subscription fee go up?",
    ),
    "bug": (
        "The app crashes when I open settings.",
        "I get an error message on the dashboard.",
        "The page freezes after I click save.",
        "The upload button is broken.",
        "I only see a blank page.",
        "Requests time out all the time.",
        "There is a glitch in the chart.",
        "Here is the stack trace from the crash.",
    ),
    "account": (
        "I forgot my password.",
        "I cannot log in to my account.",
        "How do I change my username?",
        "My two-factor code never arrives.",
        "Please update the email address on my profile.",
        "My account is locked.",
        "I cannot sign in since yesterday.",
        "Can you delete my profile?",
    ),
}
_OPENERS = ("Hi,", "Hello team,", "Hey,", "Good morning,", "Dear support,", "Hi there,", "")
_FILLERS = (
    "It started yesterday.",
    "This is urgent.",
    "I am using the mobile app.",
    "Thanks in advance.",
    "My colleague has the same thing.",
    "I tried again later.",
    "",
)
_CLOSERS = ("Thanks!", "Regards, Sam", "Best, Alex", "Cheers", "")


def make_ticket(label: str, rng: random.Random) -> str:
    """One ticket text whose label is `label`."""
    if label not in _PHRASES:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    first, second = rng.sample(_PHRASES[label], 2)
    parts = [rng.choice(_OPENERS), first, rng.choice(_FILLERS), second, rng.choice(_CLOSERS)]
    return " ".join(p for p in parts if p)


def answer_for(label: str) -> str:
    """The exact assistant answer for a label (what a perfectly trained model generates)."""
    return json.dumps({"label": label})


def make_example(label: str, rng: random.Random) -> dict:
    """One chat example in OpenAI format: system, user ticket, assistant JSON answer."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": make_ticket(label, rng)},
            {"role": "assistant", "content": answer_for(label)},
        ]
    }


def generate_examples(n: int, seed: int = 0) -> list[dict]:
    """`n` examples, labels balanced round-robin then shuffled; the same (n, seed) always gives the
    same list, so tests and the demo can regenerate identical data without storing it."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    rng = random.Random(seed)
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    rng.shuffle(labels)
    return [make_example(label, rng) for label in labels]


def write_jsonl(path: str | Path, examples: Iterable[dict]) -> Path:
    """Write chat examples as JSONL (one object per line), creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for example in examples:
            fh.write(json.dumps(example, ensure_ascii=False) + "\n")
    return path


def write_task(out_dir: str | Path, n_train: int = 600, n_test: int = 120, seed: int = 0) -> tuple[Path, Path]:
    """Write `train.jsonl` and `test.jsonl` under `out_dir` from disjoint seeds (the test split is
    generated from seed + 1_000_003, so it is never a copy of the train split's random stream)."""
    out_dir = Path(out_dir)
    train = write_jsonl(out_dir / "train.jsonl", generate_examples(n_train, seed))
    test = write_jsonl(out_dir / "test.jsonl", generate_examples(n_test, seed + 1_000_003))
    return train, test


def expected_label(example: dict) -> str:
    """The label of an example, read from its assistant answer."""
    label = parse_label(example["messages"][-1]["content"])
    if label is None:
        raise ValueError("example's last message is not a label answer")
    return label


def parse_label(text: str) -> str | None:
    """The label in a generated answer, or None if the answer is not `{"label": <known label>}`.
    Strict on purpose: an answer that is not valid JSON counts as wrong (format compliance)."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(value, dict) or set(value) != {"label"}:
        return None
    label = value["label"]
    return label if label in LABELS else None


def corpus_texts(seed: int = 0, n: int = 300) -> list[str]:
    """Texts the tiny tokenizer is trained on: tickets, prompts and answers of this task."""
    texts = [SYSTEM_PROMPT]
    for example in generate_examples(n, seed):
        texts.extend(m["content"] for m in example["messages"][1:])
    return texts


# ---------------------------------------------------------------------------- the RAG support task
#
# The guide's hybrid: the fine-tune learns the behaviour (route the ticket, answer in JSON, cite
# the knowledge-base article that answers it), retrieval supplies the facts (the article, whose
# text the API response carries with its citation). Each ticket asks one question whose answer is
# in its label's article (`ARTICLES`); the answer is `{"label": ..., "source": "<the article>"}`,
# and with `facts=True` also `"answer": "<the article's fact>"` (the shape the groundedness metric
# checks: a model that states facts from its weights is caught when the article changes).
#
# Why the facts stay out of the served answer by default: a model this small does not learn to
# copy a value out of its prompt in a fine-tune of seconds. Measured (assistant-only loss, AdamW,
# linear decay, 80-250 steps) on articles for 8 to 300 products with different values, 1 or 2
# sources per prompt, LoRA and full fine-tunes, random and pretrained bases, hidden 64 and 128:
# the values it states follow its training data, not the article it is shown (its answers stay
# grounded in 0-12% of cases once the articles change). What it does
# learn in seconds is the routing, the format and which article to cite, and that is what a
# fine-tune is for; the changing facts reach the user through the cited article.

ARTICLES: dict[str, str] = {"billing": "refunds.md", "bug": "app-crashes.md", "account": "login-help.md"}
"""The article each label's questions are answered from."""
FACTS: dict[str, str] = {"refunds.md": "5 to 7 business days", "app-crashes.md": "version 4.2",
                         "login-help.md": "15 minutes"}
"""The fact each article states (what a corpus commit changes)."""
# Each article uses the words its label's questions ask with: BM25 matches words, not meanings
# (measured: with "crashes" and "fixes" only, "How do I fix the crash?" retrieved other articles
# and recall@2 of the gold article was 0.88).
_ARTICLE_TEXT: dict[str, str] = {
    "refunds.md": "# Refunds\n\nA refund of a charge or a payment takes {fact} to arrive: the money goes back to the "
                  "card it came from. Open Billing > Invoices and choose Request refund.\n",
    "app-crashes.md": "# App crashes\n\nTo fix a crash, a freeze, a blank page or an error in the app, install {fact}: "
                      "that version fixes it. Known outages are posted on the status page.\n",
    "login-help.md": "# Sign-in help\n\nAfter five failed sign-in attempts an account is locked for {fact}. A password "
                     "reset link from the sign-in page unlocks it at once.\n",
    "shipping.md": "# Shipping\n\nHardware orders ship within two days from our warehouse. Tracking numbers arrive by "
                   "email.\n",
    "privacy.md": "# Privacy\n\nWe keep support conversations for one year, then delete them. Ask support for an export "
                  "of your data.\n",
}
RAG_SYSTEM_PROMPT = 'Route the support ticket and cite the article that answers it. Reply with JSON: {"label", "source"}.'
_QUESTIONS: dict[str, tuple[str, ...]] = {
    "billing": ("How long does the refund take?", "When do I get my money back?", "How many days until the refund arrives?"),
    "bug": ("Which version fixes this?", "What should I install?", "How do I fix the crash?"),
    "account": ("How long am I locked out?", "When can I sign in again?", "How long until my account unlocks?"),
}


def kb_documents(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The knowledge base: one article per label plus two on other subjects (`overrides` replaces
    the fact an article states, by article name: how a corpus-only commit changes a fact)."""
    facts = {**FACTS, **(overrides or {})}
    return {name: text.format(fact=facts.get(name, "")) for name, text in _ARTICLE_TEXT.items()}


def rag_answer(label: str, source: str, fact: str | None = None) -> str:
    answer = {"label": label, "source": source}
    if fact is not None:
        answer["answer"] = fact
    return json.dumps(answer)


def make_rag_example(label: str, rng: random.Random, *, facts: bool = False, system: bool = True) -> dict:
    """One ticket of `label` that asks its label's question, answered from its article, which is its
    gold source (`sources`)."""
    parts = [rng.choice(_OPENERS), rng.choice(_PHRASES[label]), rng.choice(_FILLERS), rng.choice(_QUESTIONS[label]),
             rng.choice(_CLOSERS)]
    source = ARTICLES[label]
    messages = [{"role": "user", "content": " ".join(p for p in parts if p)},
                {"role": "assistant", "content": rag_answer(label, source, FACTS[source] if facts else None)}]
    if system:
        messages.insert(0, {"role": "system", "content": RAG_SYSTEM_PROMPT_FACTS if facts else RAG_SYSTEM_PROMPT})
    return {"messages": messages, "sources": [source]}


RAG_SYSTEM_PROMPT_FACTS = ('Route the support ticket, cite the article that answers it and state its answer. Reply with '
                           'JSON: {"label", "source", "answer"}.')


def generate_rag_examples(n: int, seed: int = 0, *, facts: bool = False, system: bool = True) -> list[dict]:
    """`n` tickets, labels balanced round-robin then shuffled; the same (n, seed) gives the same list."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    rng = random.Random(seed)
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    rng.shuffle(labels)
    return [make_rag_example(label, rng, facts=facts, system=system) for label in labels]


def parse_rag_answer(text: str) -> dict | None:
    """The answer as `{"label", "source"[, "answer"]}` (strings, a known label), or None."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(value, dict) or not {"label", "source"} <= set(value) <= {"label", "source", "answer"}:
        return None
    if value["label"] not in LABELS or not all(isinstance(v, str) for v in value.values()):
        return None
    return value


RAG_ANSWER_SCHEMA = {
    "type": "object", "required": ["label", "source"], "additionalProperties": False,
    "properties": {"label": {"enum": list(LABELS)}, "source": {"type": "string", "pattern": r"^[a-z-]+\.md$"},
                   "answer": {"type": "string", "minLength": 1}},
}
"""The format every answer of the RAG task must have (the demo spec's format gate)."""


def rag_corpus_texts(seed: int = 0, n: int = 300) -> list[str]:
    """Texts of the RAG task for a tokenizer to learn: the articles, tickets, prompts, answers."""
    texts = [RAG_SYSTEM_PROMPT, RAG_SYSTEM_PROMPT_FACTS, *kb_documents().values()]
    for example in generate_rag_examples(n, seed, facts=True):
        texts.extend(m["content"] for m in example["messages"][1:])
    return texts
