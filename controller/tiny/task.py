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

# Topic words carry the label; openers, closers and fillers are shared by all labels, so the
# model has to find the topic word rather than memorise whole tickets.
_TOPICS: dict[str, tuple[str, ...]] = {
    "billing": ("invoice", "refund", "charge", "payment", "receipt", "subscription fee", "credit card", "price"),
    "bug": ("crash", "error message", "freeze", "broken button", "blank page", "timeout", "glitch", "stack trace"),
    "account": ("password", "login", "username", "two-factor code", "email address", "profile", "sign in", "locked account"),
}
_OPENERS = ("Hi,", "Hello team,", "Hey,", "Good morning,", "Dear support,", "Hi there,", "")
_TEMPLATES = (
    "I have a problem with the {topic}.",
    "There is an issue with my {topic} today.",
    "Can you help me with the {topic}?",
    "Something is wrong with the {topic} again.",
    "Question about the {topic} please.",
    "The {topic} is not what I expected.",
    "I need help: {topic}.",
)
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
    if label not in _TOPICS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    parts = [
        rng.choice(_OPENERS),
        rng.choice(_TEMPLATES).format(topic=rng.choice(_TOPICS[label])),
        rng.choice(_FILLERS),
        rng.choice(_CLOSERS),
    ]
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
