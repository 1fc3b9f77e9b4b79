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
# the source), retrieval supplies the facts. Each ticket is about one of PRODUCTS and asks one
# question whose answer is a fact in that product's knowledge-base article for the ticket's label
# (`<product>-<topic>.md`, one short paragraph). The answer is
# `{"label": ..., "source": "<the article>", "answer": "<the fact, copied from it>"}`.
#
# Why many small articles with different values (a refund takes 3 business days for one
# product, 9 for another): a model can only get a fact it never saw in training right by reading
# it from the source it is shown, so the held-out tickets (products and values the training
# tickets did not pair) measure copying, and a corpus edit changes the served answer without
# retraining. Pure Python, deterministic for a seed, like the label task above.

PRODUCTS: tuple[str, ...] = ("orbit", "lumen", "pylon", "quartz", "nimbus", "vertex", "helix", "zephyr")
RAG_SYSTEM_PROMPT = 'Route the support ticket and answer it. Reply with JSON: {"label", "source", "answer"}.'
TOPICS: dict[str, str] = {"billing": "refunds", "bug": "crashes", "account": "lockout"}
"""The article each label's questions are answered from."""
_FACTS: dict[str, tuple[str, str]] = {
    # label: (the article's sentence with {product} and {value}, the value's template)
    "billing": ("Refunds for {product} go back to the card used and take {value}.", "{n} business days"),
    "bug": ("When {product} crashes on start, install version {value} to fix it.", "{n}.0"),
    "account": ("After five failed sign-ins {product} locks the account for {value}.", "{n} minutes"),
}
_VALUES: dict[str, tuple[int, ...]] = {"billing": (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14), "bug": (2, 3, 4, 5, 6, 7, 8, 9),
                                       "account": (5, 10, 15, 20, 25, 30, 45, 60)}
_QUESTIONS: dict[str, tuple[str, ...]] = {
    "billing": ("How long does the refund take?", "When do I get my money back?"),
    "bug": ("Which version fixes this?", "What should I install?"),
    "account": ("How long am I locked out?", "When can I sign in again?"),
}
_USES = ("I use {product}.", "This is about {product}.", "My {product} app has a problem.")


def article_name(product: str, label: str) -> str:
    return f"{product}-{TOPICS[label]}.md"


def fact_value(product: str, label: str, seed: int = 0) -> str:
    """The fact a product's article for a label states (deterministic for the corpus seed)."""
    rng = random.Random(f"{seed}:{product}:{label}")
    return _FACTS[label][1].format(n=rng.choice(_VALUES[label]))


def kb_documents(seed: int = 0, overrides: dict[str, str] | None = None,
                 products: tuple[str, ...] = PRODUCTS) -> dict[str, str]:
    """The knowledge base: one short article per product and topic (`overrides` replaces the
    value an article states, by article name: how a corpus-only commit changes a fact)."""
    docs = {}
    for product in products:
        for label, topic in TOPICS.items():
            name = article_name(product, label)
            value = (overrides or {}).get(name, fact_value(product, label, seed))
            sentence = _FACTS[label][0].format(product=product.capitalize(), value=value)
            docs[name] = f"# {product.capitalize()} {topic}\n\n{sentence}\n"
    return docs


def rag_answer(label: str, source: str, value: str) -> str:
    return json.dumps({"label": label, "source": source, "answer": value})


def make_rag_example(label: str, product: str, rng: random.Random, kb_seed: int = 0, system: bool = True) -> dict:
    """One ticket about `product` asking its `label` question, answered from its article, with
    the article as its gold source (`sources`)."""
    first = rng.choice(_PHRASES[label])
    parts = [rng.choice(_OPENERS), rng.choice(_USES).format(product=product.capitalize()), first,
             rng.choice(_QUESTIONS[label]), rng.choice(_CLOSERS)]
    source = article_name(product, label)
    messages = [{"role": "user", "content": " ".join(p for p in parts if p)},
                {"role": "assistant", "content": rag_answer(label, source, fact_value(product, label, kb_seed))}]
    if system:
        messages.insert(0, {"role": "system", "content": RAG_SYSTEM_PROMPT})
    return {"messages": messages, "sources": [source]}


def generate_rag_examples(n: int, seed: int = 0, kb_seed: int = 0, products: tuple[str, ...] = PRODUCTS,
                          system: bool = True) -> list[dict]:
    """`n` tickets, labels and products balanced round-robin then shuffled; same (n, seed) gives
    the same list."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    rng = random.Random(seed)
    pairs = [(LABELS[i % len(LABELS)], products[(i // len(LABELS)) % len(products)]) for i in range(n)]
    rng.shuffle(pairs)
    return [make_rag_example(label, product, rng, kb_seed, system) for label, product in pairs]


def parse_rag_answer(text: str) -> dict | None:
    """The answer as `{"label", "source", "answer"}` (strings, a known label), or None."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(value, dict) or set(value) != {"label", "source", "answer"}:
        return None
    if value["label"] not in LABELS or not all(isinstance(value[k], str) for k in value):
        return None
    return value


RAG_ANSWER_SCHEMA = {
    "type": "object", "required": ["label", "source", "answer"], "additionalProperties": False,
    "properties": {"label": {"enum": list(LABELS)}, "source": {"type": "string", "pattern": r"^[a-z]+-[a-z]+\.md$"},
                   "answer": {"type": "string", "minLength": 1}},
}
"""The format every answer of the RAG task must have (the demo spec's format gate)."""


def rag_corpus_texts(seed: int = 0, n: int = 300) -> list[str]:
    """Texts of the RAG task for a tokenizer to learn: the articles, tickets, prompts, answers."""
    texts = [RAG_SYSTEM_PROMPT, *kb_documents(seed).values()]
    for example in generate_rag_examples(n, seed):
        texts.extend(m["content"] for m in example["messages"][1:])
    return texts
